"""ClaraEmbedding + ClaraVectorStore inside VectorStoreIndex, and CLaRa memory in
another LlamaIndex vector store (SimpleVectorStore)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from clara_integrations.llama_index import (
    ClaraEmbedding,
    ClaraLLM,
    ClaraRetriever,
    ClaraSynthesizer,
    ClaraVectorStore,
)
from clara_integrations.store import MemoryStore, StoreMismatchError
from tests.llama_index.conftest import REFERENCE_MAX_NEW_TOKENS, documents


@pytest.fixture(scope="module")
def embed(e2e_model):
    return ClaraEmbedding(model=e2e_model)


@pytest.fixture()
def index(e2e_model, embed, reference):
    vector_store = ClaraVectorStore(model=e2e_model, dtype=torch.float32)
    return VectorStoreIndex.from_documents(
        documents(reference),
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=embed,
    )


@pytest.fixture(params=["memory", "milvus"])
def any_index(request, e2e_model, embed, reference, tmp_path):
    """The index on each store backend: `MemoryStore`, and `MilvusMemoryStore` (Milvus Lite)."""
    if request.param == "memory":
        vector_store = ClaraVectorStore(model=e2e_model, dtype=torch.float32)
    else:
        pytest.importorskip("milvus_lite")
        from clara_integrations.store import MilvusMemoryStore

        store = MilvusMemoryStore.for_model(
            e2e_model, str(tmp_path / "clara.db"), dtype=torch.float32
        )
        vector_store = ClaraVectorStore(store=store, model=e2e_model)
    with vector_store:
        yield VectorStoreIndex.from_documents(
            documents(reference),
            storage_context=StorageContext.from_defaults(vector_store=vector_store),
            embed_model=embed,
        )


def reference_engine(index, model, **synth_kwargs):
    llm = ClaraLLM(model=model, max_new_tokens=REFERENCE_MAX_NEW_TOKENS)
    return index.as_query_engine(
        llm=llm,
        similarity_top_k=model.config.generation_top_k,
        response_synthesizer=ClaraSynthesizer(llm=llm, **synth_kwargs),
    )


def ranks(response) -> list[int]:
    return [n.node.metadata["i"] for n in response.source_nodes]


def test_embedding_is_memory_and_query_vector(e2e_model, embed, reference, doc_memory):
    torch.testing.assert_close(
        torch.tensor(embed.get_text_embedding(reference["docs"][0])), doc_memory[0].flatten()
    )
    batch = embed.get_text_embedding_batch(reference["docs"][:3])
    torch.testing.assert_close(torch.tensor(batch), doc_memory[:3].flatten(1))
    q = embed.get_query_embedding(reference["questions"][0])
    torch.testing.assert_close(
        torch.tensor(q), e2e_model.encode_queries(reference["questions"][:1])[0]
    )
    assert asyncio.run(embed.aget_query_embedding(reference["questions"][0])) == q
    with pytest.raises(ValueError, match="empty query"):
        embed.get_query_embedding(" ")


def test_index_answers_from_stored_memory(any_index, e2e_model, reference, doc_memory):
    index = any_index
    engine = reference_engine(index, e2e_model, compress_missing=False)
    for question, answer, topk in zip(
        reference["questions"], reference["e2e.generate_from_questions"], reference["e2e.topk_idx"]
    ):
        response = engine.query(question)
        assert ranks(response) == topk
        assert response.response == answer
        node = response.source_nodes[0].node
        assert node.ref_doc_id == f"doc-{topk[0]}"
        assert torch.equal(
            torch.tensor(node.embedding).reshape(doc_memory[0].shape), doc_memory[topk[0]]
        )


def test_filters_delete_upsert_and_get(any_index, e2e_model, reference):
    index = any_index
    vector_store = index.vector_store
    question = reference["questions"][1]
    only_first = MetadataFilters(filters=[MetadataFilter(key="half", value="first")])
    got = index.as_retriever(similarity_top_k=5, filters=only_first).retrieve(question)
    assert sorted(n.node.metadata["i"] for n in got) == [0, 1]
    assert sorted(n.metadata["i"] for n in vector_store.get_nodes(filters=only_first)) == [0, 1]

    index.delete_ref_doc("doc-3")
    assert len(vector_store.client) == 4
    assert 3 not in [
        n.node.metadata["i"] for n in index.as_retriever(similarity_top_k=5).retrieve(question)
    ]

    node = vector_store.get_nodes(
        filters=MetadataFilters(filters=[MetadataFilter(key="i", value=4)])
    )[0]
    node.text = "Python is a snake."
    vector_store.add([node])  # same id: replaced, not duplicated
    assert len(vector_store.client) == 4
    assert vector_store.get_nodes(node_ids=[node.node_id])[0].text == "Python is a snake."

    vector_store.delete_nodes(node_ids=[node.node_id])
    assert len(vector_store.client) == 3
    vector_store.clear()
    assert len(vector_store.client) == 0
    assert index.as_retriever().retrieve(question) == []


def test_persist_and_reload(index, e2e_model, embed, reference, tmp_path):
    question = reference["questions"][0]
    before = [
        (n.node.node_id, n.score) for n in index.as_retriever(similarity_top_k=3).retrieve(question)
    ]
    index.storage_context.persist(persist_dir=tmp_path)
    index.vector_store.client.close()  # release the directory's writer lock
    reloaded = ClaraVectorStore.from_persist_dir(tmp_path, model=e2e_model)
    again = VectorStoreIndex.from_vector_store(reloaded, embed_model=embed)
    after = [
        (n.node.node_id, n.score) for n in again.as_retriever(similarity_top_k=3).retrieve(question)
    ]
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-6)
    # The same store also serves ClaraRetriever directly, nodes restored whole.
    nodes = ClaraRetriever(model=e2e_model, store=reloaded.client, similarity_top_k=3).retrieve(
        question
    )
    assert [(n.node.node_id, n.node.ref_doc_id is not None) for n in nodes] == [
        (i, True) for i, _ in before
    ]


def test_vector_store_errors(e2e_model, index):
    vector_store = index.vector_store
    width = e2e_model.n_mem * e2e_model.hidden_size
    with pytest.raises(ValueError, match="no embedding"):
        vector_store.add([TextNode(text="x")])
    with pytest.raises(ValueError, match="n_mem\\*H"):
        vector_store.add([TextNode(text="x", embedding=[0.1] * 3)])
    with pytest.raises(ValueError, match="node_ids"):
        vector_store.query(VectorStoreQuery(query_embedding=[0.1] * width, node_ids=["a"]))
    with pytest.raises(ValueError, match="query modes"):
        vector_store.query(
            VectorStoreQuery(query_embedding=[0.1] * width, mode=VectorStoreQueryMode.SPARSE)
        )
    with pytest.raises(StoreMismatchError):
        ClaraVectorStore(
            store=MemoryStore.for_model(e2e_model, model_identity="clara-other"), model=e2e_model
        )
    with pytest.raises(ValueError, match="needs a MemoryStore"):
        ClaraVectorStore()


def test_memory_in_another_vector_store(e2e_model, embed, reference):
    """SimpleVectorStore keeps CLaRa memory but does not return it with query results:
    memory_lookup reads it back by node id (or the synthesizer recompresses the text)."""
    index = VectorStoreIndex.from_documents(documents(reference), embed_model=embed)
    simple = index.vector_store
    nodes = index.as_retriever(similarity_top_k=2).retrieve(reference["questions"][1])
    assert [n.node.metadata["i"] for n in nodes] == reference["e2e.topk_idx"][1]
    assert all(n.node.embedding is None for n in nodes)  # the requirement SimpleVectorStore misses
    for kwargs in ({"memory_lookup": simple.get, "compress_missing": False}, {}):
        response = reference_engine(index, e2e_model, **kwargs).query(reference["questions"][1])
        assert ranks(response) == reference["e2e.topk_idx"][1]
        assert response.response == reference["e2e.generate_from_questions"][1]
    with pytest.raises(ValueError, match="carry no CLaRa memory"):
        reference_engine(index, e2e_model, compress_missing=False).query(reference["questions"][1])


def test_hybrid_query_mode_is_the_pipelines_fusion(index, e2e_model, reference):
    """`as_retriever(vector_store_query_mode="hybrid")`: dense + BM25 by reciprocal rank."""
    from clara_integrations.pipeline import ClaraPipeline

    retriever = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=3)
    pipeline = ClaraPipeline(e2e_model, index.vector_store.client)
    for question in reference["questions"]:
        nodes = retriever.retrieve(question)
        expected = pipeline.retrieve(question, k=3, hybrid=True)
        assert [n.node.node_id for n in nodes] == [i.id for i in expected]
        assert [n.score for n in nodes] == pytest.approx([i.score for i in expected])
    not_one = MetadataFilters(
        filters=[MetadataFilter(key="i", value=1, operator=FilterOperator.NE)]
    )
    filtered = index.as_retriever(
        vector_store_query_mode="hybrid", similarity_top_k=5, filters=not_one, sparse_top_k=1
    )
    for question in reference["questions"]:
        assert sorted(n.node.metadata["i"] for n in filtered.retrieve(question)) == [0, 2, 3, 4]
    width = e2e_model.n_mem * e2e_model.hidden_size
    hybrid = VectorStoreQueryMode.HYBRID
    with pytest.raises(ValueError, match="alpha"):
        index.vector_store.query(
            VectorStoreQuery(query_embedding=[0.1] * width, query_str="x", mode=hybrid, alpha=0.5)
        )
    with pytest.raises(ValueError, match="query_str"):
        index.vector_store.query(VectorStoreQuery(query_embedding=[0.1] * width, mode=hybrid))


@pytest.fixture(scope="module")
def other_model(e2e_model):
    """The same weights under another compressor identity: what a retrained model looks
    like to a store (same width, other memory)."""
    import copy

    other = copy.deepcopy(e2e_model)
    other._identity = "clara-0000000000000000"
    return other


def test_a_store_loaded_without_model_refuses_another_models_vectors(
    e2e_model, other_model, reference, tmp_path
):
    """``ClaraVectorStore(store=MemoryStore.load(...))`` has no model to check: a query or
    node embedded by ClaraEmbedding of another model used to be ranked or stored without a
    word (same width, wrong space). Vectors ClaraEmbedding made are now recognised."""
    index = VectorStoreIndex.from_documents(
        documents(reference)[:3],
        storage_context=StorageContext.from_defaults(
            vector_store=ClaraVectorStore(model=e2e_model, dtype=torch.float32)
        ),
        embed_model=ClaraEmbedding(model=e2e_model),
    )
    index.vector_store.persist(str(tmp_path / "store"))
    loaded = ClaraVectorStore(store=MemoryStore.load(tmp_path / "store"))  # no model=
    theirs, ours = ClaraEmbedding(model=other_model), ClaraEmbedding(model=e2e_model)
    question = reference["questions"][0]
    with pytest.raises(StoreMismatchError, match="clara-0000000000000000"):
        loaded.query(VectorStoreQuery(query_embedding=theirs.get_query_embedding(question)))
    node = TextNode(text="Paris is in France.", id_="new")
    node.embedding = theirs.get_text_embedding(node.text)
    with pytest.raises(StoreMismatchError, match="node 'new'"):
        loaded.add([node])
    assert len(loaded.client) == 3  # nothing was added
    # The store's own model, and a vector no ClaraEmbedding made, are accepted as before.
    hits = loaded.query(
        VectorStoreQuery(query_embedding=ours.get_query_embedding(question), similarity_top_k=2)
    )
    assert len(hits.ids) == 2
    unknown = [x + 1e-3 for x in theirs.get_query_embedding(question)]
    assert len(loaded.query(VectorStoreQuery(query_embedding=unknown)).ids) == 1
    loaded.client.close()
