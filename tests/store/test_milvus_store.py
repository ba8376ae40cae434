"""`MilvusMemoryStore` against a real Milvus engine (Milvus Lite, started by the tests):
the same answers as `MemoryStore`, exact memories, pushed-down filters, wide memories,
and several writer processes."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clara_integrations.store import (
    MemoryStore,
    MemoryStoreProtocol,
    NodeNotFoundError,
    StoreClosedError,
    StoreMismatchError,
)

from ._helpers import N_MEM, H, assert_same_hits, clustered, queries

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from clara_integrations.store import MilvusMemoryStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

FILTERS = [
    None,
    {"source": "s1.pdf"},
    {"source": ["s0.pdf", "s2.pdf"]},
    {"source": {"$ne": "s1.pdf"}},
    {"source": {"$nin": ["s0.pdf", "s1.pdf"]}},
    {"page": {"$gte": 2, "$lt": 5}},
    {"page": 3.0},  # 3 == 3.0, as JSON compares
    {"flag": True},
    {"flag": 1},  # True != 1
    {"tags": "even"},  # any element of a list
    {"tags": {"$ne": "even"}},
    {"missing": {"$ne": "x"}},  # nodes without the key match $ne
    {"name": {"$gt": "n5"}},
    {"ts": {"$gt": 1700000000000000050}},  # integers past 2**53 compare exactly
    {"ts": {"$lte": 1700000000000000003, "$gt": 1700000000000000000}},
    {"$or": [{"source": "s0.pdf"}, {"page": {"$gt": 5}}]},
    {"$and": [{"source": "s0.pdf"}, {"tags": "odd"}]},
    {"source": {"$in": []}},
    {"source": {"$nin": []}},
    {'odd key "quoted"': "ü"},
]


def _same(hits, ref_hits) -> None:
    """Milvus' hits are `MemoryStore`'s: scores within 1e-5, ids but for ties, same nodes."""
    assert_same_hits(hits, [[(h.id, h.score) for h in row] for row in ref_hits])
    by_id = {h.id: h for row in ref_hits for h in row}
    assert all(
        (h.text, h.metadata) == (by_id[h.id].text, by_id[h.id].metadata)
        for row in hits
        for h in row
        if h.id in by_id
    )


def _metadata(n: int) -> list[dict]:
    return [
        {
            "source": f"s{i % 3}.pdf",
            "page": i % 7,
            "tags": ["even" if i % 2 == 0 else "odd"],
            "flag": i % 5 == 0,
            "name": f"n{i}",
            "ts": 1700000000000000000 + i,
            **({'odd key "quoted"': "ü"} if i % 4 == 0 else {}),
        }
        for i in range(n)
    ]


@pytest.fixture
def pair(tmp_path):
    """The same 120 nodes in a MemoryStore and in a Milvus Lite collection."""
    mem, meta = clustered(120), _metadata(120)
    ids = [f"n{i}" for i in range(120)]
    texts = [f"text {i}" for i in range(120)]
    ref = MemoryStore(n_mem=N_MEM, hidden_size=H)
    ref.add(mem, texts=texts, metadata=meta, ids=ids)
    milvus = MilvusMemoryStore(str(tmp_path / "clara.db"), n_mem=N_MEM, hidden_size=H)
    milvus.add(mem, texts=texts, metadata=meta, ids=ids)
    yield ref, milvus, mem, ids
    ref.close()
    milvus.close()


def test_implements_the_store_protocol(pair):
    assert isinstance(pair[1], MemoryStoreProtocol)


@pytest.mark.parametrize("filters", FILTERS, ids=repr)
def test_search_and_filters_give_memory_stores_answers(pair, filters):
    ref, milvus, _, _ = pair
    q = queries(3)
    _same(milvus.search(q, k=7, filters=filters), ref.search(q, k=7, filters=filters))
    assert milvus.ids_where(filters) == ref.ids_where(filters)


def test_memories_nodes_and_len_are_exact(pair):
    ref, milvus, mem, ids = pair
    assert len(milvus) == len(ref) == 120 and "n3" in milvus and "zz" not in milvus
    assert torch.equal(milvus.get_memories(ids[::7]), ref.get_memories(ids[::7]))
    assert milvus.get_memories(ids[:2]).dtype == torch.float16
    assert milvus.get_nodes(ids[:3]) == ref.get_nodes(ids[:3])
    nodes, memories = milvus.get_nodes_with_memories(ids[5::11])
    ref_nodes, ref_memories = ref.get_nodes_with_memories(ids[5::11])
    assert nodes == ref_nodes == ref.get_nodes(ids[5::11])
    assert torch.equal(memories, ref_memories) and torch.equal(
        memories, ref.get_memories(ids[5::11])
    )
    assert milvus.get_nodes_with_memories([])[1].shape == (0, N_MEM, H)
    with pytest.raises(NodeNotFoundError):
        milvus.get_nodes_with_memories(["n1", "zz"])


def test_update_delete_and_errors_as_memory_store(pair):
    ref, milvus, _, ids = pair
    new = torch.randn(2, N_MEM, H)
    for store in (ref, milvus):
        store.update(ids[:2], memories=new, metadata=[{"source": "x"}, None])
        store.update(ids[2:3], texts=["changed"])
        assert store.delete(ids[5:7]) == 2
        assert store.delete(["nope"], missing_ok=True) == 0
        with pytest.raises(NodeNotFoundError):
            store.delete(["nope", ids[8]])
        assert ids[8] in store  # nothing deleted by the refused call
        with pytest.raises(NodeNotFoundError):
            store.get_memories(["nope"])
        with pytest.raises(ValueError, match="already in the store"):
            store.add(torch.randn(1, N_MEM, H), ids=[ids[0]])
    assert torch.equal(milvus.get_memories(ids[:2]), ref.get_memories(ids[:2]))
    assert milvus.get_nodes(ids[:3]) == ref.get_nodes(ids[:3])
    assert milvus.ids_where({"source": "x"}) == ["n0"] and len(milvus) == len(ref) == 118
    _same(milvus.search(queries(2), k=5), ref.search(queries(2), k=5))


def test_reopen_pickle_and_mismatches(tmp_path, pair):
    _, milvus, _, ids = pair
    uri = milvus.uri
    milvus.close()
    with pytest.raises(StoreClosedError):
        milvus.search(queries(1))
    again = MilvusMemoryStore(uri)  # config read from the collection
    assert len(again) == 120 and again.config.n_mem == N_MEM
    copy = pickle.loads(pickle.dumps(again))
    assert copy.get_nodes(ids[:1]) == again.get_nodes(ids[:1])
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        MilvusMemoryStore(uri, n_mem=N_MEM + 1, hidden_size=H)

    class Model:  # a compressor of another identity
        n_mem, hidden_size, model_identity = N_MEM, H, "other"

        def compress_documents(self, texts, **kw):
            return torch.randn(len(texts), N_MEM, H)

    bound = MilvusMemoryStore(uri, "bound", n_mem=N_MEM, hidden_size=H, model_identity="mine")
    ref = MemoryStore(n_mem=N_MEM, hidden_size=H, model_identity="mine")
    errors = []
    for store in (bound, ref):
        with pytest.raises(StoreMismatchError) as err:
            store.add_documents(["a text"], Model())
        errors.append(str(err.value))
    assert errors[0] == errors[1]  # the same error as MemoryStore
    adopting = MilvusMemoryStore(uri, "adopt", n_mem=N_MEM, hidden_size=H)
    adopting.add_documents(["a text"], Model(), show_progress=False)
    assert MilvusMemoryStore(uri, "adopt").config.model_identity == "other"
    for store in (again, copy, bound, adopting):
        store.close()


def test_a_failed_add_leaves_nothing(tmp_path, monkeypatch):
    store = MilvusMemoryStore(str(tmp_path / "m.db"), n_mem=N_MEM, hidden_size=H)
    store.add(torch.randn(2, N_MEM, H), ids=["a", "b"])
    calls = {"n": 0}
    insert = store._client.insert

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network down")
        return insert(*args, **kwargs)

    monkeypatch.setattr(store._client, "insert", flaky)
    monkeypatch.setattr(store, "_rows_per_request", lambda: 3)  # several requests
    with pytest.raises(ConnectionError):
        store.add(torch.randn(7, N_MEM, H), ids=[f"x{i}" for i in range(7)])
    assert store.ids_where() == ["a", "b"]
    with pytest.raises(ValueError, match="split the document"):
        store.add(torch.randn(1, N_MEM, H), texts=["x" * 70_000])
    assert len(store) == 2
    store.close()


def test_memories_wider_than_milvus_indexes_are_kept_exactly(tmp_path):
    """CLaRa-7B at compression 16: 16 x 4,096 = 65,536 values, twice what a Milvus server
    indexes. The exact memory is kept in parts, a projection is indexed, and the
    candidates are re-scored exactly."""
    n_mem, h, n = 16, 4096, 60
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(6, n_mem * h, generator=gen)
    mem = (centers[torch.arange(n) % 6] + 0.5 * torch.randn(n, n_mem * h, generator=gen)).reshape(
        n, n_mem, h
    )
    ids = [f"d{i}" for i in range(n)]
    milvus = MilvusMemoryStore(
        str(tmp_path / "wide.db"), n_mem=n_mem, hidden_size=h, projection_dim=256
    )
    assert milvus._layout["parts"] == 2 and milvus._layout["projection_dim"] == 256
    milvus.add(mem, ids=ids, metadata=[{"g": i % 6} for i in range(n)])
    ref = MemoryStore(n_mem=n_mem, hidden_size=h)
    ref.add(mem, ids=ids, metadata=[{"g": i % 6} for i in range(n)])
    assert torch.equal(milvus.get_memories(ids[:5]), ref.get_memories(ids[:5]))
    q = (centers[:3] + 0.5 * torch.randn(3, n_mem * h, generator=gen)).float()
    _same(milvus.search(q, k=5), ref.search(q, k=5))
    _same(milvus.search(q, k=5, filters={"g": 1}), ref.search(q, k=5, filters={"g": 1}))
    milvus.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WRITER = """
