"""ClaraReranker: reranks another retriever's nodes, compresses unseen text once."""

from __future__ import annotations

import pytest
import torch
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from clara_integrations import MissingAdapterError
from clara_integrations.llama_index import ClaraLLM, ClaraReranker, ClaraSynthesizer


class ListRetriever(BaseRetriever):
    """Stands in for BM25 & co.: returns the given texts as nodes, without embeddings."""

    def __init__(self, nodes):
        super().__init__()
        self.nodes = nodes

    def _retrieve(self, query_bundle):
        return [NodeWithScore(node=n, score=1.0) for n in self.nodes]


@pytest.fixture()
def text_nodes(reference):
    return [TextNode(id_=f"t{i}", text=t) for i, t in enumerate(reference["docs"])]


def test_reranks_by_the_query_reasoner_and_caches(e2e_model, reference, text_nodes):
    debug = LlamaDebugHandler()
    reranker = ClaraReranker(model=e2e_model, top_n=2, callback_manager=CallbackManager([debug]))
    for question, topk in zip(reference["questions"], reference["e2e.topk_idx"]):
        out = reranker.postprocess_nodes(
            [NodeWithScore(node=n, score=0.0) for n in text_nodes],
            query_bundle=QueryBundle(question),
        )
        assert [n.node.node_id for n in out] == [f"t{i}" for i in topk]
        assert out[0].score >= out[1].score
    assert reranker.cache.compressed == len(text_nodes)  # second question: all cache hits
    assert all(n.embedding is None for n in text_nodes)  # inputs untouched
    assert debug.get_event_pairs(CBEventType.RERANKING)
    memory = e2e_model.compress_documents([reference["docs"][int(out[0].node.node_id[1:])]])
    torch.testing.assert_close(torch.tensor(out[0].node.embedding), memory.flatten().float())


def test_uses_memory_already_on_nodes(e2e_model, reference, doc_memory, text_nodes):
    reranker = ClaraReranker(model=e2e_model, top_n=5)
    carried = [
        NodeWithScore(node=n.model_copy(update={"embedding": m.flatten().tolist()}))
        for n, m in zip(text_nodes, doc_memory)
    ]
    out = reranker.postprocess_nodes(carried, query_str=reference["questions"][0])
    assert len(out) == 5 and reranker.cache.compressed == 0


def test_bm25_style_pipeline_answers_from_memory(e2e_model, reference, text_nodes):
    llm = ClaraLLM(model=e2e_model, max_new_tokens=8)
    engine = RetrieverQueryEngine.from_args(
        ListRetriever(text_nodes),
        llm=llm,
        node_postprocessors=[ClaraReranker(model=e2e_model, top_n=2)],
        response_synthesizer=ClaraSynthesizer(llm=llm, compress_missing=False),
    )
    response = engine.query(reference["questions"][1])
    assert [n.node.node_id for n in response.source_nodes] == [
        f"t{i}" for i in reference["e2e.topk_idx"][1]
    ]
    assert response.response == reference["e2e.generate_from_questions"][1]


def test_errors(e2e_model, instruct_model, text_nodes):
    with pytest.raises(MissingAdapterError):
        ClaraReranker(model=instruct_model)
    reranker = ClaraReranker(model=e2e_model)
    with pytest.raises(ValueError, match="empty query"):
        reranker.postprocess_nodes([NodeWithScore(node=text_nodes[0])])
    assert reranker.postprocess_nodes([], query_str="q?") == []
