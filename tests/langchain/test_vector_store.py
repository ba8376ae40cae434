"""ClaraVectorStore: CLaRa memory behind LangChain's VectorStore interface."""

from __future__ import annotations

import pytest
import torch
from langchain_core.embeddings import DeterministicFakeEmbedding

from clara_integrations.langchain import (
    ChatClara,
    ClaraEmbeddings,
    ClaraVectorStore,
    create_clara_rag_chain,
)
from clara_integrations.store import MemoryStore, StoreMismatchError


@pytest.fixture
def vs(e2e_model, reference):
    return ClaraVectorStore.from_texts(
        reference["docs"],
        ClaraEmbeddings(e2e_model),
        metadatas=[{"topic": "plants"}] * 3 + [{"topic": "other"}] * 2,
        ids=[str(i) for i in range(5)],
        dtype=torch.float32,
    )


def test_search_ranks_by_the_query_reasoner(vs, reference):
    for i, question in enumerate(reference["questions"]):
        hits = vs.similarity_search_with_score(question, k=2)
        assert [int(d.id) for d, _ in hits] == reference["e2e.topk_idx"][i]
        assert [d.page_content for d, _ in hits] == [
            reference["docs"][j] for j in reference["e2e.topk_idx"][i]
        ]
        assert hits[0][1] >= hits[1][1] and -1 <= hits[1][1] <= 1
        assert [d.id for d in vs.similarity_search(question, k=2)] == [d.id for d, _ in hits]
    relevance = vs.similarity_search_with_relevance_scores(reference["questions"][0], k=5)
    assert all(0 <= r <= 1 for _, r in relevance)
    assert {
        d.metadata["topic"]
        for d in vs.similarity_search(reference["questions"][1], k=5, filter={"topic": "plants"})
    } == {"plants"}
    vector = vs.embeddings.embed_query(reference["questions"][0])
    assert [d.id for d in vs.similarity_search_by_vector(vector, k=2)] == ["3", "1"]


def test_embeddings_are_clara_vectors(vs, e2e_model, reference):
    emb = vs.embeddings
    flat = torch.tensor(emb.embed_documents(reference["docs"][:2]))
    torch.testing.assert_close(flat, e2e_model.compress_documents(reference["docs"][:2]).flatten(1))
    assert len(emb.embed_query("q?")) == e2e_model.n_mem * e2e_model.hidden_size
    torch.testing.assert_close(
        vs.store.get_memories(["0"]), e2e_model.compress_documents(reference["docs"][:1])
    )


def test_add_upsert_delete_get(vs, e2e_model):
    ids = vs.add_texts(["Lyon is a city in France."], [{"topic": "cities"}])
    assert len(ids) == 1 and len(vs.store) == 6
    vs.add_texts(["Lyon is on the Rhône."], [{"topic": "rivers"}], ids=ids)  # upsert
    assert len(vs.store) == 6
    (doc,) = vs.get_by_ids(ids)
    assert doc.page_content == "Lyon is on the Rhône." and doc.metadata == {"topic": "rivers"}
    torch.testing.assert_close(
        vs.store.get_memories(ids), e2e_model.compress_documents(["Lyon is on the Rhône."])
    )
    assert vs.delete(ids + ["never-there"]) is True
    assert vs.get_by_ids(ids) == [] and len(vs.store) == 5
    with pytest.raises(ValueError, match="empty"):
        vs.add_texts([""])
    with pytest.raises(ValueError, match="duplicates"):
        vs.add_texts(["a", "b"], ids=["x", "x"])
    with pytest.raises(ValueError):
        vs.delete()


def test_mmr_returns_diverse_documents(vs, reference):
    docs = vs.max_marginal_relevance_search(reference["questions"][0], k=3, fetch_k=5)
    assert len({d.id for d in docs}) == 3
    assert docs[0].id == str(reference["e2e.topk_idx"][0][0])


def test_as_retriever_feeds_chatclara_stored_memory(vs, e2e_model, reference, monkeypatch):
    chain = create_clara_rag_chain(
        vs.as_retriever(search_kwargs={"k": 2}), ChatClara(model=e2e_model, max_new_tokens=8)
    )
    question = reference["questions"][0]

    def no_compression(*args, **kwargs):
        raise AssertionError("stored documents must not be compressed again")

    monkeypatch.setattr(e2e_model, "compress_documents", no_compression)
    out = chain.invoke(question)
    assert out["answer"] == reference["e2e.generate_from_questions"][0]
    assert [d.id for d in out["documents"]] == ["3", "1"]


def test_wrong_embeddings_and_mismatched_store(e2e_model):
    with pytest.raises(TypeError, match="ClaraEmbeddings"):
        ClaraVectorStore.from_texts(["a"], DeterministicFakeEmbedding(size=6))
    with pytest.raises(StoreMismatchError, match="n_mem=2"):
        ClaraVectorStore(model=e2e_model, store=MemoryStore(n_mem=2, hidden_size=64))
    with pytest.raises(TypeError, match="new store"):
        ClaraVectorStore(
            model=e2e_model, store=MemoryStore.for_model(e2e_model), dtype=torch.float32
        )
    empty = ClaraVectorStore(model=e2e_model)
    assert empty.similarity_search("anything") == []
