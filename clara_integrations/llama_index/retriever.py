"""`ClaraRetriever`: the query reasoner searches a MemoryStore; nodes carry their memory."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import torch
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from ..modeling.assets import default_model
from ..pipeline import ClaraPipeline
from ._context import register_nodes
from ._filters import to_store_filters
from ._memory import item_to_node, query_text
from ._provenance import refuse_foreign
from .vector_store import ClaraVectorStore

__all__ = ["ClaraRetriever"]


class ClaraRetriever(BaseRetriever):
    """Retrieve from a CLaRa `MemoryStore` with the model's query reasoner.

    The question is encoded by the query reasoner into one ``n_mem * H`` vector and the
    store ranks documents by cosine with their flattened memory. With ``candidate_pool=N``
    the store returns N candidates and the differentiable top-k selector (forward pass:
    exact top-k of the reference's cosine scores) keeps ``similarity_top_k`` of them, as
    the reference ``generate_from_questions`` does over its candidates.

    Each result is a `NodeWithScore` with the node's text and metadata, the cosine score,
    and the node's memory in ``node.embedding`` (flattened ``[n_mem, H]``), which
    `ClaraSynthesizer` hands to `ClaraLLM`. `ClaraLLM` also answers from that memory
    behind LlamaIndex's default text synthesizers (it recognises the returned nodes, even
    with ``attach_memory=False``). Any other LLM reads the text.

    Args:
        model: a `ClaraModel` with a query reasoner.
        store: a `MemoryStore` built with the same compressor (or a `ClaraVectorStore`,
            whose MemoryStore is used).
        similarity_top_k: documents returned.
        candidate_pool: search this many, then select `similarity_top_k` with the
            differentiable top-k (None: return the store's top `similarity_top_k`).
        filters: metadata filter, a store filter dict (``{"source": "a.pdf"}``) or
            LlamaIndex `MetadataFilters` (AND of ==, !=, in, nin, any, contains).
        attach_memory: put each node's memory in ``node.embedding`` (turn off when only
            text LLMs consume the nodes, to keep them small).
        hybrid: fuse the query reasoner's ranking with BM25's over the store's texts
            (reciprocal rank, `ClaraPipeline.retrieve`); scores are then fused scores and
            every node still carries its stored memory. Needs a `MemoryStore`.
        callback_manager, verbose: as every LlamaIndex retriever.

    Raises:
        StoreMismatchError: the store holds another model's memory (identity, n_mem or H).
        MissingAdapterError: the model has no query reasoner.
        ValueError: bad `similarity_top_k` / `candidate_pool` / filters; at query time,
            an empty query.
        TypeError: ``hybrid=True`` with a store that cannot keep a BM25 index current.

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore.for_model(model)                              # doctest: +SKIP
        >>> store.add_documents(["Paris is the capital of France."], model)   # doctest: +SKIP
        >>> retriever = ClaraRetriever(model=model, store=store, similarity_top_k=1)  # doctest: +SKIP
        >>> [n.node.text for n in retriever.retrieve("Capital of France?")]  # doctest: +SKIP
        ['Paris is the capital of France.']
    """

    def __init__(
        self,
        model: Any = None,
        store: Any = None,
        similarity_top_k: int = 5,
        candidate_pool: int | None = None,
        filters: MetadataFilters | Mapping[str, Any] | None = None,
        attach_memory: bool = True,
        hybrid: bool = False,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if (
            isinstance(similarity_top_k, bool)
            or not isinstance(similarity_top_k, int)
            or similarity_top_k < 1
        ):
            raise ValueError(
                f"similarity_top_k must be a positive integer, got {similarity_top_k!r}"
            )
        if candidate_pool is not None and (
            isinstance(candidate_pool, bool)
            or not isinstance(candidate_pool, int)
            or candidate_pool < similarity_top_k
        ):
            raise ValueError(
                f"candidate_pool must be an integer >= similarity_top_k ({similarity_top_k}), "
                f"got {candidate_pool!r}"
            )
        if store is None:
            raise TypeError("ClaraRetriever needs store= (a MemoryStore or ClaraVectorStore)")
        model = default_model() if model is None else model
        if isinstance(store, ClaraVectorStore):
            store = store.client  # the same MemoryStore, searched directly
        self._pipeline = ClaraPipeline(model, store)  # StoreMismatchError names both fingerprints
        self._pipeline.require_query_reasoner()
        self.similarity_top_k = similarity_top_k
        self.candidate_pool = candidate_pool
        self._filters = to_store_filters(filters)
        self.attach_memory = attach_memory
        self.hybrid = bool(hybrid)
        if self.hybrid:
            self._pipeline.store_bm25()  # refuse a store without a revision now
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def model(self) -> Any:
        """The `ClaraModel` that encodes queries."""
        return self._pipeline.model

    @property
    def store(self) -> Any:
        """The `MemoryStore` searched."""
        return self._pipeline.store

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        items = self._pipeline.retrieve(
            query_text(query_bundle),
            self.similarity_top_k,
            self.candidate_pool,
            self._filters,
            hybrid=self.hybrid,
            query_vector=self._bundle_vector(query_bundle),
        )
        out = [
            NodeWithScore(node=item_to_node(i, self.attach_memory), score=i.score) for i in items
        ]
        # Lets ClaraLLM answer from memory behind LlamaIndex's text synthesizers.
        register_nodes(self.model.model_identity, out, [i.memory for i in items])
        return out

    def _bundle_vector(self, query_bundle: QueryBundle | str) -> torch.Tensor | None:
        """The query vector a `QueryBundle` asks for, as LlamaIndex's own vector retriever
        reads it: its ``embedding`` if set (e.g. computed by `ClaraEmbedding`), else the
        mean of the query reasoner's vectors of its ``custom_embedding_strs`` (what
        ``HyDEQueryTransform`` sets), else None (the vector of ``query_str``)."""
        if not isinstance(query_bundle, QueryBundle):
            return None
        if query_bundle.embedding is not None:
            refuse_foreign(
                query_bundle.embedding,
                self.model.model_identity,
                "the query bundle's embedding",
                "this retriever",
            )
            return torch.tensor(query_bundle.embedding, dtype=torch.float32)
        strings = query_bundle.custom_embedding_strs
        if not strings:
            return None
        self._pipeline.require_query_reasoner()
        vectors = self.model.encode_queries([query_text(t) for t in strings], show_progress=False)
        return vectors.float().mean(dim=0)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # Torch work runs in a worker thread so the event loop stays free.
        return await asyncio.to_thread(self._retrieve, query_bundle)
