"""`ClaraReranker`: rerank any retriever's nodes with CLaRa's query reasoner."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..modeling.assets import default_model
from ..pipeline import ClaraPipeline, CompressionCache
from ._context import register_nodes
from ._memory import node_item, query_text, with_memory
from ._pickle import PicklesWhole

__all__ = ["ClaraReranker"]

dispatcher = get_dispatcher(__name__)


class ClaraReranker(PicklesWhole, BaseNodePostprocessor):
    """Rerank nodes from any retriever (BM25, another vector index, ...) with CLaRa.

    Each node's memory is its ``embedding`` when it already carries CLaRa memory, else its
    text is compressed now and cached by content, so a node is compressed once however
    often it is retrieved. The query reasoner scores the candidates by cosine and the
    differentiable top-k selector (as the reference does) keeps the best ``top_n``. The
    returned nodes carry their memory in ``embedding`` (copies; the inputs are untouched),
    so `ClaraSynthesizer` answers from it without compressing again, and `ClaraLLM` does
    behind a default text synthesizer too (``response_synthesizer`` left out).

    Args:
        model: a `ClaraModel` with a query reasoner.
        top_n: nodes kept.
        cache_size: compressed memories kept (least recently used are evicted).

    Raises:
        MissingAdapterError: the model has no query reasoner.
        ValueError (at query time): no query or an empty one.

    Example:
        >>> from llama_index.retrievers.bm25 import BM25Retriever   # doctest: +SKIP
        >>> engine = RetrieverQueryEngine.from_args(
        ...     BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=20),
        ...     node_postprocessors=[ClaraReranker(model=model, top_n=3)],
        ...     response_synthesizer=ClaraSynthesizer(llm=ClaraLLM(model=model)),
        ... )  # doctest: +SKIP
    """

    top_n: int = Field(default=5, gt=0, description="Nodes kept after reranking.")
    cache_size: int = Field(default=4096, ge=0, description="Compressed memories cached.")

    _pipeline: ClaraPipeline = PrivateAttr()

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = default_model() if model is None else model
        self._pipeline = ClaraPipeline(model, cache_size=self.cache_size)
        self._pipeline.require_query_reasoner()

    @classmethod
    def class_name(cls) -> str:
        return "ClaraReranker"

    @property
    def cache(self) -> CompressionCache:
        """The memory cache of compressed node texts."""
        return self._pipeline.cache

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_text(query_bundle)
        model = self._pipeline.model
        model_name = str(model.config.decoder_model_name)
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=model_name
            )
        )
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: model_name,
                EventPayload.QUERY_STR: query,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            items = self._pipeline.rerank(query, [node_item(n, model) for n in nodes], self.top_n)
            out = [
                NodeWithScore(node=with_memory(i.source, i.memory), score=i.score) for i in items
            ]
            # Lets ClaraLLM answer from memory behind LlamaIndex's text synthesizers.
            register_nodes(model.model_identity, out, [i.memory for i in items])
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out
