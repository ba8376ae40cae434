"""SIGKILL a child process in the middle of persist; the store must load complete."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clara_integrations.store import MemoryStore

from . import _crash_child as child

REPO = Path(__file__).resolve().parents[2]
STAGES = ("segments", "files", "db", "manifest", "gc")


def _drive(mode: str, *scenarios: str) -> None:
    """Run the crash driver (one interpreter, one forked worker per scenario)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.store._crash_child", mode, *scenarios],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]


def _check_complete(directory: Path) -> int:
    """Load (verifying checksums) and compare every node with the schedule."""
    store = MemoryStore.load(directory, verify=True)
    gen = store.generation
    want = child.state(gen)
    assert len(store) == len(want)
    ids = sorted(want)
    nodes = store.get_nodes([str(i) for i in ids])
    assert [n.text for n in nodes] == [child.text(i, want[i]) for i in ids]
    assert [n.metadata for n in nodes] == [child.meta(i, want[i]) for i in ids]
    got = store.get_memories([str(i) for i in ids])
    assert torch.equal(got, child.memory(ids, [want[i] for i in ids]).half())
    probe = ids[:: max(1, len(ids) // 5)]
    hits = store.search(got[[ids.index(i) for i in probe]].flatten(1), k=1)
    assert [h[0].id for h in hits] == [str(i) for i in probe]
    # a new writer continues from the surviving version
    store.add(child.memory([10**6], [0]), texts=["after"], ids=["after-crash"])
    store.persist(show_progress=False)
    store.close()
    again = MemoryStore.load(directory)
    assert len(again) == len(want) + 1 and again.generation == gen + 1
    again.close()
    return gen


pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_sigkill_at_every_persist_stage(tmp_path):
    _drive("stage", *(f"{tmp_path / s}:{s}:3" for s in STAGES))
    for stage in STAGES:
        gen = _check_complete(tmp_path / stage)
        # before the manifest is replaced the old version survives, after it the new one
        assert gen == (3 if stage in ("manifest", "gc") else 2), stage


def test_sigkill_at_random_moments(tmp_path):
    rng = random.Random(1234)
    dirs = [tmp_path / f"r{i}" for i in range(3)]
    _drive("random", *(f"{d}:{rng.uniform(0.05, 1.5):.3f}" for d in dirs))
    gens = [_check_complete(d) for d in dirs]
    assert all(g >= 1 for g in gens)
