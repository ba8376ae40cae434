"""persist / load(mmap) / incremental segments / corruption / locks / compaction."""

from __future__ import annotations

import json
import os

import pytest
import torch

from clara_integrations.store import (
    MemoryStore,
    StoreCorruptError,
    StoreLockedError,
    StoreMismatchError,
)

from ._helpers import N_MEM, H, assert_same_hits, brute_force, clustered, queries


def _same(a, b, tol=1e-5):
    """Same hits; scores may differ in the last bits (different matmul shapes)."""
    assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
    assert all(abs(x.score - y.score) < tol for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return True


def _segments(path):
    return sorted(p for p in path.iterdir() if p.name.startswith("seg-"))


def _stat(p):
    st = p.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@pytest.mark.parametrize("mmap", [True, False])
def test_persist_and_load_roundtrip(small_store, tmp_path, mmap):
    store, mem, ids, meta = small_store
    store.delete(["n7"])
    q = queries(3)
    before = store.search(q, k=8, filters={"source": "s2.pdf"})
    assert store.persist(tmp_path / "s") == (tmp_path / "s").resolve()
    assert store.path == (tmp_path / "s").resolve() and store.generation == 1
    loaded = MemoryStore.load(tmp_path / "s", mmap=mmap)
    assert len(loaded) == 299 and "n7" not in loaded
    assert loaded.fingerprint == store.fingerprint and loaded.config == store.config
    assert loaded.search(q, k=8, filters={"source": "s2.pdf"}) == before
    assert torch.equal(loaded.get_memories(ids[:5]), mem[:5].half())
    assert loaded.get_nodes(["n8"])[0].metadata == meta[8]
    loaded.close()


def test_incremental_persist_writes_only_a_new_segment(tmp_path):
    path = tmp_path / "inc"
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    first = clustered(1000, seed=1)
    store.add(first, ids=[f"a{i}" for i in range(1000)])
    store.persist(path)
    [seg] = _segments(path)
    st = _stat(seg)
    store.close()

    store = MemoryStore.load(path, mmap=True)
    store.add(clustered(1000, seed=2), ids=[f"b{i}" for i in range(1000)])
    store.delete(["a3"])
    store.persist()
    segs = _segments(path)
    assert len(segs) == 2 and seg in segs
    assert _stat(seg) == st  # same inode, size and mtime: not rewritten
    assert store.persist() == path.resolve()  # nothing changed: no-op
    assert _segments(path) == segs
    store.close()

    again = MemoryStore.load(path)
    assert len(again) == 1999 and again.generation == 2
    every = [f"a{i}" for i in range(1000) if i != 3] + [f"b{i}" for i in range(1000)]
    stored = again.get_memories(every)
    assert torch.equal(stored[:999], torch.cat([first[:3], first[4:]]).half())
    q = queries(4)
    assert_same_hits(again.search(q, k=10), brute_force(stored, every, q, 10))
    again.close()


def test_persist_elsewhere_and_old_version_survives(small_store, tmp_path):
    store, mem, ids, _ = small_store
    store.persist(tmp_path / "one")
    store.add(clustered(5, seed=7), ids=[f"x{i}" for i in range(5)])
    store.persist(tmp_path / "two")  # "save as": the store now lives in two/
    assert store.path == (tmp_path / "two").resolve()
    store.add(clustered(1, seed=8), ids=["y"])
    store.persist()
    one = MemoryStore.load(tmp_path / "one")
    two = MemoryStore.load(tmp_path / "two")
    assert (len(one), len(two)) == (300, 306)
    one.close()
    two.close()


def test_unpersisted_changes_are_invisible_to_other_readers(small_store, tmp_path):
    store, *_ = small_store
    store.persist(tmp_path / "s")
    store.add(clustered(3, seed=11), ids=["u1", "u2", "u3"])
    store.delete(["n1"])
    reader = MemoryStore.load(tmp_path / "s")  # sees generation 1 only
    assert len(reader) == 300 and "u1" not in reader and "n1" in reader
    hits = reader.search(queries(2), k=300)
    assert all(len(h) == 300 for h in hits)
    with pytest.raises(StoreLockedError):
        reader.add(clustered(1), ids=["z"])  # one writer per directory
    reader.close()
    store.persist()
    assert len(MemoryStore.load(tmp_path / "s")) == 302


def test_fingerprint_mismatch_on_load(tmp_path):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H, model_identity="model-A")
    store.add(clustered(2))
    store.persist(tmp_path / "s")
    store.close()
    with pytest.raises(StoreMismatchError, match="model-A"):
        MemoryStore.load(tmp_path / "s", fingerprint=f"model-B:n_mem={N_MEM}:H={H}:float16")
    ok = MemoryStore.load(tmp_path / "s", fingerprint=f"model-A:n_mem={N_MEM}:H={H}:float16")
    assert len(ok) == 2
    with pytest.raises(ValueError, match="runtime"):
        MemoryStore.load(tmp_path / "s", n_mem=5)


