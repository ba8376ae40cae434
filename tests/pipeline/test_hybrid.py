"""Hybrid retrieval: reciprocal-rank fusion, the store's BM25 index kept current, the fused
ranking of `ClaraPipeline.retrieve(hybrid=True)` and the memory of every result."""

from __future__ import annotations

import pytest
import torch

from clara_integrations.pipeline import (
    HYBRID_DEPTH,
    ClaraPipeline,
    StoreBM25,
    reciprocal_rank_fusion,
)
from clara_integrations.pipeline.bm25 import BM25
from tests.pipeline.conftest import NoRevisionStore, docs_store

# Short documents, each with one word no other has (its "key"); sorted, as the store
# lists its ids, so BM25's ties break the same way here and there.
WORDS = ["aardvark", "bassoon", "cobalt", "dolmen", "ember", "fjord", "gondola", "halibut"]
KEYS = sorted(f"{word}{n}" for word in WORDS for n in range(4))
DOCS = [f"This note is about the {key} and nothing else of note." for key in KEYS]


@pytest.fixture(scope="module")
def store(e2e_model):
    return docs_store(e2e_model, DOCS, KEYS, metadata=[{"half": i % 2} for i in range(len(KEYS))])


@pytest.fixture(scope="module")
def pipeline(e2e_model, store):
    return ClaraPipeline(e2e_model, store)


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert [i for i, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1][1] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2][1] == pytest.approx(1 / 62)
    # Equal scores keep the order of first appearance, the first ranking's first.
    assert [i for i, _ in reciprocal_rank_fusion([["x"], ["y"]])] == ["x", "y"]
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        reciprocal_rank_fusion([["a"]], k=-1)


def _dense_order(pipeline, question):
    return [i.id for i in pipeline.retrieve(question, k=len(KEYS))]


def test_hybrid_is_the_fusion_of_the_two_rankings(pipeline, store):
    k = 2
    depth = HYBRID_DEPTH * k
    for key in KEYS[:4]:
        question = f"What is said about the {key}?"
        bm25 = BM25(DOCS)
        scores = bm25.scores(question)
        bm25_ids = [KEYS[i] for i in bm25.ranking(question) if scores[i] > 0][:depth]
        expected = reciprocal_rank_fusion([_dense_order(pipeline, question)[:depth], bm25_ids])
        items = pipeline.retrieve(question, k=k, hybrid=True)
        assert [i.id for i in items] == [node_id for node_id, _ in expected[:k]]
        assert [i.score for i in items] == pytest.approx([score for _, score in expected[:k]])
        for item in items:
            assert item.text == DOCS[KEYS.index(item.id)]
            assert torch.equal(item.memory, store.get_memories([item.id])[0])


def test_a_lexical_only_hit_comes_with_its_stored_memory(pipeline, store):
    # A key whose document the query reasoner ranks outside its top HYBRID_DEPTH * k: only
    # BM25 brings it in (the question's one word is in no other document, so it ranks
    # second after the dense top one), and the store gives its memory.
    k = 2
    found = []
    for key in KEYS:
        question = key
        if key in _dense_order(pipeline, question)[: HYBRID_DEPTH * k]:
            continue
        items = pipeline.retrieve(question, k=k, hybrid=True)
        assert key in [i.id for i in items]
        hit = next(i for i in items if i.id == key)
        assert hit.text == DOCS[KEYS.index(key)]
        assert torch.equal(hit.memory, store.get_memories([key])[0])
        found.append(key)
    assert found, "every key's document was in the dense pool: the test exercised nothing"


def test_hybrid_filters_apply_to_both_rankings(pipeline, store):
    for key in KEYS[:6]:
        items = pipeline.retrieve(f"the {key}", k=3, hybrid=True, filters={"half": 1})
        assert items and all(store.get_nodes([i.id])[0].metadata["half"] == 1 for i in items)
        if KEYS.index(key) % 2 == 0:  # its document is filtered out: never returned
            assert key not in [i.id for i in items]


def test_the_bm25_index_follows_every_write(e2e_model):
    store = docs_store(e2e_model, DOCS[:3], KEYS[:3])
    lexical = StoreBM25(store)
    assert lexical.top("quagga", 5) == []
    (memory,) = e2e_model.compress_documents(["A quagga grazes."])
    store.add(memory[None], texts=["A quagga grazes."], ids=["new"])
    assert lexical.top("quagga", 5) == ["new"]
    store.update(["new"], texts=["A zebra grazes."])
    assert lexical.top("quagga", 5) == [] and lexical.top("zebra", 5) == ["new"]
    store.delete(["new"])
    assert lexical.top("zebra", 5) == []
    pipeline = ClaraPipeline(e2e_model, store)  # the pipeline's own index too
    assert "new" not in [i.id for i in pipeline.retrieve("zebra", k=3, hybrid=True)]


def test_hybrid_on_an_empty_store_is_empty(e2e_model):
    from clara_integrations.store import MemoryStore

    empty = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    assert ClaraPipeline(e2e_model, empty).retrieve("anything", k=3, hybrid=True) == []


def test_hybrid_refuses_a_store_without_revision(e2e_model, store):
    pipeline = ClaraPipeline(e2e_model, NoRevisionStore(store))
    assert pipeline.retrieve("the cobalt", k=1)  # plain retrieval still works
    with pytest.raises(TypeError, match="revision"):
        pipeline.retrieve("the cobalt", k=1, hybrid=True)


def test_revision_moves_with_the_nodes_only(e2e_model, tmp_path):
    store = docs_store(e2e_model, DOCS[:2], KEYS[:2])
    seen = [store.revision]
    store.persist(tmp_path / "s", show_progress=False)
    store.compact(show_progress=False)
    assert store.revision == seen[-1]  # nothing a BM25 index reads has changed
    (memory,) = e2e_model.compress_documents(["x y"])
    store.add(memory[None], texts=["x y"], ids=["x"])
    seen.append(store.revision)
    store.update(["x"], texts=["y z"])
    seen.append(store.revision)
    store.delete(["x"])
    seen.append(store.revision)
    assert len(set(seen)) == 4


def test_fusion_skips_a_lexical_hit_deleted_since_the_index_was_built(e2e_model):
    from clara_integrations.pipeline import fuse_rankings, search_store

    store = docs_store(e2e_model, DOCS[:6], KEYS[:6])
    query = e2e_model.encode_queries(["anything"])
    dense = search_store(store, query, k=2)
    stale = [KEYS[5], KEYS[4], KEYS[3]]  # as a BM25 index built before the delete lists them
    store.delete([KEYS[5]])
    fused = fuse_rankings(store, dense, stale, k=3)
    assert KEYS[5] not in [i.id for i in fused] and len(fused) == 3  # the next one steps in
    assert all(torch.equal(i.memory, store.get_memories([i.id])[0]) for i in fused)
