"""ClaraRetriever: nodes, scores, memory, candidate pool, filters, errors, async."""

from __future__ import annotations

import asyncio

import pytest
import torch
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from clara_integrations import MissingAdapterError
from clara_integrations.llama_index import ClaraRetriever
from clara_integrations.store import MemoryStore, StoreMismatchError


def test_nodes_carry_text_metadata_cosine_and_memory(e2e_model, store32, reference, doc_memory):
    question = reference["questions"][0]
    nodes = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=3).retrieve(question)
    assert len(nodes) == 3
    q = e2e_model.encode_queries([question])
    cos = torch.nn.functional.cosine_similarity(q, doc_memory.flatten(1)).tolist()
    expected = sorted(range(len(cos)), key=lambda i: -cos[i])[:3]
    for n, i in zip(nodes, expected):
        assert n.node.node_id == f"doc-{i}"
        assert n.node.text == reference["docs"][i]
        assert n.node.metadata["i"] == i
        assert n.score == pytest.approx(cos[i], abs=1e-5)
        assert torch.equal(
            torch.tensor(n.node.embedding).reshape(doc_memory[i].shape), doc_memory[i]
        )


def test_candidate_pool_uses_the_selector(e2e_model, store32, reference):
    k = e2e_model.config.generation_top_k
    retriever = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=k, candidate_pool=5)
    for question, topk in zip(reference["questions"], reference["e2e.topk_idx"]):
        assert [n.node.metadata["i"] for n in retriever.retrieve(question)] == topk


def test_filters_dict_and_metadata_filters(e2e_model, store32, reference):
    question = reference["questions"][1]
    as_dict = ClaraRetriever(
        model=e2e_model, store=store32, similarity_top_k=5, filters={"half": "first"}
    )
    ours = [n.node.metadata["i"] for n in as_dict.retrieve(question)]
    assert ours and all(i < len(reference["docs"]) // 2 for i in ours)
    li = MetadataFilters(
        filters=[MetadataFilter(key="i", value=[0, 3], operator=FilterOperator.IN)]
    )
    as_li = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=5, filters=li)
    assert sorted(n.node.metadata["i"] for n in as_li.retrieve(question)) == [0, 3]
    ranged = MetadataFilters(
        filters=[
            MetadataFilter(key="i", value=2, operator=FilterOperator.GT),
            MetadataFilter(key="half", value="first", operator=FilterOperator.EQ),
        ],
        condition=FilterCondition.OR,
    )
    got = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=5, filters=ranged)
    n = len(reference["docs"])
    want = [i for i in range(n) if i > 2 or i < n // 2]
    assert sorted(x.node.metadata["i"] for x in got.retrieve(question)) == want[:5]
    bad = MetadataFilters(
        filters=[MetadataFilter(key="i", value="x", operator=FilterOperator.TEXT_MATCH)]
    )
    with pytest.raises(ValueError, match="not supported"):
        ClaraRetriever(model=e2e_model, store=store32, filters=bad)


def test_attach_memory_off_gives_plain_nodes(e2e_model, store32, reference):
    nodes = ClaraRetriever(
        model=e2e_model, store=store32, similarity_top_k=1, attach_memory=False
    ).retrieve(reference["questions"][0])
    assert nodes[0].node.embedding is None


def test_async_retrieve_matches_sync(e2e_model, store32, reference):
    retriever = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=2, candidate_pool=4)
    question = reference["questions"][1]
    sync = [(n.node.node_id, n.score) for n in retriever.retrieve(question)]
    got = asyncio.run(retriever.aretrieve(question))
    assert [(n.node.node_id, n.score) for n in got] == sync


def test_empty_query_raises(e2e_model, store32):
    retriever = ClaraRetriever(model=e2e_model, store=store32)
    with pytest.raises(ValueError, match="empty query"):
        retriever.retrieve("")


