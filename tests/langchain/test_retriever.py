"""ClaraRetriever: documents, scores, overrides, reranking, runnable protocol, bad input."""

from __future__ import annotations

import asyncio

import pytest
import torch

from clara_integrations.langchain import ClaraRetriever
from clara_integrations.store import MemoryStore, StoreMismatchError


def test_documents_carry_text_metadata_id_and_score(e2e_model, doc_store, reference):
    question = reference["questions"][0]
    docs = ClaraRetriever(model=e2e_model, store=doc_store, k=5).invoke(question)
    assert [int(d.id) for d in docs][:2] == reference["e2e.topk_idx"][0]
    q = e2e_model.encode_queries([question])
    memory = e2e_model.compress_documents(reference["docs"]).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(q, memory)  # (5,)
    for doc in docs:
        assert doc.page_content == reference["docs"][int(doc.id)]
        assert doc.metadata["score"] == pytest.approx(float(cosine[int(doc.id)]), abs=1e-5)
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_k_and_filters_per_call_and_in_constructor(e2e_model, reference):
    store = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    store.add_documents(
        reference["docs"],
        e2e_model,
        ids=[str(i) for i in range(5)],
        metadata=[{"topic": "plants"}] * 3 + [{"topic": "other"}] * 2,
        show_progress=False,
    )
    retriever = ClaraRetriever(model=e2e_model, store=store, k=4, filters={"topic": "plants"})
    question = reference["questions"][1]
    assert {d.metadata["topic"] for d in retriever.invoke(question)} == {"plants"}
    assert len(retriever.invoke(question)) == 3  # only 3 documents pass the filter
    other = retriever.invoke(question, k=1, filters={"topic": "other"})
    assert [d.id for d in other] == ["3"] and other[0].metadata["topic"] == "other"


def test_candidate_pool_reranks_with_the_reference_selector(e2e_model, doc_store, reference):
    plain = ClaraRetriever(model=e2e_model, store=doc_store, k=2)
    pooled = ClaraRetriever(model=e2e_model, store=doc_store, k=2, candidate_pool=5)
    for i, question in enumerate(reference["questions"]):
        docs = pooled.invoke(question)
        assert [int(d.id) for d in docs] == reference["e2e.topk_idx"][i]
        assert [d.id for d in docs] == [d.id for d in plain.invoke(question)]
        for a, b in zip(docs, plain.invoke(question)):
            assert a.metadata["score"] == pytest.approx(b.metadata["score"], abs=1e-5)


def test_runnable_protocol(e2e_model, doc_store, reference):
    retriever = ClaraRetriever(model=e2e_model, store=doc_store, k=2)
    questions = reference["questions"]
    single = [retriever.invoke(q) for q in questions]
    assert retriever.batch(questions) == single
    assert retriever.batch(questions, config={"max_concurrency": 2}) == single
    assert asyncio.run(retriever.ainvoke(questions[0])) == single[0]

    async def both():
        return await asyncio.gather(*(retriever.ainvoke(q) for q in questions))

    assert asyncio.run(both()) == single  # concurrent calls share one model safely
    # Per-call options work on the async path too (they were a TypeError there).
    one = retriever.invoke(questions[0], k=1, hybrid=True)
    assert asyncio.run(retriever.ainvoke(questions[0], k=1, hybrid=True)) == one
    assert asyncio.run(retriever.abatch(questions[:2], k=1)) == retriever.batch(questions[:2], k=1)


def test_bad_input(e2e_model, doc_store):
    retriever = ClaraRetriever(model=e2e_model, store=doc_store)
    with pytest.raises(ValueError, match="query is empty"):
        retriever.invoke("  ")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.invoke("question", k=0)
    with pytest.raises(ValueError):
        ClaraRetriever(model=e2e_model, store=doc_store, k=0)