def _persisted(tmp_path, n=50):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    store.add(clustered(n), ids=[f"n{i}" for i in range(n)])
    store.persist(tmp_path / "s")
    store.close()
    return tmp_path / "s"


def test_corrupt_or_missing_files_are_named(tmp_path):
    path = _persisted(tmp_path)
    [seg] = _segments(path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match=seg.name) as err:
        MemoryStore.load(path)
    assert err.value.file == seg
    seg.write_bytes(bytes(data[:-2]))
    with pytest.raises(StoreCorruptError, match=seg.name):
        MemoryStore.load(path)
    seg.unlink()
    with pytest.raises(StoreCorruptError, match=seg.name):
        MemoryStore.load(path)


def test_corrupt_manifest_database_and_version(tmp_path):
    path = _persisted(tmp_path)
    manifest = path / "manifest.json"
    raw = json.loads(manifest.read_text())
    manifest.write_text(manifest.read_text().replace('"n_live": 50', '"n_live": 51'))
    with pytest.raises(StoreCorruptError, match="checksum"):
        MemoryStore.load(path)
    db = path / raw["db_file"]
    manifest.write_text(json.dumps(raw))  # restore (same body and checksum)
    db.write_bytes(b"garbage" * 10)
    with pytest.raises(StoreCorruptError, match=raw["db_file"]):
        MemoryStore.load(path)
    with pytest.raises(StoreCorruptError, match="does not exist"):
        MemoryStore.load(tmp_path / "nowhere")


def test_newer_format_version_is_refused(tmp_path):
    import hashlib

    path = _persisted(tmp_path)
    raw = json.loads((path / "manifest.json").read_text())
    raw.pop("checksum")
    raw["format_version"] = 2
    body = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    raw["checksum"] = hashlib.blake2b(body, digest_size=16).hexdigest()
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(StoreCorruptError, match="newer"):
        MemoryStore.load(path)


def test_verify_checks_every_byte(tmp_path):
    path = _persisted(tmp_path)
    assert len(MemoryStore.load(path, verify=True)) == 50


def test_compact_reclaims_rows_and_keeps_ids(small_store, tmp_path):
    store, mem, ids, _ = small_store
    store.persist(tmp_path / "s")
    store.delete([f"n{i}" for i in range(0, 300, 2)])
    store.update(["n1"], memories=clustered(1, seed=77))
    assert store.stats()["n_rows"] == 301
    q = queries(3)
    before = store.search(q, k=10)
    store.compact(show_progress=False)
    assert store.stats()["n_rows"] == 150 and len(store) == 150
    assert _same(store.search(q, k=10), before)
    assert len(_segments(tmp_path / "s")) == 1
    reloaded = MemoryStore.load(tmp_path / "s")
    assert _same(reloaded.search(q, k=10), before)
    assert torch.equal(reloaded.get_memories(["n1"]), clustered(1, seed=77).half())
    reloaded.close()