import sys, torch
from clara_integrations.store import MilvusMemoryStore
uri, name = sys.argv[1], sys.argv[2]
store = MilvusMemoryStore(uri, "shared")
for b in range(10):
    ids = [f"{name}-{b}-{i}" for i in range(20)]
    store.add(torch.randn(20, store.config.n_mem, store.config.hidden_size), ids=ids,
              metadata=[{"writer": name}] * 20)
print("done")
"""

_READER = """
import sys, time, torch
from clara_integrations.store import MilvusMemoryStore
store = MilvusMemoryStore(sys.argv[1], "shared")
seen = 0
deadline = time.time() + 540  # a loaded 2-core machine: the writers may take minutes
while time.time() < deadline:
    n = len(store)
    assert n >= seen, (n, seen)  # what was written never disappears
    seen = n
    hits = store.search(torch.randn(1, store.config.dim), k=3)
    assert len(hits[0]) >= min(3, n)  # the writers may have added more since len()
    if n == 400:
        break
print(seen)
"""


def test_two_writer_processes_and_a_reader_lose_nothing(tmp_path):
    """A Milvus server (Milvus Lite's gRPC server, started here) takes writes from two
    processes at once while a third reads: every node arrives."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(tmp_path / "server"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                store = MilvusMemoryStore(uri, "shared", n_mem=N_MEM, hidden_size=H)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, uri, name],
                cwd=REPO,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for code, name in ((_WRITER, "a"), (_WRITER, "b"), (_READER, "r"))
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
        assert outs[2][0].strip() == "400"
        assert len(store) == 400
        for name in ("a", "b"):
            assert len(store.ids_where({"writer": name})) == 200
        store.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_any_id_string_is_one_node(tmp_path):
    """Ids are quoted nowhere (the primary key is their digest): an id holding quotes or
    backslashes is one node, and deleting it touches no other."""
    store = MilvusMemoryStore(str(tmp_path / "q.db"), n_mem=N_MEM, hidden_size=H)
    ids = ["x", "y", "x','y", 'a"b\\c', "a'b"]
    store.add(torch.randn(5, N_MEM, H), texts=ids, ids=ids)
    assert [n.text for n in store.get_nodes(ids)] == ids
    assert store.present(ids + ["z"]) == set(ids) and "x','y" in store
    assert store.delete(["x','y", "nope"], missing_ok=True) == 1
    assert store.ids_where() == sorted(["x", "y", 'a"b\\c', "a'b"])
    store.close()


def test_update_is_all_or_nothing_and_reopen_checks_identity(tmp_path, monkeypatch):
    uri = str(tmp_path / "u.db")
    store = MilvusMemoryStore(uri, n_mem=N_MEM, hidden_size=H, model_identity="model-a")
    ids = ["a", "b", "c", "d"]
    store.add(torch.randn(4, N_MEM, H), texts=list("abcd"), ids=ids)
    before = store.get_memories(ids)
    upsert, calls = store._client.upsert, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network down")
        return upsert(*args, **kwargs)

    monkeypatch.setattr(store._client, "upsert", flaky)
    monkeypatch.setattr(store, "_rows_per_request", lambda extra_bytes=0: 2)
    with pytest.raises(ConnectionError):
        store.update(ids, memories=torch.randn(4, N_MEM, H), texts=list("ABCD"))
    assert [n.text for n in store.get_nodes(ids)] == list("abcd")
    assert torch.equal(store.get_memories(ids), before)
    store.update([], texts=[])  # nothing to do, as in MemoryStore
    assert [h.id for h in store.search(before[:1].flatten(1), k=10**9)[0]][0] == "a"
    store.close()
    with pytest.raises(StoreMismatchError, match="model-a"):
        MilvusMemoryStore(uri, model_identity="model-b")
    with pytest.raises(ValueError, match="runtime settings"):
        MilvusMemoryStore(uri, hnsw_m=8)
    tuned = MilvusMemoryStore(uri, rescore_factor=3)
    assert tuned.config.rescore_factor == 3
    with pytest.raises(ValueError, match="control character"):
        tuned.search(queries(1), filters={"s": {"$lt": "a\x0b"}})
    tuned.close()
