"""`ClaraVectorStore`: the CLaRa `MemoryStore` behind LlamaIndex's vector-store interface."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import node_to_metadata_dict

from ..pipeline import HYBRID_DEPTH, Item, StoreBM25, fuse_rankings, search_store, upsert_store
from ..store import MemoryStore, MemoryStoreProtocol
from ..store.closing import ClosesStore
from ._context import register_nodes
from ._filters import to_store_filters
from ._memory import item_to_node
from ._pickle import PicklesWhole
from ._provenance import refuse_foreign

__all__ = ["ClaraVectorStore"]

logger = logging.getLogger(__name__)


class ClaraVectorStore(ClosesStore, PicklesWhole, BasePydanticVectorStore):
    """LlamaIndex vector store over a CLaRa `MemoryStore` (nodes + memory + FAISS).

    Node embeddings must be CLaRa memory, i.e. come from `ClaraEmbedding` of the model
    the store belongs to. The store keeps each node's text and its serialised node
    (relationships, metadata settings) and returns nodes with their memory in
    ``node.embedding``, so `ClaraSynthesizer` answers from stored memory, and so does
    `ClaraLLM` behind ``index.as_query_engine(llm=ClaraLLM(model))``'s default synthesizer.

    Args:
        store: an existing `MemoryStore` (e.g. ``MemoryStore.load(path)``) or
            `MilvusMemoryStore` (memories in Milvus; `persist` then has nothing to do), or None to
            create one for `model`.
        model: the `ClaraModel`; checked against `store` (identity, n_mem, H), or used to
            shape a new one.
        **store_kwargs: `MemoryStore` options for a new store (``dtype``, ``index``...).

    Raises:
        StoreMismatchError: `store` holds another model's memory (also raised by `add` and
            `query` for vectors a `ClaraEmbedding` of another model made, so a store
            loaded without ``model=`` is checked too).
        ValueError: neither `store` nor `model` given.

    Example:
        >>> from llama_index.core import StorageContext, VectorStoreIndex
        >>> vector_store = ClaraVectorStore(model=model)                    # doctest: +SKIP
        >>> index = VectorStoreIndex.from_documents(
        ...     docs, storage_context=StorageContext.from_defaults(vector_store=vector_store),
        ...     embed_model=ClaraEmbedding(model=model))                    # doctest: +SKIP
        >>> engine = index.as_query_engine(llm=ClaraLLM(model=model), similarity_top_k=2)  # doctest: +SKIP
        >>> engine.query("Who is the Eiffel Tower named after?")  # answered from memory  # doctest: +SKIP
        >>> vector_store.persist("storage/default__vector_store")           # doctest: +SKIP
        >>> again = ClaraVectorStore.from_persist_dir("storage", model=model)  # doctest: +SKIP
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False

    _store: MemoryStoreProtocol = PrivateAttr()
    _lexical: StoreBM25 | None = PrivateAttr(default=None)  # built by the first hybrid query

    def __init__(
        self, store: MemoryStoreProtocol | None = None, model: Any = None, **store_kwargs: Any
    ) -> None:
        super().__init__()
        if store is None:
            if model is None:
                raise ValueError(
                    "ClaraVectorStore needs a MemoryStore (store=) or a ClaraModel (model=)"
                )
            store = MemoryStore.for_model(model, **store_kwargs)
        elif store_kwargs:
            raise ValueError(
                f"store options {sorted(store_kwargs)} apply only when creating a new store"
            )
        if model is not None:
            store.check_model(model)
        self._store = store

    @classmethod
    def class_name(cls) -> str:
        return "ClaraVectorStore"

    @property
    def client(self) -> MemoryStoreProtocol:
        """The underlying store (usable directly by `ClaraRetriever`)."""
        return self._store

    # ------------------------------------------------------------------ writing
    def _memories(self, nodes: list[BaseNode]) -> torch.Tensor:
        cfg = self._store.config
        for node in nodes:
            if node.embedding is None:
                raise ValueError(
                    f"node {node.node_id!r} has no embedding; build the index with "
                    "embed_model=ClaraEmbedding(model)"
                )
            if len(node.embedding) != cfg.dim:
                raise ValueError(
                    f"node {node.node_id!r} has a {len(node.embedding)}-dim embedding but this store "
                    f"holds CLaRa memory of n_mem*H = {cfg.dim} (fingerprint {self._store.fingerprint}); "
                    "embed with ClaraEmbedding of the store's model"
                )
        for node in nodes:
            refuse_foreign(
                node.embedding,
                self._store.config.model_identity,
                f"node {node.node_id!r}'s memory",
                "this store's memory",
            )
        flat = torch.tensor([node.embedding for node in nodes], dtype=torch.float32)
        return flat.reshape(len(nodes), cfg.n_mem, cfg.hidden_size)

    def add(self, nodes: list[BaseNode], **add_kwargs: Any) -> list[str]:
        """Add (or replace, by node id) nodes whose embeddings are CLaRa memory."""
        if not nodes:
            return []
        memories = self._memories(nodes)
        texts = [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes]
        metadata = [
            node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
            for node in nodes
        ]
        ids = [node.node_id for node in nodes]
        # LlamaIndex re-inserts changed nodes under their id: upsert
        upsert_store(self._store, ids, memories, texts, metadata)
        return ids

    def _ids_where(self, filters: dict[str, Any] | None) -> list[str]:
        """Ids of all live nodes matching `filters` (store filter syntax)."""
        return self._store.ids_where(filters)

    def _select(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> list[str]:
        if node_ids is None and filters is None:
            raise ValueError("give node_ids and/or filters")
        ids = None if node_ids is None else [i for i in dict.fromkeys(node_ids) if i in self._store]
        if filters is not None:
            matching = set(self._ids_where(to_store_filters(filters)))
            ids = [i for i in ids if i in matching] if ids is not None else sorted(matching)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document `ref_doc_id`."""
        ids = self._ids_where({"ref_doc_id": ref_doc_id})
        if ids:
            self._store.delete(ids, missing_ok=True)

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        ids = self._select(node_ids, filters)
        if ids:
            self._store.delete(ids, missing_ok=True)

    def clear(self) -> None:
        ids = self._ids_where(None)
        if ids:
            self._store.delete(ids, missing_ok=True)

    # ------------------------------------------------------------------ reading
    def get_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
    ) -> list[BaseNode]:
        """Stored nodes (with their memory in ``embedding``) by id and/or filter."""
        ids = self._select(node_ids, filters)
        if not ids:
            return []
        records, memories = self._store.get_nodes_with_memories(ids)
        return [
            item_to_node(Item(r.id, r.text, r.metadata, memory=m))
            for r, m in zip(records, memories)
        ]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top ``similarity_top_k`` nodes by cosine with ``query_embedding`` (a
        `ClaraEmbedding` query vector), with ``filters`` and ``doc_ids`` applied first.

        ``mode=MMR`` (``as_retriever(vector_store_query_mode="mmr")``) re-ranks the best
        ``similarity_top_k * mmr_prefetch_factor`` (default 4) by maximal marginal
        relevance over their memories (LlamaIndex's own MMR, ``mmr_threshold`` as
        there); the similarities returned are still the cosines.

        ``mode=HYBRID`` (``as_retriever(vector_store_query_mode="hybrid")``) fuses the
        store's cosine ranking with BM25's over the stored texts by reciprocal rank, as
        ``ClaraRetriever(hybrid=True)`` does (the same ranking on an exact store):
        ``hybrid_top_k`` results if set, else ``similarity_top_k``; each side's top
        ``4 * k``, BM25's ``sparse_top_k`` if set. The similarities returned are the fused
        scores (about 0.03 at most: not for cosine cutoffs). ``alpha`` (a weight for
        score-blending stores) has no meaning for rank fusion: refused."""
        modes = (
            VectorStoreQueryMode.DEFAULT,
            VectorStoreQueryMode.MMR,
            VectorStoreQueryMode.HYBRID,
        )
        if query.mode not in modes:
            raise ValueError(
                "ClaraVectorStore supports the default (dense), mmr and hybrid query modes, "
                f"got {query.mode.value!r}"
            )
        if query.query_embedding is None:
            raise ValueError("query_embedding is required; use embed_model=ClaraEmbedding(model)")
        if query.node_ids:
            raise ValueError(
                "ClaraVectorStore cannot restrict a query to node_ids; filter on metadata instead"
            )
        filters = to_store_filters(query.filters) or {}
        if query.doc_ids:
            if "ref_doc_id" in filters:
                raise ValueError("give doc_ids or a ref_doc_id filter, not both")
            filters["ref_doc_id"] = {"$in": list(query.doc_ids)}
        refuse_foreign(
            query.query_embedding,
            self._store.config.model_identity,
            "the query vector",
            "this store's memory",
        )
        q = torch.tensor(query.query_embedding, dtype=torch.float32).unsqueeze(0)
        k = query.similarity_top_k
        if query.mode == VectorStoreQueryMode.MMR:
            fetch = k * int(kwargs.get("mmr_prefetch_factor", 4))
            items = _mmr(query, search_store(self._store, q, fetch, filters or None), k, kwargs)
        elif query.mode == VectorStoreQueryMode.HYBRID:
            items = self._hybrid(query, q, filters or None)
        else:
            items = search_store(self._store, q, k, filters or None)
        nodes = [item_to_node(i) for i in items]
        # Lets ClaraLLM answer from memory behind LlamaIndex's text synthesizers.
        register_nodes(self._store.config.model_identity, nodes, [i.memory for i in items])
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[i.score for i in items], ids=[i.id for i in items]
        )

    def _hybrid(
        self, query: VectorStoreQuery, q: torch.Tensor, filters: dict[str, Any] | None
    ) -> list[Item]:
        if query.alpha is not None:
            raise ValueError(
                f"alpha={query.alpha} blends scores; ClaraVectorStore's hybrid mode fuses "
                "ranks (reciprocal rank, no weight): leave alpha unset"
            )
        if not query.query_str:
            raise ValueError("the hybrid mode needs the query text (query_str) for BM25")
        if self._lexical is None:
            self._lexical = StoreBM25(self._store)  # TypeError for a store without revision
        k = query.hybrid_top_k or query.similarity_top_k
        dense = search_store(self._store, q, HYBRID_DEPTH * k, filters)
        depth = query.sparse_top_k or HYBRID_DEPTH * k
        return fuse_rankings(
            self._store, dense, self._lexical.top(query.query_str, depth, filters), k
        )

    def _held_store(self) -> Any:  # ClosesStore: close() and `with`
        return self._store

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Persist the MemoryStore into the directory `persist_path` (a trailing
        ``.json``, which `StorageContext.persist` appends, is dropped).

        Like LlamaIndex's own stores, this replaces a store persisted there before:
        `StorageContext.persist` rewrites the docstore and index store beside it in the
        same call, and an old vector store would not match them."""
        if fs is not None and getattr(fs, "protocol", "file") not in ("file", ("file", "local")):
            raise ValueError("ClaraVectorStore persists to the local file system only")
        path = Path(persist_path)
        if path.suffix == ".json":
            path = path.with_suffix("")
        if not isinstance(self._store, MemoryStore):
            logger.debug("%s keeps its data itself: nothing to persist", type(self._store).__name__)
            return
        self._store.persist(path, overwrite=True, show_progress=False)

    @classmethod
    def from_persist_path(
        cls, persist_path: str | Path, model: Any = None, mmap: bool = True, **load_kwargs: Any
    ) -> ClaraVectorStore:
        """Open a store persisted with `persist` (checked against `model` if given)."""
        path = Path(persist_path)
        if path.suffix == ".json":
            path = path.with_suffix("")
        return cls(store=MemoryStore.load(path, mmap=mmap, model=model, **load_kwargs), model=model)

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | Path,
        namespace: str = "default",
        model: Any = None,
        mmap: bool = True,
        **load_kwargs: Any,
    ) -> ClaraVectorStore:
        """Open the store that ``StorageContext.persist(persist_dir)`` wrote."""
        return cls.from_persist_path(
            Path(persist_dir) / f"{namespace}__vector_store", model=model, mmap=mmap, **load_kwargs
        )


def _mmr(query: VectorStoreQuery, items: list[Item], k: int, kwargs: dict[str, Any]) -> list[Item]:
    """`k` of `items` by LlamaIndex's maximal marginal relevance over their memories."""
    if not items:
        return items
    _, picked = get_top_k_mmr_embeddings(
        query.query_embedding,
        [i.memory.flatten().float().tolist() for i in items],
        similarity_top_k=k,
        embedding_ids=list(range(len(items))),
        mmr_threshold=query.mmr_threshold or kwargs.get("mmr_threshold"),
    )
    return [items[j] for j in picked]
