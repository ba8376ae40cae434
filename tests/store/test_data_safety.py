"""Hostile and unlucky cases that used to lose or destroy data: stale writers, write
errors, files the store does not own (issue: "The store never loses or destroys data")."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from clara_integrations.store import (
    MemoryStore,
    StoreCorruptError,
    StoreLockedError,
    StoreStaleError,
)
from clara_integrations.store import segments as segments_mod
from clara_integrations.store.nodes import NodeDB

from ._helpers import N_MEM, H, clustered, queries

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _persisted(path, n=20, **opts):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H, **opts)
    store.add(clustered(n), ids=[f"n{i}" for i in range(n)], texts=[f"t{i}" for i in range(n)])
    store.persist(path)
    return store


def _ids(path):
    with MemoryStore.load(path) as s:
        return {h.id for h in s.search(queries(1), k=10_000)[0]}


def _run_child(code: str) -> None:
    """Run ``code`` in a fresh interpreter (another process writing the same store)."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, cwd=REPO, timeout=120)


# --------------------------------------------------------------------- 1. stale handles
def test_stale_handle_in_another_process_cannot_erase_a_commit(tmp_path):
    path = tmp_path / "s"
    _persisted(path).close()
    server = MemoryStore.load(path)  # process A: loaded, stays alive
    _run_child(
        f"""
        import torch
        from clara_integrations.store import MemoryStore
        s = MemoryStore.load({str(path)!r})
        s.add(torch.randn(3, {N_MEM}, {H}), ids=["b0", "b1", "b2"])
        s.persist()
        s.close()
        """
    )
    segments_before = sorted(p.name for p in path.iterdir() if p.name.startswith("seg-"))
    with pytest.raises(StoreStaleError, match="generation 2.*generation 1") as err:
        server.delete(["n0"])
    assert (err.value.handle_generation, err.value.disk_generation) == (1, 2)
    assert server.persist() == path.resolve()  # nothing of its own to commit: no-op
    assert len(server) == 20 and "n0" in server  # the handle still serves its version
    assert server.search(queries(1), k=3)[0]
    server.close()
    assert {"b0", "b1", "b2", "n0"} <= _ids(path)  # B's commit survived; A's delete refused
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("seg-")) == segments_before
    fresh = MemoryStore.load(path)  # the documented way on: reload and repeat
    fresh.delete(["n0"])
    fresh.persist()
    fresh.close()
    assert "n0" not in _ids(path) and "b1" in _ids(path)


def test_two_handles_in_one_process(tmp_path):
    path = tmp_path / "s"
    _persisted(path).close()
    a, b = MemoryStore.load(path), MemoryStore.load(path)
    b.add(clustered(2, seed=5), ids=["x", "y"])
    with pytest.raises(StoreLockedError):
        a.add(clustered(1, seed=6), ids=["z"])  # b holds the lock while it has changes
    b.persist()  # ... and lets go once they are committed
    with pytest.raises(StoreStaleError):
        a.add(clustered(1, seed=6), ids=["z"])
    a.close()
    b.delete(["x"])  # b is current: it writes on
    b.persist()
    b.close()
    got = _ids(path)
    assert "y" in got and "x" not in got and len(got) == 21


def test_persist_then_load_then_write_in_one_process(tmp_path):
    path = tmp_path / "s"
    first = _persisted(path)  # still open
    second = MemoryStore.load(path)
    second.add(clustered(1, seed=9), ids=["new"])  # used to raise StoreLockedError
    second.persist()
    second.close()
    assert "new" in _ids(path)
    with pytest.raises(StoreStaleError, match="MemoryStore.load"):
        first.add(clustered(1, seed=10), ids=["other"])
    first.close()


# --------------------------------------------------------------------- 2. write errors
def _full_disk(monkeypatch):
    def no_space(fh, arr, h):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments_mod, "_write_array", no_space)


def test_disk_full_inside_add_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = _persisted(path, segment_bytes=1)  # every add writes a segment
    files_before = sorted(os.listdir(path))
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        store.add(clustered(3, seed=2), ids=["a", "b", "c"])
    assert len(store) == 20 and "a" not in store
    assert len(store.search(queries(1), k=100)[0]) == 20  # len() and search agree
    assert sorted(os.listdir(path)) == files_before  # no half-written segment left
    monkeypatch.undo()
    assert store.add(clustered(3, seed=2), ids=["a", "b", "c"]) == ["a", "b", "c"]  # retry
    store.persist()
    store.close()
    with MemoryStore.load(path, verify=True) as again:
        assert len(again) == 23 and "a" in again


