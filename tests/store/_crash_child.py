"""Crash driver for the SIGKILL-during-persist tests (not a test module).

    python -m tests.store._crash_child stage DIR:STAGE:GEN [DIR:STAGE:GEN ...]
    python -m tests.store._crash_child random DIR:DELAY [DIR:DELAY ...]

The driver imports torch once, then forks one worker process per scenario (forking
before any torch/OpenMP work is safe, and saves ~3 s of imports per worker). A "stage"
worker SIGKILLs itself at that persist stage of that generation; a "random" worker
persists generation after generation and the driver SIGKILLs it DELAY seconds after its
first persist. The driver exits 0 only if every worker died of SIGKILL.

Every generation follows a fixed schedule (adds, updates, deletes), and every node's
text, metadata and memory are a pure function of (id, version), so the test can check
that a crashed store holds exactly one complete generation.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import types
from pathlib import Path

import numpy as np

N_MEM, H = 8, 64
FIRST, ADD, UPDATE, DELETE = 4000, 500, 50, 25
OPTIONS = dict(index="IVF16,Flat", reduce_dim=32, min_index_rows=1000, max_unindexed_rows=400)


def import_store():
    """Import the store without running clara_integrations/__init__.py (which loads
    transformers, ~10 s here): the store is framework-free, so a child can skip it."""
    if "clara_integrations" not in sys.modules:
        pkg = types.ModuleType("clara_integrations")
        pkg.__path__ = [str(Path(__file__).resolve().parents[2] / "clara_integrations")]
        sys.modules["clara_integrations"] = pkg
    import clara_integrations.store as store

    return store


def memory(ids, versions):
    """[n, N_MEM, H] float32 Gaussian rows, deterministic in (id, version)."""
    import torch

    rows = [
        torch.randn(N_MEM, H, generator=torch.Generator().manual_seed(i * 100_003 + v))
        for i, v in zip(ids, versions)
    ]
    return torch.stack(rows) if rows else torch.empty(0, N_MEM, H)


def ops(gen: int, live: dict[int, int]):
    """(new ids, updated ids, deleted ids) of generation ``gen`` >= 2."""
    nxt = FIRST + (gen - 2) * ADD
    rng = np.random.default_rng(gen)
    pick = rng.choice(sorted(live), UPDATE + DELETE, replace=False).tolist()
    return list(range(nxt, nxt + ADD)), pick[:UPDATE], pick[UPDATE:]


def state(gen: int) -> dict[int, int]:
    """id -> version of every live node in generation ``gen``."""
    live = {i: 0 for i in range(FIRST)}
    for g in range(2, gen + 1):
        new, upd, dele = ops(g, live)
        live.update({i: 0 for i in new})
        live.update({i: g for i in upd})
        for i in dele:
            del live[i]
    return live


def text(i: int, v: int) -> str:
    return f"node {i} v{v}"


def meta(i: int, v: int) -> dict:
    return {"id": i, "v": v}


def apply(store, gen: int, live: dict[int, int]) -> None:
    new, upd, dele = ops(gen, live)
    store.add(
        memory(new, [0] * len(new)),
        texts=[text(i, 0) for i in new],
        metadata=[meta(i, 0) for i in new],
        ids=[str(i) for i in new],
    )
    store.update(
        [str(i) for i in upd],
        memories=memory(upd, [gen] * len(upd)),
        texts=[text(i, gen) for i in upd],
        metadata=[meta(i, gen) for i in upd],
    )
    store.delete([str(i) for i in dele])
    live.update({i: 0 for i in new})
    live.update({i: gen for i in upd})
    for i in dele:
        del live[i]


def run(directory: str, kill_stage: str = "", kill_gen: int = 0) -> None:
    """Worker: build the first generation, then persist new ones until killed."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    store_pkg = import_store()
    from clara_integrations.store import _persistence

    current = {"gen": 1}

    def hook(stage: str) -> None:
        if stage == kill_stage and current["gen"] == kill_gen:
            os.kill(os.getpid(), signal.SIGKILL)

    _persistence._persist_hook = hook
    store = store_pkg.MemoryStore(n_mem=N_MEM, hidden_size=H, **OPTIONS)
    live = {i: 0 for i in range(FIRST)}
    ids = list(range(FIRST))
    store.add(
        memory(ids, [0] * FIRST),
        texts=[text(i, 0) for i in ids],
        metadata=[meta(i, 0) for i in ids],
        ids=[str(i) for i in ids],
    )
    store.persist(directory, show_progress=False)
    Path(directory + ".ready").touch()
    for gen in range(2, 10_000):
        current["gen"] = gen
        apply(store, gen, live)
        store.persist(show_progress=False)


def _fork(target, *args) -> int:
    pid = os.fork()
    if pid == 0:  # worker
        try:
            target(*args)
        finally:
            os._exit(3)  # reaching here means it was not killed
    return pid


def _killed(pid: int) -> bool:
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def main(mode: str, *scenarios: str) -> int:
    import_store()  # import everything once, before forking
    ok = True
    if mode == "stage":
        pids = []
        for sc in scenarios:
            directory, stage, gen = sc.rsplit(":", 2)
            pids.append(_fork(run, directory, stage, int(gen)))
        ok = all([_killed(pid) for pid in pids])
    else:
        for sc in scenarios:
            directory, delay = sc.rsplit(":", 1)
            pid = _fork(run, directory)
            while not Path(directory + ".ready").exists():
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    return 2
                time.sleep(0.02)
            time.sleep(float(delay))
            os.kill(pid, signal.SIGKILL)
            ok &= _killed(pid)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
