"""Add / search / filters / delete / update / validation on an in-memory store."""

from __future__ import annotations

import warnings

import pytest
import torch

import clara_integrations.store as store_pkg
from clara_integrations.store import (
    Hit,
    MemoryStore,
    NodeNotFoundError,
    StoreConfig,
    StoreMismatchError,
)

from ._helpers import N_MEM, D, H, assert_same_hits, brute_force, clustered, queries


def test_public_api_is_pinned():
    assert store_pkg.__all__ == sorted(store_pkg.__all__)
    assert set(store_pkg.__all__) == {
        "Hit",
        "MemoryStore",
        "MemoryStoreProtocol",
        "MilvusMemoryStore",
        "Node",
        "NodeNotFoundError",
        "StoreClosedError",
        "StoreConfig",
        "StoreCorruptError",
        "StoreError",
        "StoreLockedError",
        "StoreMismatchError",
        "StoreStaleError",
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_flat_search_matches_brute_force(dtype):
    mem = clustered(500, seed=3) * 3
    ids = [f"d{i}" for i in range(500)]
    with MemoryStore(n_mem=N_MEM, hidden_size=H, dtype=dtype, scan_block_bytes=1) as store:
        # scan_block_bytes=1 forces many small blocks (tests the blocked top-k merge)
        assert store.add(mem, texts=ids, ids=ids) == ids
        assert len(store) == 500
        stored = store.get_memories(ids)
        assert stored.dtype == dtype and stored.shape == (500, N_MEM, H)
        assert torch.equal(stored, mem.to(dtype))  # rounded once, stored exactly
        q = queries(7)
        hits = store.search(q, k=10)
        assert_same_hits(hits, brute_force(stored, ids, q, 10))
        assert all(isinstance(h, Hit) and h.text == h.id for h in hits[0])
        # 1-D query and [B, n_mem, H] queries are accepted too
        assert [h.id for h in store.search(q[0], k=3)[0]] == [h.id for h in hits[0][:3]]
        q3 = q.reshape(7, N_MEM, H)
        assert [h.id for h in store.search(q3, k=3)[6]] == [h.id for h in hits[6][:3]]


def test_search_edge_cases():
    with MemoryStore(n_mem=N_MEM, hidden_size=H) as store:
        assert store.search(queries(2), k=5) == [[], []]
        store.add(clustered(3), ids=["a", "b", "c"])
        hits = store.search(queries(1), k=10)
        assert len(hits[0]) == 3  # k larger than the store
        assert store.search(store.get_memories(["b"]).flatten(1), k=1)[0][0].id == "b"


def test_filters_equality_membership_negation(small_store):
    store, mem, ids, meta = small_store
    stored = store.get_memories(ids)
    q = queries(4)
    cases = {
        "eq": ({"source": "s1.pdf"}, lambda m: m["source"] == "s1.pdf"),
        "eq-op": ({"source": {"$eq": "s1.pdf"}}, lambda m: m["source"] == "s1.pdf"),
        "in-list": ({"page": [1, 2]}, lambda m: m["page"] in (1, 2)),
        "in-op": ({"page": {"$in": [3]}}, lambda m: m["page"] == 3),
        "and": (
            {"source": "s0.pdf", "page": {"$in": [0, 5]}},
            lambda m: m["source"] == "s0.pdf" and m["page"] in (0, 5),
        ),
        "ne": ({"source": {"$ne": "s0.pdf"}}, lambda m: m["source"] != "s0.pdf"),
        "nin": ({"page": {"$nin": [0, 1, 2, 3]}}, lambda m: m["page"] > 3),
        "list-contains": ({"tags": "even"}, lambda m: "even" in m["tags"]),
        "float-int": ({"page": 2.0}, lambda m: m["page"] == 2),
        "range": ({"page": {"$gte": 2, "$lt": 5}}, lambda m: 2 <= m["page"] < 5),
        "range-float": ({"page": {"$gt": 4.5}}, lambda m: m["page"] > 4.5),
        "range-string": ({"source": {"$lte": "s1.pdf"}}, lambda m: m["source"] <= "s1.pdf"),
        "or": (
            {"$or": [{"source": "s2.pdf"}, {"page": {"$lte": 1}}]},
            lambda m: m["source"] == "s2.pdf" or m["page"] <= 1,
        ),
        "and-of-or": (
            {"$and": [{"$or": [{"page": 0}, {"page": 6}]}, {"source": {"$ne": "s0.pdf"}}]},
            lambda m: m["page"] in (0, 6) and m["source"] != "s0.pdf",
        ),
    }
    for exact_rows in (10_000, 1):  # exact-on-allowed path, then masked-scan path
        store.configure(exact_filter_rows=exact_rows)
        for name, (flt, pred) in cases.items():
            allowed = [pred(m) for m in meta]
            hits = store.search(q, k=15, filters=flt)
            assert all(len(h) == 15 for h in hits), name  # no short lists
            assert_same_hits(hits, brute_force(stored, ids, q, 15, allowed))
            assert all(pred(h.metadata) for row in hits for h in row), name
    assert store.search(q, k=5, filters={"source": "nope"}) == [[]] * 4
    assert store.search(q, k=5, filters={"page": {"$in": []}}) == [[]] * 4
    assert store.search(q, k=5, filters={"page": {"$gt": "a"}}) == [[]] * 4  # no number is a string


def test_or_filters_never_return_deleted_or_replaced_nodes(tmp_path):
    """`$or` compiles to `A OR B`: without brackets the live-row test bound to A only."""
    with MemoryStore(n_mem=N_MEM, hidden_size=H) as store:
        store.add(clustered(3), ids=["a", "b", "c"], metadata=[{"k": 1}, {"k": 2}, {"k": 3}])
        store.persist(tmp_path / "s", show_progress=False)
        store.delete(["b"])
        store.update(["c"], clustered(1), metadata=[{"k": 4}])
        either = {"$or": [{"k": 1}, {"k": 2}, {"k": 3}]}
        assert store.ids_where(either) == ["a"]
        assert [h.id for h in store.search(queries(1), k=5, filters=either)[0]] == ["a"]


def test_string_ranges_order_like_python():
    words = ["ab", "ab c", "ab!", "abc", "b", "a"]
    with MemoryStore(n_mem=N_MEM, hidden_size=H) as store:
        store.add(clustered(len(words)), ids=words, metadata=[{"w": w} for w in words])
        for bound in words:
            for op, test in (("$lt", str.__lt__), ("$gte", str.__ge__)):
                hits = store.search(queries(1), k=10, filters={"w": {op: bound}})[0]
                assert sorted(h.id for h in hits) == sorted(w for w in words if test(w, bound))


@pytest.mark.parametrize(
    "bad",
    [
        {"source": {"$gt": [1]}},  # a range bound must be a number or a string
        {"source": {"$gt": True}},
        {"source": {"$eq": 1, "$gt": 0}},  # membership does not combine with bounds
        {"$or": []},
        {"$or": {"source": 1}},
        {"source": {"a": 1}},
        {"source": {"$in": "x"}},
        {"": 1},
        {"source": [{"nested": 1}]},
        ["source"],
    ],
)
def test_bad_filters_raise(small_store, bad):
    store = small_store[0]
    with pytest.raises(ValueError):
        store.search(queries(1), k=3, filters=bad)


def test_delete(small_store):
    store, mem, ids, meta = small_store
    assert store.delete(["n0", "n5", "n5"]) == 2
    assert len(store) == 298 and "n0" not in store and "n1" in store
    hits = store.search(store.get_memories(["n1"]).flatten(1), k=300)
    assert {h.id for h in hits[0]} == set(ids) - {"n0", "n5"}
    with pytest.raises(NodeNotFoundError, match="n0"):
        store.delete(["n1", "n0"])
    assert "n1" in store  # nothing deleted by the failed call
    assert store.delete(["n0", "n2"], missing_ok=True) == 1
    with pytest.raises(NodeNotFoundError):
        store.get_memories(["n0"])
    # auto ids are fresh uuids and never collide with earlier ones
    new = store.add(clustered(2, seed=9))
    assert len(set(new) | set(ids)) == len(ids) + 2
    store.add(clustered(1, seed=5), ids=["n0"])  # a caller may re-use its own deleted id
    assert "n0" in store


def test_update(small_store):
    store, mem, ids, meta = small_store
    new_mem = clustered(2, seed=42)
    store.update(["n3", "n4"], memories=new_mem, texts=["three", "four"])
    assert torch.equal(store.get_memories(["n3", "n4"]), new_mem.half())
    nodes = store.get_nodes(["n3", "n4"])
    assert [n.text for n in nodes] == ["three", "four"]
    assert nodes[0].metadata == meta[3]  # untouched
    store.update(["n3"], metadata=[{"source": "new.pdf"}])
    assert store.get_nodes(["n3"])[0].metadata == {"source": "new.pdf"}
    hits = store.search(new_mem[:1].flatten(1), k=1, filters={"source": "new.pdf"})
    assert hits[0][0].id == "n3" and hits[0][0].text == "three"
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-3)
    assert len(store) == 300
    # the old memory of n4 is gone from search
    old = store.search(mem[4:5].flatten(1), k=300)[0]
    assert [h.id for h in old].count("n4") == 1
    with pytest.raises(NodeNotFoundError):
        store.update(["n3", "missing"], texts=["x", "y"])
    assert store.get_nodes(["n3"])[0].text == "three"  # all-or-nothing
    with pytest.raises(ValueError):
        store.update(["n3"])