def test_crash_leftovers_are_rolled_back(tmp_path, monkeypatch):
    """A writer that dies after its database commit but before the manifest."""
    from clara_integrations.store import _persistence

    path = _persisted(tmp_path)
    store = MemoryStore.load(path)
    store.add(clustered(5, seed=3), ids=[f"new{i}" for i in range(5)])
    store.delete(["n0"])

    def boom(stage):
        if stage == "db":
            raise KeyboardInterrupt  # the process "dies" here

    monkeypatch.setattr(_persistence, "_persist_hook", boom)
    with pytest.raises(KeyboardInterrupt):
        store.persist()
    monkeypatch.setattr(_persistence, "_persist_hook", None)
    store._st.res.close()  # drop the lock without any cleanup, as a dead process would

    again = MemoryStore.load(path)
    assert len(again) == 50 and "n0" in again and "new0" not in again
    again.add(clustered(2, seed=4), ids=["new0", "other"])  # rolls leftovers back first
    again.persist()
    final = MemoryStore.load(path)
    assert len(final) == 52 and "n0" in final and "new1" not in final
    assert torch.equal(final.get_memories(["new0"]), clustered(2, seed=4)[:1].half())
    names = os.listdir(path)  # the crashed writer's orphan files were collected
    assert len(_segments(path)) == 2
    assert sum(n.startswith("alive-") for n in names) == 1
    assert len({n.split(".")[0] for n in names if n.startswith("nodes-")}) == 1


def test_configured_settings_are_saved_by_the_next_persist_alone(tmp_path):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    store.add(clustered(3))
    store.persist(tmp_path / "s")
    generation = store.generation
    store.persist()  # nothing changed: no new generation
    assert store.generation == generation
    store.configure(exact_filter_rows=7)
    store.persist()
    assert store.generation == generation + 1
    store.close()
    with MemoryStore.load(tmp_path / "s") as again:
        assert again.config.exact_filter_rows == 7
        again.configure(exact_filter_rows=7)  # unchanged: nothing to save
        again.persist()
        assert again.generation == generation + 1


def test_a_load_that_races_a_commit_between_checking_and_opening_a_file_loads_again(
    tmp_path, monkeypatch
):
    """Another writer's commit may collect a file after load checked its size and before
    it opens it: a raw FileNotFoundError used to escape instead of the documented "loads
    the new version"."""
    from clara_integrations.store import segments

    writer = MemoryStore(n_mem=2, hidden_size=4)
    writer.add(torch.randn(3, 2, 4), ids=list("abc"))
    writer.persist(tmp_path / "s", show_progress=False)
    real, fired = segments.hash_file, []

    def commit_in_between(path):
        if not fired:
            fired.append(path)
            writer.update(["a"], texts=["new"])
            writer.compact(show_progress=False)  # collects the files being loaded
        return real(path)

    monkeypatch.setattr(segments, "hash_file", commit_in_between)
    with MemoryStore.load(tmp_path / "s", verify=True) as loaded:
        assert fired and loaded.get_nodes(["a"])[0].text == "new"
    writer.close()


def test_closing_a_store_on_disk_with_unpersisted_changes_says_they_are_discarded(tmp_path):
    """A loaded store's changes that were never persisted vanish at close (or garbage
    collection): that used to be silent. A never-persisted store lives in memory and
    closes quietly, and so does a loaded store that was only read."""
    import gc
    import warnings

    with MemoryStore(n_mem=N_MEM, hidden_size=H) as fresh:
        fresh.add(clustered(3), ids=list("abc"))
        fresh.persist(tmp_path / "s", show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for these
        with MemoryStore(n_mem=N_MEM, hidden_size=H) as scratch:
            scratch.add(clustered(1))
        with MemoryStore.load(tmp_path / "s") as read_only:
            read_only.search(queries(1), k=2)
    loaded = MemoryStore.load(tmp_path / "s")
    loaded.delete(["a"])
    with pytest.warns(UserWarning, match=r"discards its unpersisted changes .*generation 1"):
        loaded.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.close()  # closing twice says nothing more
    dropped = MemoryStore.load(tmp_path / "s")
    dropped.add(clustered(1))
    with pytest.warns(UserWarning, match="call persist"):
        del dropped
        gc.collect()
    with MemoryStore.load(tmp_path / "s") as again:
        assert sorted(again.ids_where(None)) == ["a", "b", "c"]
