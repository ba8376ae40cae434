"""Approximate indexes: candidates re-scored exactly, fresh rows, deletions, persistence."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from clara_integrations.store import MemoryStore

from ._helpers import N_MEM, H, clustered

N = 3000
ANN_OPTS = dict(
    min_index_rows=500, reduce_dim=32, pq_m=8, pq_nbits=4, ivf_nprobe=8, max_unindexed_rows=10**6
)


@pytest.fixture(scope="module")
def data():
    mem = clustered(N, clusters=30, seed=5, noise=0.8)
    ids = [f"d{i}" for i in range(N)]
    meta = [{"group": i % 4} for i in range(N)]
    q = clustered(20, clusters=30, seed=5, noise=1.0).flatten(1)  # same centres as docs
    flat = MemoryStore(n_mem=N_MEM, hidden_size=H)
    flat.add(mem, ids=ids, metadata=meta)
    truth = flat.search(q, k=10)
    flat.close()
    return mem, ids, meta, q, truth


def _recall(hits, truth):
    got = [len({h.id for h in a} & {h.id for h in b}) / len(b) for a, b in zip(hits, truth)]
    return sum(got) / len(got)


def _exact_score(mem16, ids, q, hit):
    x = mem16[ids.index(hit.id)].flatten().float()
    return F.cosine_similarity(F.normalize(q.float(), dim=0), x, dim=0).item()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq", "IVF16,Flat"])
def test_ann_recall_and_exact_scores(data, kind):
    mem, ids, meta, q, truth = data
    store = MemoryStore(n_mem=N_MEM, hidden_size=H, index=kind, **ANN_OPTS)
    store.add(mem, ids=ids, metadata=meta)
    store.build_index(show_progress=False)
    assert store.stats()["indexed_rows"] == N
    hits = store.search(q, k=10)
    assert _recall(hits, truth) >= 0.9
    m16 = mem.half()
    for b in (0, 7):
        for h in hits[b]:
            assert h.score == pytest.approx(_exact_score(m16, ids, q[b], h), abs=1e-5)
    store.close()


def test_ann_fresh_rows_deletions_and_filters(data, tmp_path):
    mem, ids, meta, q, truth = data
    store = MemoryStore(n_mem=N_MEM, hidden_size=H, index="hnsw", **ANN_OPTS)
    store.add(mem, ids=ids, metadata=meta)
    store.persist(tmp_path / "s", show_progress=False)  # trains: N >= min_index_rows
    index_files = sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith("index-"))
    assert len(index_files) == 1 and store.stats()["indexed_rows"] == N
    # fresh rows (not in the index) are scanned exactly and found
    fresh = clustered(5, seed=99)
    store.add(fresh, ids=[f"f{i}" for i in range(5)], metadata=[{"group": 9}] * 5)
    hits = store.search(fresh.flatten(1), k=1)
    assert [h[0].id for h in hits] == [f"f{i}" for i in range(5)]
    # deleted rows never come back, and lists are not short
    top = [h.id for h in store.search(q[:1], k=10)[0]]
    store.delete(top[:5])
    after = store.search(q[:1], k=10)[0]
    assert len(after) == 10 and not {h.id for h in after} & set(top[:5])
    # filters go through the index selector (exact_filter_rows=1) without short lists
    store.configure(exact_filter_rows=1)
    for flt in ({"group": 2}, {"group": {"$in": [1, 3]}}, {"group": {"$ne": 0}}):
        res = store.search(q, k=10, filters=flt)
        assert all(len(r) == 10 for r in res)
    res = store.search(q, k=10, filters={"group": 2})
    assert all(h.metadata["group"] == 2 for r in res for h in r)
    # a very selective filter on unindexed rows still returns every match
    assert {h.id for h in store.search(q[:1], k=10, filters={"group": 9})[0]} == {
        f"f{i}" for i in range(5)
    }
    store.configure(exact_filter_rows=50000)
    # incremental persist keeps the index file (rows stay unindexed below the threshold)
    store.persist(show_progress=False)
    now = sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith("index-"))
    assert now == index_files
    expected = store.search(q, k=10)
    store.close()
    loaded = MemoryStore.load(tmp_path / "s", hnsw_ef_search=64)
    assert loaded.config.hnsw_ef_search == 64
    assert [[h.id for h in r] for r in loaded.search(q, k=10)] == [
        [h.id for h in r] for r in expected
    ]
    loaded.close()


def test_switch_index_kind(data):
    mem, ids, meta, q, truth = data
    store = MemoryStore(n_mem=N_MEM, hidden_size=H, **ANN_OPTS)
    store.add(mem[:1000], ids=ids[:1000])
    store.build_index("IVF8,Flat", show_progress=False)
    assert store.config.index == "IVF8,Flat" and store.stats()["indexed_rows"] == 1000
    store.build_index("flat", show_progress=False)
    assert store.stats()["indexed_rows"] == 0
    with pytest.raises(ValueError):
        store.build_index("Bogus42", show_progress=False)
    assert store.config.index == "flat"
    store.build_index("hnsw", show_progress=False)
    store.delete(ids[1:1000])
    with pytest.raises(ValueError, match="at least 2"):
        store.build_index("IVF8,Flat", show_progress=False)  # one node left: nothing changes
    assert store.config.index == "hnsw" and store.stats()["indexed_rows"] == 1000
    store.close()


def test_an_hnsw_index_over_fewer_nodes_than_its_width(tmp_path):
    """50 nodes of 256 dims under reduce_dim=128: the PCA sample has fewer components than
    the index is wide (faiss used to fail with a bare AssertionError, in build_index and
    in the compact or persist that trains one)."""
    store = MemoryStore(n_mem=4, hidden_size=64, index="hnsw", min_index_rows=2)
    memories = clustered(50, n_mem=4, h=64, seed=5)
    ids = store.add(memories)
    store.build_index(show_progress=False)
    hits = store.search(memories[:5].flatten(1), k=1)
    assert [h[0].id for h in hits] == ids[:5]
    assert all(h[0].score == pytest.approx(1.0, abs=1e-3) for h in hits)
    store.delete(ids[40:])
    store.persist(tmp_path / "s")
    store.compact(show_progress=False)
    with MemoryStore.load(tmp_path / "s") as again:
        assert len(again) == 40
        assert again.search(memories[7:8].flatten(1), k=1)[0][0].id == ids[7]
    store.close()


@pytest.mark.parametrize("spec", ["PQ4", "LSH", "NSG8,Flat", "IVF4,Flat,RFlat", "ITQ8,LSH"])
def test_factory_strings_that_faiss_cannot_search_with_filters_are_refused_up_front(spec):
    """These built and trained, then failed every search (FAISS refuses per-query
    parameters / id selectors for them) once the store reached the index threshold."""
    with pytest.raises(ValueError, match=rf"index='{spec}' builds a FAISS Index.*Flat, SQ, IVF"):
        MemoryStore(n_mem=N_MEM, hidden_size=H, index=spec)


@pytest.mark.parametrize("spec", ["SQ8", "IVF4,Flat", "HNSW8,SQ8", "PCA16,Flat", "OPQ4,IVF4,PQ4"])
def test_searchable_factory_families_build_and_filter(spec):
    store = MemoryStore(n_mem=N_MEM, hidden_size=H, index=spec, min_index_rows=1)
    ids = store.add(clustered(300), metadata=[{"odd": i % 2} for i in range(300)])
    store.build_index()
    hits = store.search(clustered(1), k=5, filters={"odd": 1})[0]
    assert len(hits) == 5 and all(int(ids.index(h.id)) % 2 == 1 for h in hits)