def test_wrong_input_leaves_store_unchanged(small_store):
    store, mem, ids, _ = small_store
    before = (len(store), store.search(queries(2), k=5))
    bad_calls = [
        lambda: store.add(torch.randn(2, N_MEM, H + 1)),
        lambda: store.add(torch.randn(2, N_MEM * H)),
        lambda: store.add(torch.full((1, N_MEM, H), float("nan"))),
        lambda: store.add(torch.full((1, N_MEM, H), 1e6)),  # overflows float16
        lambda: store.add(torch.randn(2, N_MEM, H), texts=["only one"]),
        lambda: store.add(torch.randn(2, N_MEM, H), ids=["x", "x"]),
        lambda: store.add(torch.randn(1, N_MEM, H), ids=["n1"]),  # already present
        lambda: store.add(torch.randn(1, N_MEM, H), metadata=[{"f": object()}]),
        lambda: store.add(torch.randint(0, 3, (1, N_MEM, H))),
        lambda: store.search(torch.randn(1, D + 1)),
        lambda: store.search(torch.randn(1, D), k=0),
        lambda: store.update(["n1"], memories=torch.randn(1, N_MEM + 1, H)),
        lambda: store.update(["n1", "n2"], memories=torch.randn(1, N_MEM, H)),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            call()
    assert (len(store), store.search(queries(2), k=5)) == before
    assert torch.equal(store.get_memories(ids), mem.half())
    with pytest.raises(ValueError, match=r"n_mem\*hidden_size=64"):
        store.search(torch.randn(1, 65))


def test_fingerprint_and_config():
    store = MemoryStore(n_mem=8, hidden_size=576, dtype="bf16", model_identity="smol-clara")
    assert store.fingerprint == "smol-clara:n_mem=8:H=576:bfloat16"
    assert store.config.dim == 4608
    with pytest.raises(ValueError, match="dtype"):
        MemoryStore(n_mem=8, hidden_size=576, dtype=torch.int8)
    with pytest.raises(ValueError, match="factory"):
        MemoryStore(n_mem=8, hidden_size=576, index="NotAnIndex,Foo")
    with pytest.raises(ValueError, match="pq_m"):
        StoreConfig(n_mem=2, hidden_size=4, index="ivfpq", reduce_dim=None, pq_m=3)
    assert issubclass(StoreMismatchError, ValueError)
    store.close()


def test_nested_metadata_keys_that_json_would_change_are_refused():
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    for bad in ({"m": {1: "int-key", "1": "str-key"}}, {"m": [{None: "c"}]}, {"m": {2.5: 1}}):
        with pytest.raises(TypeError, match=r"metadata\[0\]\['m'\].*must be str at every level"):
            store.add(clustered(1), metadata=[bad])
    assert len(store) == 0
    [i] = store.add(clustered(1), metadata=[{"m": {"1": ["a", {"b": None}]}}])
    assert store.get_nodes([i])[0].metadata == {"m": {"1": ["a", {"b": None}]}}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_huge_but_finite_memories_keep_their_cosine(dtype):
    store = MemoryStore(n_mem=1, hidden_size=4, dtype=dtype)
    v = torch.tensor([[[1.0, 2, 3, 4]]])
    store.add(v * 1e20, ids=["big"])
    store.add(-v, ids=["opposite"])
    [best, worst] = store.search(v.flatten(1), k=2)[0]
    assert best.id == "big" and best.score == pytest.approx(1.0, abs=1e-2)
    assert worst.score == pytest.approx(-1.0, abs=1e-2)


def test_memories_that_are_or_become_all_zeros_are_refused():
    half = MemoryStore(n_mem=1, hidden_size=4, dtype="float16")
    with pytest.raises(ValueError, match=r"memories\[1\] becomes all zeros in float16.*1e-08"):
        half.add(torch.stack([torch.ones(1, 4), torch.full((1, 4), 1e-8)]))
    with pytest.raises(ValueError, match=r"memories\[0\] is all zeros \(1 such rows\)"):
        half.add(torch.zeros(1, 1, 4))
    [i] = half.add(torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match="all zeros"):
        half.update([i], memories=torch.zeros(1, 1, 4))
    assert len(half) == 1 and torch.equal(half.get_memories([i]), torch.ones(1, 1, 4).half())
    wide = MemoryStore(n_mem=1, hidden_size=4, dtype="float32")
    wide.add(torch.full((1, 1, 4), 1e-8))  # representable there: kept
    assert wide.search(torch.ones(1, 4), k=1)[0][0].score == pytest.approx(1.0)


def test_a_filter_that_cannot_match_says_why_once():
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    store.add(clustered(4), metadata=[{"source": "a.pdf", "page": i} for i in range(4)])
    with pytest.warns(
        UserWarning, match=r"filter key 'soruce' is in no node's metadata \(4 nodes\)"
    ):
        assert store.search(queries(1), k=3, filters={"soruce": "a.pdf"}) == [[]]
    with pytest.warns(UserWarning, match="'pgae'"):
        assert store.ids_where({"$or": [{"source": "b.pdf"}, {"pgae": 1}]}) == []
    with pytest.warns(
        UserWarning, match=r"'page' is compared with string values, but the nodes hold number"
    ):
        assert store.ids_where({"page": {"$in": ["1", "2"]}}) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.search(queries(1), k=3, filters={"soruce": "x"})  # said once already
        assert store.ids_where({"source": "b.pdf"}) == []  # a real key: an honest "none"
        assert len(store.search(queries(1), k=3, filters={"page": {"$gte": 2}})[0]) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memories_whose_cosine_cannot_be_scored_exactly_are_refused(dtype):
    """Near float32's limit a dot product overflows (the hit used to vanish from search:
    k=2 over 2 nodes gave 1); below 1e-12 the norm is clamped (the row used to score
    ~3e-8 against its own direction). Both are refused at add and update, naming the row."""
    store = MemoryStore(n_mem=2, hidden_size=4, dtype=dtype)
    with pytest.raises(ValueError, match=r"memories\[0\] has norm .* outside the range"):
        store.add(torch.cat([torch.full((1, 2, 4), 3.0e38), torch.randn(1, 2, 4)]))
    if dtype == "float32":  # bfloat16 keeps 1e-20 as well; float16 would make it zero
        with pytest.raises(ValueError, match=r"memories\[1\] has norm 2\.83e-20"):
            store.add(torch.cat([torch.ones(1, 2, 4), torch.full((1, 2, 4), 1e-20)]))
    assert len(store) == 0
    [i] = store.add(torch.ones(1, 2, 4))
    with pytest.raises(ValueError, match="outside the range"):
        store.update([i], memories=torch.full((1, 2, 4), 1e38))
    assert store.search(torch.ones(1, 8), k=1)[0][0].score == pytest.approx(1.0)


def test_range_filters_compare_integers_past_2_53_exactly():
    """Nanosecond timestamps: compared as doubles, 1700000000000000001 > 1700000000000000000
    was false (and $lte matched all three)."""
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    ts = [1700000000000000000, 1700000000000000001, 1700000000000000100]
    store.add(clustered(3), ids=["a", "b", "c"], metadata=[{"ts": t} for t in ts])
    assert store.ids_where({"ts": {"$gt": ts[0]}}) == ["b", "c"]
    assert store.ids_where({"ts": {"$lte": ts[0]}}) == ["a"]
    assert store.ids_where({"ts": {"$gte": ts[1], "$lt": ts[2]}}) == ["b"]
    assert store.ids_where({"ts": {"$gt": 1.5}}) == ["a", "b", "c"]  # float bounds still work
    assert store.ids_where({"ts": {"$lt": 2**70}}) == ["a", "b", "c"]  # past 64 bits: REAL
    hits = store.search(torch.ones(1, N_MEM * H), k=3, filters={"ts": {"$gt": ts[0]}})[0]
    assert sorted(h.id for h in hits) == ["b", "c"]