def test_construction_errors(e2e_model, instruct_model, store32):
    with pytest.raises(StoreMismatchError, match="another space"):
        ClaraRetriever(
            model=e2e_model, store=MemoryStore.for_model(e2e_model, model_identity="clara-other")
        )
    with pytest.raises(StoreMismatchError, match="n_mem"):
        ClaraRetriever(
            model=e2e_model,
            store=MemoryStore(n_mem=e2e_model.n_mem + 1, hidden_size=e2e_model.hidden_size),
        )
    with pytest.raises(MissingAdapterError, match="query reasoner"):
        ClaraRetriever(model=instruct_model, store=MemoryStore.for_model(instruct_model))
    with pytest.raises(ValueError, match="similarity_top_k"):
        ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=0)
    with pytest.raises(ValueError, match="candidate_pool"):
        ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=3, candidate_pool=2)


def test_empty_store_returns_nothing(e2e_model):
    store = MemoryStore.for_model(e2e_model)
    assert (
        ClaraRetriever(model=e2e_model, store=store, candidate_pool=8).retrieve("anything?") == []
    )


def test_hybrid_gives_the_pipelines_fused_ranking_with_memory(e2e_model, store32, reference):
    from clara_integrations.pipeline import ClaraPipeline
    from tests.pipeline.conftest import NoRevisionStore

    retriever = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=3, hybrid=True)
    pipeline = ClaraPipeline(e2e_model, store32)
    for question in reference["questions"]:
        nodes = retriever.retrieve(question)
        expected = pipeline.retrieve(question, k=3, hybrid=True)
        assert [n.node.node_id for n in nodes] == [i.id for i in expected]
        assert [n.score for n in nodes] == pytest.approx([i.score for i in expected])
        for n, item in zip(nodes, expected):
            assert torch.equal(
                torch.tensor(n.node.embedding).reshape(item.memory.shape), item.memory
            )
    with pytest.raises(TypeError, match="revision"):
        ClaraRetriever(model=e2e_model, store=NoRevisionStore(store32), hybrid=True)


def test_a_query_bundles_embedding_and_custom_embedding_strs_are_honoured(
    e2e_model, store32, reference
):
    """As LlamaIndex's own vector retriever: a precomputed ``embedding`` is the query
    vector, else the mean vector of ``custom_embedding_strs`` (HyDE's). Both used to be
    ignored (query_str was always encoded)."""
    import copy

    from llama_index.core.schema import QueryBundle

    from clara_integrations.llama_index import ClaraEmbedding

    q0, q1 = reference["questions"][:2]
    retriever = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=3)
    ids = lambda nodes: [n.node.node_id for n in nodes]  # noqa: E731
    assert ids(retriever.retrieve(q0)) != ids(retriever.retrieve(q1))  # a visible difference
    vector = ClaraEmbedding(model=e2e_model).get_query_embedding(q0)
    assert ids(retriever.retrieve(QueryBundle(q1, embedding=vector))) == ids(retriever.retrieve(q0))
    assert ids(retriever.retrieve(QueryBundle(q1, custom_embedding_strs=[q0]))) == ids(
        retriever.retrieve(q0)
    )
    both = retriever.retrieve(QueryBundle(q1, custom_embedding_strs=[q0, q1]))
    mean = torch.cat([e2e_model.encode_queries([q]) for q in (q0, q1)]).float().mean(0)
    scores = torch.nn.functional.cosine_similarity(
        mean[None], store32.get_memories(ids(both)).flatten(1).float()
    )
    assert [n.score for n in both] == pytest.approx(scores.tolist(), abs=1e-5)
    other = copy.deepcopy(e2e_model)
    other._identity = "clara-1111111111111111"
    foreign = ClaraEmbedding(model=other).get_query_embedding(q0)
    with pytest.raises(StoreMismatchError, match="clara-1111111111111111"):
        retriever.retrieve(QueryBundle(q1, embedding=foreign))
    with pytest.raises(ValueError, match="query vector has 3 values"):
        retriever.retrieve(QueryBundle(q1, embedding=[0.1, 0.2, 0.3]))
