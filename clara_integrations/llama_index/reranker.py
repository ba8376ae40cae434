"""`ClaraReranker`: rerank any retriever's nodes with CLaRa's query reasoner."""
from __future__ import annotations

import logging
from typing import Any

import torch
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..modeling.assets import default_model
from ._context import register_nodes
from ._memory import (
    MemoryCache,
    model_lock,
    node_memory,
    node_text,
    query_text,
    require_query_reasoner,
    with_memory,
)

__all__ = ["ClaraReranker"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)


class ClaraReranker(BaseNodePostprocessor):
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

    _model: Any = PrivateAttr()
    _cache: MemoryCache = PrivateAttr()

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = default_model() if model is None else model
        require_query_reasoner(model, "ClaraReranker")
        self._model = model
        self._cache = MemoryCache(model, max_items=self.cache_size)

    @classmethod
    def class_name(cls) -> str:
        return "ClaraReranker"

    @property
    def cache(self) -> MemoryCache:
        """The memory cache of compressed node texts."""
        return self._cache

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query = query_text(query_bundle, "ClaraReranker")
        model = self._model
        model_name = str(model.config.decoder_model_name)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n,
                                          model_name=model_name))
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={EventPayload.NODES: nodes, EventPayload.MODEL_NAME: model_name,
                     EventPayload.QUERY_STR: query, EventPayload.TOP_K: self.top_n},
        ) as event:
            rows = [node_memory(n, model) for n in nodes]
            missing = [i for i, r in enumerate(rows) if r is None]
            if missing:
                for i, memory in zip(missing, self._cache.get([node_text(nodes[i].node) for i in missing])):
                    rows[i] = memory
            candidates = torch.stack([r.float() for r in rows]).unsqueeze(0)  # (1, N, n_mem, H)
            candidates = candidates.to(model.device, model.dtype)
            with model_lock(model):
                q = model.encode_queries([query])
                _, topk_idx, cosine = model.select(q, candidates, min(self.top_n, len(nodes)))
            order = topk_idx[0].tolist()
            out = [NodeWithScore(node=with_memory(nodes[i].node, rows[i]), score=float(cosine[0, i]))
                   for i in order]
            # Lets ClaraLLM answer from memory behind LlamaIndex's text synthesizers.
            register_nodes(model.model_identity, out, [rows[i] for i in order])
            event.on_end(payload={EventPayload.NODES: out})
        logger.debug("ClaraReranker: %d -> %d nodes (%d compressed)", len(nodes), len(out), len(missing))
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out