def test_mismatched_store_and_model_is_a_clear_error(e2e_model):
    wrong_shape = MemoryStore(n_mem=2, hidden_size=e2e_model.hidden_size)
    with pytest.raises(StoreMismatchError, match="n_mem=2"):
        ClaraRetriever(model=e2e_model, store=wrong_shape)
    other = MemoryStore(
        e2e_model.n_mem, e2e_model.hidden_size, model_identity="clara-0123456789abcdef"
    )
    with pytest.raises(StoreMismatchError, match="clara-0123456789abcdef"):
        ClaraRetriever(model=e2e_model, store=other)
    with pytest.raises(Exception, match="MemoryStore"):
        ClaraRetriever(model=e2e_model, store={"not": "a store"})


def test_retriever_and_chat_model_read_a_milvus_store(e2e_model, doc_store, reference, tmp_path):
    """`ClaraRetriever` and `ChatClara(store=...)` take a `MilvusMemoryStore` as they take a
    `MemoryStore`: the same documents, scores and answer."""
    pytest.importorskip("milvus_lite")
    from langchain_core.messages import HumanMessage

    from clara_integrations.langchain import ChatClara
    from clara_integrations.store import MilvusMemoryStore

    ids = doc_store.ids_where()
    with MilvusMemoryStore.for_model(e2e_model, str(tmp_path / "m.db"), dtype=torch.float32) as m:
        m.add(
            doc_store.get_memories(ids), texts=[n.text for n in doc_store.get_nodes(ids)], ids=ids
        )
        question = reference["questions"][0]
        got = ClaraRetriever(model=e2e_model, store=m, k=3).invoke(question)
        want = ClaraRetriever(model=e2e_model, store=doc_store, k=3).invoke(question)
        assert [(d.id, d.page_content) for d in got] == [(d.id, d.page_content) for d in want]
        assert [d.metadata["score"] for d in got] == pytest.approx(
            [d.metadata["score"] for d in want], abs=1e-6
        )
        docs = [d for d in want]
        answers = [
            ChatClara(model=e2e_model, store=s, max_new_tokens=8)
            .invoke([HumanMessage(question)], documents=docs)
            .content
            for s in (m, doc_store)
        ]
        assert answers[0] == answers[1]


def test_hybrid_gives_the_pipelines_fused_ranking(e2e_model, doc_store, reference):
    from clara_integrations.pipeline import ClaraPipeline
    from tests.pipeline.conftest import NoRevisionStore

    retriever = ClaraRetriever(model=e2e_model, store=doc_store, k=3, hybrid=True)
    pipeline = ClaraPipeline(e2e_model, doc_store)
    for question in reference["questions"]:
        docs = retriever.invoke(question)
        expected = pipeline.retrieve(question, k=3, hybrid=True)
        assert [d.id for d in docs] == [i.id for i in expected]
        assert [d.metadata["score"] for d in docs] == pytest.approx([i.score for i in expected])
    with pytest.raises(TypeError, match="revision"):
        ClaraRetriever(model=e2e_model, store=NoRevisionStore(doc_store), hybrid=True)


def test_hybrid_per_call_overrides_the_constructor(e2e_model, doc_store, reference):
    from clara_integrations.pipeline import ClaraPipeline
    from tests.pipeline.conftest import NoRevisionStore

    pipeline = ClaraPipeline(e2e_model, doc_store)
    dense = ClaraRetriever(model=e2e_model, store=doc_store, k=3)
    fused = ClaraRetriever(model=e2e_model, store=doc_store, k=3, hybrid=True)
    differ = 0
    for question in reference["questions"]:
        want_fused = [i.id for i in pipeline.retrieve(question, k=3, hybrid=True)]
        want_dense = [i.id for i in pipeline.retrieve(question, k=3)]
        differ += want_fused != want_dense
        assert [d.id for d in dense.invoke(question, hybrid=True)] == want_fused
        assert [d.id for d in fused.invoke(question, hybrid=False)] == want_dense
        assert [d.id for d in fused.invoke(question)] == want_fused
    assert differ  # the fixture's questions tell the two modes apart
    with pytest.raises(TypeError, match="revision"):  # refused at the call, as in __init__
        ClaraRetriever(model=e2e_model, store=NoRevisionStore(doc_store)).invoke("q", hybrid=True)
    with pytest.raises(TypeError, match="hybrid must be"):
        dense.invoke("q", hybrid="yes")
