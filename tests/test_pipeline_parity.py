"""The same questions through LlamaIndex and LangChain over one store give the same
documents, scores and answers, and the same errors at the same moment: both adapters
only translate `ClaraPipeline`."""

from __future__ import annotations

import pytest
import torch
from langchain_core.documents import Document
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from clara_integrations import MissingAdapterError
from clara_integrations import langchain as lc
from clara_integrations import llama_index as li
from clara_integrations.pipeline import ClaraPipeline
from clara_integrations.store import MemoryStore
from tests.pipeline.conftest import docs_store, load_reference

MAX_NEW_TOKENS = 8  # the fixture's reference generations: greedy, 8 new tokens
SETTINGS = [(2, None), (2, 5), (3, None), (1, 4)]  # (k, candidate_pool)


@pytest.fixture(scope="module")
def reference(fixture_dir) -> dict:
    return load_reference(fixture_dir)


@pytest.fixture(scope="module")
def store(e2e_model, reference):
    """One float32 store both frameworks read (ids doc-<i>, metadata {"i": i})."""
    n = len(reference["docs"])
    return docs_store(
        e2e_model, reference["docs"], [f"doc-{i}" for i in range(n)], [{"i": i} for i in range(n)]
    )


def _li_engine(model, store, k, pool, streaming=False):
    retriever = li.ClaraRetriever(model=model, store=store, similarity_top_k=k, candidate_pool=pool)
    llm = li.ClaraLLM(model=model, max_new_tokens=MAX_NEW_TOKENS)
    return RetrieverQueryEngine(
        retriever=retriever, response_synthesizer=li.ClaraSynthesizer(llm=llm, streaming=streaming)
    )


def _lc_chain(model, store, k, pool):
    retriever = lc.ClaraRetriever(model=model, store=store, k=k, candidate_pool=pool)
    return lc.create_clara_rag_chain(
        retriever, lc.ChatClara(model=model, max_new_tokens=MAX_NEW_TOKENS)
    )


@pytest.mark.parametrize(("k", "pool"), SETTINGS)
def test_same_documents_scores_and_answers(e2e_model, store, reference, k, pool):
    engine, chain = _li_engine(e2e_model, store, k, pool), _lc_chain(e2e_model, store, k, pool)
    for question in reference["questions"]:
        response, out = engine.query(question), chain.invoke(question)
        li_docs = [(n.node.node_id, n.node.text, n.score) for n in response.source_nodes]
        lc_docs = [(d.id, d.page_content, d.metadata["score"]) for d in out["documents"]]
        assert li_docs == lc_docs and len(li_docs) == k  # scores equal to the last bit
        assert response.response == out["answer"]
        direct = ClaraPipeline(e2e_model, store).retrieve(question, k, pool)
        assert [(i.id, i.score) for i in direct] == [(d[0], d[2]) for d in li_docs]


def test_reference_setting_answers_the_reference(e2e_model, store, reference):
    """All documents as candidates, k = generation_top_k: both give the reference outputs."""
    k, n = e2e_model.config.generation_top_k, len(reference["docs"])
    engine, chain = _li_engine(e2e_model, store, k, n), _lc_chain(e2e_model, store, k, n)
    for question, topk, answer in zip(
        reference["questions"], reference["e2e.topk_idx"], reference["e2e.generate_from_questions"]
    ):
        assert [n.node.node_id for n in engine.query(question).source_nodes] == [
            f"doc-{i}" for i in topk
        ]
        assert [d.id for d in chain.invoke(question)["documents"]] == [f"doc-{i}" for i in topk]
        assert engine.query(question).response == chain.invoke(question)["answer"] == answer


def test_streamed_answers_agree(e2e_model, store, reference):
    engine = _li_engine(e2e_model, store, 2, None, streaming=True)
    chain = _lc_chain(e2e_model, store, 2, None)
    for question in reference["questions"]:
        li_text = "".join(engine.query(question).response_gen)
        lc_text = "".join(part.get("answer", "") for part in chain.stream(question))
        assert li_text == lc_text == chain.invoke(question)["answer"]


def test_rerankers_agree(e2e_model, reference):
    """LlamaIndex's postprocessor and LangChain's compressor over another retriever's
    (text-only) results: same order, same scores, each text compressed once."""
    li_reranker = li.ClaraReranker(model=e2e_model, top_n=3)
    lc_reranker = lc.ClaraDocumentCompressor(model=e2e_model, top_n=3)
    nodes = [
        NodeWithScore(node=TextNode(id_=f"t{i}", text=t), score=0.0)
        for i, t in enumerate(reference["docs"])
    ]
    docs = [Document(page_content=t, id=f"t{i}") for i, t in enumerate(reference["docs"])]
    for question in reference["questions"]:
        li_out = li_reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(question))
        lc_out = lc_reranker.compress_documents(docs, question)
        assert [(n.node.node_id, n.score) for n in li_out] == [
            (d.id, d.metadata["relevance_score"]) for d in lc_out
        ]
    assert li_reranker.cache.compressed == lc_reranker.pipeline.cache.compressed == len(docs)


def test_same_errors_at_the_same_moment(e2e_model, instruct_model, store):
    """A model without a query reasoner: every retriever and reranker refuses it when
    built, with one message; the embeddings (which also index) refuse its first query."""
    bare = MemoryStore.for_model(instruct_model)
    messages = set()
    for build in (
        lambda: li.ClaraRetriever(model=instruct_model, store=bare),
        lambda: lc.ClaraRetriever(model=instruct_model, store=bare),
        lambda: li.ClaraReranker(model=instruct_model),
        lambda: lc.ClaraDocumentCompressor(model=instruct_model),
        lambda: li.ClaraEmbedding(model=instruct_model).get_query_embedding("Who?"),
        lambda: lc.ClaraEmbeddings(instruct_model).embed_query("Who?"),
    ):
        with pytest.raises(MissingAdapterError, match="query reasoner") as info:
            build()
        messages.add(str(info.value))
    assert len(messages) == 1
    empty = set()
    for ask in (
        lambda: li.ClaraRetriever(model=e2e_model, store=store).retrieve("  "),
        lambda: lc.ClaraRetriever(model=e2e_model, store=store).invoke("  "),
        lambda: lc.ChatClara(model=e2e_model).invoke("  ", documents=[Document(page_content="x")]),
        lambda: li.ClaraLLM(model=e2e_model).complete(
            "  ", memory=torch.zeros(1, e2e_model.n_mem, e2e_model.hidden_size)
        ),
    ):
        with pytest.raises(ValueError) as info:
            ask()
        empty.add(str(info.value))
    assert len(empty) == 1