def test_database_error_inside_add_and_update(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = _persisted(path, segment_bytes=1)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(NodeDB, "insert", full)
    with pytest.raises(sqlite3.OperationalError):
        store.add(clustered(2, seed=3), ids=["a", "b"])
    with pytest.raises(sqlite3.OperationalError):
        store.update(["n1"], memories=clustered(1, seed=4))
    before = store.get_memories(["n1"])
    monkeypatch.undo()
    assert len(store) == 20 and len(store.search(queries(1), k=100)[0]) == 20
    assert (store.get_memories(["n1"]) == before).all()
    store.add(clustered(2, seed=3), ids=["a", "b"])
    store.persist()
    store.close()
    with MemoryStore.load(path, verify=True) as again:
        assert len(again) == 22


def test_file_size_limit_in_a_real_process(tmp_path):
    """EFBIG from the kernel (RLIMIT_FSIZE), not a simulated error."""
    path = tmp_path / "s"
    _persisted(path).close()
    _run_child(
        f"""
        import errno, resource, signal, torch
        from clara_integrations.store import MemoryStore
        s = MemoryStore.load({str(path)!r}, segment_bytes=1)
        s.add(torch.randn(1, {N_MEM}, {H}), ids=["first"])  # lock taken, database warm
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        try:
            s.add(torch.randn(100, {N_MEM}, {H}), ids=[f"big{{i}}" for i in range(100)])
        except OSError as exc:
            assert exc.errno == errno.EFBIG, exc
        else:
            raise SystemExit("expected EFBIG")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert len(s) == 21 and len(s.search(torch.randn(1, {N_MEM * H}), k=500)[0]) == 21
        s.add(torch.randn(100, {N_MEM}, {H}), ids=[f"big{{i}}" for i in range(100)])
        s.persist()
        """
    )
    with MemoryStore.load(path, verify=True) as again:
        assert len(again) == 121


def test_persist_never_commits_a_version_that_cannot_load(tmp_path):
    path = tmp_path / "s"
    store = _persisted(path)
    store.add(clustered(1, seed=3), ids=["a"])
    store._st.n_live += 1  # an internal inconsistency, as the add() bug above produced
    files_before = sorted(os.listdir(path))
    with pytest.raises(StoreCorruptError, match="refusing to commit generation 2"):
        store.persist()
    store._st.res.close()
    kept = {n for n in files_before if not n.endswith(("-wal", "-shm"))}  # SQLite's own
    assert kept <= set(os.listdir(path))  # the previous version was not collected
    with MemoryStore.load(path, verify=True) as again:
        assert again.generation == 1 and len(again) == 20


# --------------------------------------------------------------------- 3. foreign files
def test_persist_and_compact_never_touch_files_the_store_did_not_write(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    foreign = {
        "nodes-export.csv": b"id,text\n",
        "seg-notes.txt": b"notes",
        "index-old.html": b"<html>",
        "alive-report.bits": b"1",
        "reducer-v2.safetensors": b"x",
        "draft.tmp-1": b"mine",
        "manifest.json.bak": b"{}",
    }
    for name, data in foreign.items():
        (path / name).write_bytes(data)
    store = _persisted(path)
    store.delete(["n1"])
    store.persist()
    store.compact(show_progress=False)
    store.close()
    for name, data in foreign.items():
        assert (path / name).read_bytes() == data, name


def test_persist_refuses_to_replace_another_store(tmp_path):
    path = tmp_path / "s"
    _persisted(path).close()
    other = MemoryStore(n_mem=N_MEM, hidden_size=H)
    other.add(clustered(2, seed=8), ids=["o1", "o2"])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        other.persist(path)
    assert len(_ids(path)) == 20  # untouched
    other.persist(path, overwrite=True)
    other.close()
    assert _ids(path) == {"o1", "o2"}
    assert sum(n.startswith("seg-") for n in os.listdir(path)) == 1  # old store collected


def test_persist_refuses_store_files_without_a_manifest(tmp_path):
    path = tmp_path / "s"
    _persisted(path).close()
    (path / "manifest.json").rename(tmp_path / "manifest.json.saved")  # lost, or being restored
    files = {n: (path / n).read_bytes() for n in os.listdir(path) if n != ".writer.lock"}
    (path / ".writer.lock").unlink()
    other = MemoryStore(n_mem=N_MEM, hidden_size=H)
    other.add(clustered(2, seed=8), ids=["o1", "o2"])
    with pytest.raises(FileExistsError, match="no manifest.json.*overwrite=True"):
        other.persist(path)
    assert {n: (path / n).read_bytes() for n in os.listdir(path)} == files  # not even a lock
    (tmp_path / "manifest.json.saved").rename(path / "manifest.json")
    assert len(_ids(path)) == 20  # the restored store is whole
    (path / "manifest.json").unlink()
    other.persist(path, overwrite=True)  # asked for: replaces them
    other.close()
    assert _ids(path) == {"o1", "o2"}


@pytest.mark.parametrize("stage", ["segments", "files", "db"])
def test_a_failed_persist_elsewhere_leaves_the_directory_as_it_was(tmp_path, monkeypatch, stage):
    from clara_integrations.store import _persistence

    path = tmp_path / "s"
    path.mkdir()
    (path / "notes.txt").write_text("mine")

    def boom(name):
        if name == stage:
            raise OSError(errno.EIO, "injected")

    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    store.add(clustered(5), ids=[f"n{i}" for i in range(5)])
    monkeypatch.setattr(_persistence, "_persist_hook", boom)
    with pytest.raises(OSError, match="injected"):
        store.persist(path)
    assert sorted(os.listdir(path)) == [".writer.lock", "notes.txt"]
    monkeypatch.setattr(_persistence, "_persist_hook", None)
    store.persist(path)  # the retry is not refused as "files without a manifest"
    store.close()
    assert len(_ids(path)) == 5 and (path / "notes.txt").read_text() == "mine"


def test_persist_rejects_an_empty_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    store.add(clustered(1))
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="empty path"):
            store.persist(bad)
    store.close()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------- 6. manifest paths
@pytest.mark.parametrize(
    "field, value",
    [("db_file", "../outside.sqlite"), ("db_file", "/tmp/x.sqlite"), ("segment", "../seg.mem")],
)
def test_manifest_paths_are_confined_to_the_store(tmp_path, field, value):
    import hashlib

    path = tmp_path / "store" / "s"
    _persisted(path).close()
    raw = json.loads((path / "manifest.json").read_text())
    raw.pop("checksum")
    if field == "segment":
        raw["segments"][0]["file"] = value
    else:
        raw[field] = value
    body = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    raw["checksum"] = hashlib.blake2b(body, digest_size=16).hexdigest()
    (path / "manifest.json").write_text(json.dumps(raw))
    outside_before = sorted(os.listdir(tmp_path / "store"))
    with pytest.raises(StoreCorruptError, match="not a store file name"):
        MemoryStore.load(path)
    assert sorted(os.listdir(tmp_path / "store")) == outside_before


def test_a_refusal_under_the_lock_removes_nothing(tmp_path, monkeypatch):
    """Another store committed into the directory between the first check and the lock:
    the second check refuses, and none of that store's files are touched."""
    from clara_integrations.store import _persistence

    path = tmp_path / "s"
    path.mkdir()
    other = MemoryStore(n_mem=N_MEM, hidden_size=H)
    other.add(clustered(2, seed=8), ids=["o1", "o2"])
    real = _persistence._refuse_other_store
    calls = []

    def racing(target, overwrite):
        if target == path:
            calls.append(target)
        if (
            target == path and len(calls) == 2
        ):  # under the lock: the racing writer has committed meanwhile
            _persisted(tmp_path / "elsewhere").close()
            for f in (tmp_path / "elsewhere").iterdir():
                if f.name != ".writer.lock":
                    f.rename(path / f.name)
        real(target, overwrite)

    monkeypatch.setattr(_persistence, "_refuse_other_store", racing)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        other.persist(path)
    assert len(calls) == 2 and len(_ids(path)) == 20  # the racing writer's store is whole
    other.close()
