"""ClaraDocumentCompressor: reranks any retriever's documents by the query reasoner."""

from __future__ import annotations

import asyncio

import pytest
import torch
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever

from clara_integrations.langchain import ClaraDocumentCompressor, create_clara_rag_chain
from clara_integrations.langchain.chain import _find_store
from clara_integrations.store import MemoryStore, StoreMismatchError


class KeywordRetriever(BaseRetriever):
    """A stand-in for BM25 & co: returns every document, in the order given."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun):
        return list(self.docs)


class RerankingRetriever(BaseRetriever):
    """What langchain's ContextualCompressionRetriever does: base retriever, then compressor."""

    base_retriever: BaseRetriever
    base_compressor: BaseDocumentCompressor

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun):
        docs = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        return list(
            self.base_compressor.compress_documents(docs, query, callbacks=run_manager.get_child())
        )


def test_reranks_like_the_reference_selector(e2e_model, reference):
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(reference["docs"])]
    reranker = ClaraDocumentCompressor(model=e2e_model, top_n=2)
    for i, question in enumerate(reference["questions"]):
        out = reranker.compress_documents(docs, question)
        assert [d.metadata["i"] for d in out] == reference["e2e.topk_idx"][i]
        scores = [d.metadata["relevance_score"] for d in out]
        assert scores == sorted(scores, reverse=True)
    assert docs[0].metadata == {"i": 0}, "input documents must not be mutated"
    everything = ClaraDocumentCompressor(model=e2e_model, top_n=None).compress_documents(
        docs, "Python?"
    )
    assert sorted(d.metadata["i"] for d in everything) == list(range(5))


def test_uses_stored_memory_for_store_ids(e2e_model, doc_store, reference, monkeypatch):
    reranker = ClaraDocumentCompressor(model=e2e_model, store=doc_store, top_n=2)
    stored = doc_store.get_nodes([str(i) for i in range(5)])
    docs = [Document(page_content=n.text, id=n.id) for n in stored]  # as a retriever returns

    def no_compression(*args, **kwargs):
        raise AssertionError("stored documents must not be compressed again")

    monkeypatch.setattr(e2e_model, "compress_documents", no_compression)
    out = reranker.compress_documents(docs, reference["questions"][1])
    assert [int(d.id) for d in out] == reference["e2e.topk_idx"][1]


def test_in_a_compression_retriever_and_chain(e2e_model, reference):
    base = KeywordRetriever(
        docs=[Document(page_content=t, id=f"kw-{i}") for i, t in enumerate(reference["docs"])]
    )
    retriever = RerankingRetriever(
        base_retriever=base, base_compressor=ClaraDocumentCompressor(model=e2e_model, top_n=2)
    )
    question = reference["questions"][0]
    docs = retriever.invoke(question)
    assert [d.id for d in docs] == [f"kw-{i}" for i in reference["e2e.topk_idx"][0]]
    assert asyncio.run(retriever.base_compressor.acompress_documents(base.docs, question)) == docs
    assert _find_store(retriever) is None  # documents are then compressed from text
    from clara_integrations.langchain import ChatClara

    out = create_clara_rag_chain(retriever, ChatClara(model=e2e_model, max_new_tokens=8)).invoke(
        question
    )
    assert out["answer"] == reference["e2e.generate_from_questions"][0]


def test_in_langchains_contextual_compression_retriever(e2e_model, reference):
    """The real thing (package langchain-classic, a dev dependency)."""
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = KeywordRetriever(
        docs=[Document(page_content=t, id=f"kw-{i}") for i, t in enumerate(reference["docs"])]
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=ClaraDocumentCompressor(model=e2e_model, top_n=2), base_retriever=base
    )
    for i, question in enumerate(reference["questions"]):
        assert [d.id for d in retriever.invoke(question)] == [
            f"kw-{j}" for j in reference["e2e.topk_idx"][i]
        ]


def test_bad_input(e2e_model):
    reranker = ClaraDocumentCompressor(model=e2e_model)
    assert reranker.compress_documents([], "question") == []
    with pytest.raises(ValueError, match="query is empty"):
        reranker.compress_documents([Document(page_content="a")], "")
    with pytest.raises(ValueError, match="empty page_content"):
        reranker.compress_documents([Document(page_content="")], "question")
    with pytest.raises(StoreMismatchError):
        ClaraDocumentCompressor(model=e2e_model, store=MemoryStore(n_mem=1, hidden_size=64))
    with pytest.raises(ValueError):
        ClaraDocumentCompressor(model=e2e_model, top_n=0)


def test_scores_are_cosines(e2e_model, reference):
    docs = [Document(page_content=t) for t in reference["docs"]]
    out = ClaraDocumentCompressor(model=e2e_model, top_n=5).compress_documents(
        docs, reference["questions"][0]
    )
    q = e2e_model.encode_queries([reference["questions"][0]])
    memory = e2e_model.compress_documents(reference["docs"]).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(q, memory)
    for doc in out:
        i = reference["docs"].index(doc.page_content)
        assert doc.metadata["relevance_score"] == pytest.approx(float(cosine[i]), abs=1e-5)
