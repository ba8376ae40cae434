"""Silent wrong results and raw errors: damaged node database, readers during another
handle's compaction, and the small edge cases (issue: "The store never loses or
destroys data", items 4, 5 and 9)."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
import torch

from clara_integrations.store import MemoryStore, StoreClosedError, StoreCorruptError
from clara_integrations.store import segments as segments_mod

from ._helpers import N_MEM, H, clustered, queries

MARK_TEXT = "UNIQUE-MARKER-TEXT-42"


def _persisted(path, n=30):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    texts = [f"text {i}" for i in range(n)]
    texts[5] = MARK_TEXT
    meta = [{"source": "MARKERSRC" if i == 5 else f"s{i % 3}"} for i in range(n)]
    store.add(clustered(n), ids=[f"n{i}" for i in range(n)], texts=texts, metadata=meta)
    store.persist(path)
    store.close()  # the last connection checkpoints the WAL into the database file
    return path


def _db_file(path):
    [db] = [p for p in path.iterdir() if p.name.endswith(".sqlite")]
    return db


def _edit_db(path, old: bytes, new: bytes, count: int = 1):
    db = _db_file(path)
    raw = db.read_bytes()
    assert raw.count(old) >= count, (old, raw.count(old))
    db.write_bytes(raw.replace(old, new))


# --------------------------------------------------------------------- 4. checksums
def test_a_changed_byte_in_a_nodes_text_is_detected(tmp_path):
    path = _persisted(tmp_path / "s")
    _edit_db(path, MARK_TEXT.encode(), MARK_TEXT[:-1].encode() + b"3")
    store = MemoryStore.load(path)  # cheap load: the damage shows when the node is read
    with pytest.raises(StoreCorruptError, match="'n5'.*fails its checksum"):
        store.get_nodes(["n5"])
    with pytest.raises(StoreCorruptError, match="checksum"):
        store.search(store.get_memories(["n5"]).flatten(1), k=3)
    assert store.get_nodes(["n6"])[0].text == "text 6"  # other nodes read fine
    store.close()
    with pytest.raises(StoreCorruptError, match="checksum"):
        MemoryStore.load(path, verify=True)


def _damaged_db_store(path):
    """A persisted store of 300 nodes (a node database of several pages)."""
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    store.add(clustered(300), texts=["t" * 100] * 300)
    store.persist(path)
    store.close()
    return _db_file(path)


def test_a_truncated_node_database_is_a_named_error(tmp_path):
    db = _damaged_db_store(tmp_path / "s")
    os.truncate(db, db.stat().st_size // 2)
    with pytest.raises(StoreCorruptError, match=f"{db.name}.*damaged") as info:
        MemoryStore.load(tmp_path / "s")
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_a_zeroed_page_of_the_node_database_is_a_named_error(tmp_path):
    db = _damaged_db_store(tmp_path / "s")
    with open(db, "r+b") as fh:
        fh.seek(4096 * 5)
        fh.write(b"\0" * 4096)
    store = MemoryStore.load(tmp_path / "s")  # cheap load: the damage shows when read
    with pytest.raises(StoreCorruptError, match=f"{db.name}.*damaged"):
        store.search(queries(1), k=5)
    store.close()
    with pytest.raises(StoreCorruptError, match=db.name):
        MemoryStore.load(tmp_path / "s", verify=True)


def test_broken_metadata_json_is_a_named_error(tmp_path):
    path = _persisted(tmp_path / "s")
    _edit_db(path, b'{"source": "MARKERSRC"}', b'{"source": "MARKERSRC"!')
    with MemoryStore.load(path) as store:
        with pytest.raises(StoreCorruptError):  # not a raw JSONDecodeError
            store.search(store.get_memories(["n5"]).flatten(1), k=1)


def test_verify_checks_the_filter_index_against_the_metadata(tmp_path):
    path = _persisted(tmp_path / "s")
    whole = b'{"source": "MARKERSRC"}'
    db = _db_file(path)
    raw = db.read_bytes().replace(whole, b"\x00PLACEHOLDER\x00")
    raw = raw.replace(b"MARKERSRC", b"MARKERSRD")  # only the filter table's copies
    db.write_bytes(raw.replace(b"\x00PLACEHOLDER\x00", whole))
    with pytest.raises(StoreCorruptError, match="filter index|integrity"):
        MemoryStore.load(path, verify=True)


def test_a_database_from_before_checksums_still_loads_and_gains_them(tmp_path):
    path = _persisted(tmp_path / "s")
    conn = sqlite3.connect(_db_file(path))
    conn.execute("ALTER TABLE nodes DROP COLUMN crc")
    conn.commit()
    conn.close()
    with MemoryStore.load(path, verify=True) as old:
        assert old.get_nodes(["n5"])[0].text == MARK_TEXT
        old.add(clustered(1, seed=3), ids=["new"])  # first write adds the checksums
        old.persist()
    _edit_db(path, MARK_TEXT.encode(), MARK_TEXT[:-1].encode() + b"3")
    with MemoryStore.load(path) as again, pytest.raises(StoreCorruptError, match="checksum"):
        again.get_nodes(["n5"])


# --------------------------------------------------------------------- 5. compaction
def test_readers_keep_working_while_another_handle_compacts(tmp_path):
    path = _persisted(tmp_path / "s", n=300)
    reader = MemoryStore.load(path)
    q = queries(4)
    expected = [[h.id for h in r] for r in reader.search(q, k=10)]
    writer = MemoryStore.load(path)
    writer.delete([f"n{i}" for i in range(0, 300, 3)])
    writer.compact(show_progress=False)  # new database file; the old one is deleted
    writer.close()
    errors: list[BaseException] = []

    def search_many():
        try:
            for _ in range(20):
                got = reader.search(q, k=10)
                assert [[h.id for h in r] for r in got] == expected
                reader.get_nodes(["n0"])  # deleted since, but alive in its generation
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    reader.close()
    assert len([n for n in os.listdir(path) if n.endswith(".sqlite")]) == 1  # none re-created
    with MemoryStore.load(path) as now:
        assert len(now) == 200


def test_a_load_racing_a_commit_loads_the_new_version(tmp_path, monkeypatch):
    path = _persisted(tmp_path / "s")
    real_open = segments_mod.MemoryRows.open_segment
    raced = []

    def open_after_a_commit(self, directory, entry, **kw):
        if not raced:  # another writer commits (and collects garbage) mid-load
            raced.append(True)
            with MemoryStore.load(path) as other:
                other.delete(["n0"])
                other.compact(show_progress=False)
        return real_open(self, directory, entry, **kw)

    monkeypatch.setattr(segments_mod.MemoryRows, "open_segment", open_after_a_commit)
    with MemoryStore.load(path) as store:
        assert raced and store.generation == 2 and len(store) == 29


# --------------------------------------------------------------------- 9. small ones
def test_get_memories_of_no_ids_is_empty():
    with MemoryStore(n_mem=N_MEM, hidden_size=H) as store:
        store.add(clustered(2))
        got = store.get_memories([])
        assert got.shape == (0, N_MEM, H) and got.dtype == torch.float16


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivfpq"])
def test_huge_k_is_clamped_to_the_store_size(index):
    opts = dict(min_index_rows=50, reduce_dim=16, pq_m=4, pq_nbits=4, ivf_nlist=4)
    with MemoryStore(n_mem=N_MEM, hidden_size=H, index=index, **opts) as store:
        store.add(clustered(200), ids=[f"d{i}" for i in range(200)])
        if index != "flat":
            store.build_index(show_progress=False)
        for k in (10**9, 2**62):
            hits = store.search(queries(2), k=k)
            assert [len(h) for h in hits] == [200, 200]


def test_using_a_closed_store_is_a_named_error(tmp_path):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    ids = store.add(clustered(2))
    store.close()
    for call in (
        lambda: store.search(queries(1), k=1),
        lambda: store.add(clustered(1)),
        lambda: store.get_memories(ids),
        lambda: store.get_nodes(ids),
        lambda: store.delete(ids),
        lambda: store.persist(tmp_path / "x"),
        lambda: ids[0] in store,
    ):
        with pytest.raises(StoreClosedError, match="closed"):
            call()
    store.close()  # closing twice is fine
    loaded = MemoryStore.load(_persisted(tmp_path / "s"))
    loaded.close()
    with pytest.raises(StoreClosedError, match="MemoryStore.load"):
        loaded.search(queries(1), k=1)


def test_tuple_metadata_reads_back_as_stored_and_filters():
    with MemoryStore(n_mem=N_MEM, hidden_size=H) as store:
        store.add(clustered(2), ids=["a", "b"], metadata=[{"tags": ("x", "y")}, {"tags": ["z"]}])
        assert store.get_nodes(["a"])[0].metadata == {"tags": ["x", "y"]}
        hits = store.search(queries(1), k=5, filters={"tags": "x"})[0]
        assert [h.id for h in hits] == ["a"] and hits[0].metadata == {"tags": ["x", "y"]}
