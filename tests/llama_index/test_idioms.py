"""LlamaIndex idioms as users write them (issue: chunking, pickling, prompt chains,
reloading, token counting)."""

from __future__ import annotations

import pickle
import warnings

import pytest

from clara_integrations.errors import NotPicklableError
from clara_integrations.llama_index import (
    ClaraEmbedding,
    ClaraLLM,
    ClaraReranker,
    ClaraRetriever,
    ClaraVectorStore,
)


def test_pickled_components_keep_their_model(e2e_model):
    """LlamaIndex's unpickling re-runs __init__ without the model: they came back holding
    the shipped default (hidden size 576 instead of the fixture's 64)."""
    for component in (ClaraEmbedding(model=e2e_model), ClaraLLM(model=e2e_model)):
        again = pickle.loads(pickle.dumps(component))
        assert again.model is e2e_model
    reranker = pickle.loads(pickle.dumps(ClaraReranker(model=e2e_model, top_n=1)))
    assert reranker.top_n == 1 and reranker._pipeline.model is e2e_model


def test_vector_store_and_retriever_pickle_once_persisted(e2e_model, tmp_path):
    vector_store = ClaraVectorStore(model=e2e_model)
    vector_store.client.add_documents(
        ["Paris is in France.", "Rome is in Italy."], e2e_model, ids=["p", "r"], show_progress=False
    )
    with pytest.raises(NotPicklableError, match="persist"):
        pickle.dumps(vector_store)
    vector_store.persist(str(tmp_path / "vs"))
    again = pickle.loads(pickle.dumps(vector_store))
    assert again.client is vector_store.client
    retriever = ClaraRetriever(model=e2e_model, store=vector_store, similarity_top_k=1)
    copy = pickle.loads(pickle.dumps(retriever))
    assert [n.node.node_id for n in copy.retrieve("Italy")] == [
        n.node.node_id for n in retriever.retrieve("Italy")
    ]


@pytest.fixture()
def fresh_model(fixture_dir):
    """A model of its own: the truncation warning is shown once per model."""
    import torch

    from clara_integrations import ClaraModel
    from tests.conftest import TINY_BASE

    return ClaraModel.from_pretrained(
        fixture_dir / "ckpt-e2e", base_model=TINY_BASE, dtype=torch.float32
    )


LONG = " ".join(f"Fact number {i} is that the sky was clear on day {i}." for i in range(60))


def test_default_chunks_are_cut_with_a_warning_clara_chunks_are_not(fresh_model):
    """The default `SentenceSplitter` makes 1,024-token chunks; the tiny compressor reads
    65 tokens. That used to be silent."""
    from llama_index.core import Document, VectorStoreIndex

    from clara_integrations.errors import DocumentTruncatedWarning
    from clara_integrations.llama_index import clara_node_parser

    embed = ClaraEmbedding(model=fresh_model)
    parser = clara_node_parser(fresh_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DocumentTruncatedWarning)  # split right: no warning
        index = VectorStoreIndex.from_documents(
            [Document(text=LONG)], embed_model=embed, transformations=[parser]
        )
    nodes = list(index.docstore.docs.values())
    assert len(nodes) > 5
    assert all(
        len(fresh_model.tokenizer.encode(n.text)) <= fresh_model.max_document_tokens for n in nodes
    )
    with pytest.warns(DocumentTruncatedWarning, match=r"1 of 1 documents .* Split documents"):
        VectorStoreIndex.from_documents([Document(text=LONG)], embed_model=embed)


def test_persist_reload_and_write_again_in_one_process(e2e_model, tmp_path):
    """`load_index_from_storage` with the vector store opened from the same directory;
    closing the first store lets a second object write there (it kept the lock)."""
    from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage

    embed = ClaraEmbedding(model=e2e_model)
    with ClaraVectorStore(model=e2e_model) as vector_store:
        index = VectorStoreIndex.from_documents(
            [Document(text="Paris is in France."), Document(text="Rome is in Italy.")],
            storage_context=StorageContext.from_defaults(vector_store=vector_store),
            embed_model=embed,
        )
        index.storage_context.persist(persist_dir=str(tmp_path))
        before = [n.node.text for n in index.as_retriever(similarity_top_k=1).retrieve("Italy")]
    storage = StorageContext.from_defaults(
        persist_dir=str(tmp_path),
        vector_store=ClaraVectorStore.from_persist_dir(tmp_path, model=e2e_model),
    )
    again = load_index_from_storage(storage, embed_model=embed)
    assert [n.node.text for n in again.as_retriever(similarity_top_k=1).retrieve("Italy")] == before
    again.insert(Document(text="Madrid is in Spain."))
    again.storage_context.persist(persist_dir=str(tmp_path))
    assert len(ClaraVectorStore.from_persist_dir(tmp_path, model=e2e_model).client) == 3


def test_complete_reads_memory_of_document_texts(e2e_model):
    llm = ClaraLLM(model=e2e_model, max_new_tokens=4)
    text = "Paris is the capital of France."
    from_text = llm.complete("Capital of France?", memory=[text])
    from_tensor = llm.complete("Capital of France?", memory=e2e_model.compress_documents([text]))
    assert from_text.text == from_tensor.text
    with pytest.raises(ValueError, match="empty"):
        llm.complete("")


def test_mmr_query_mode_as_langchain_has_it(e2e_model):
    """`as_retriever(vector_store_query_mode="mmr")` was refused."""
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    texts = [
        "Paris is in France.",
        "Paris is in France!",
        "Rome is in Italy.",
        "Oslo is in Norway.",
    ]
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in texts],
        storage_context=StorageContext.from_defaults(
            vector_store=ClaraVectorStore(model=e2e_model)
        ),
        embed_model=ClaraEmbedding(model=e2e_model),
    )
    dense = index.as_retriever(similarity_top_k=2).retrieve("Paris France")
    diverse = index.as_retriever(
        similarity_top_k=2,
        vector_store_query_mode="mmr",
        vector_store_kwargs={"mmr_threshold": 0.0},
    ).retrieve("Paris France")
    assert len(diverse) == 2 and diverse[0].node.text == dense[0].node.text
    texts_of = lambda nodes: {n.node.text for n in nodes}  # noqa: E731
    # threshold 0: pure diversity after the first pick, so the near-duplicate is not second
    assert texts_of(diverse) != {"Paris is in France.", "Paris is in France!"}
