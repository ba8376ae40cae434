"""`ClaraVectorStore`: a LangChain `VectorStore` over a `MemoryStore` of CLaRa memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from ..modeling import ClaraModel
from ..modeling.assets import default_model
from ..pipeline import ClaraPipeline, Item, MemoryStoreProtocol
from ..store import MemoryStore, StoreConfig
from ..store.closing import ClosesStore
from ._common import register_documents, to_document

__all__ = ["ClaraEmbeddings", "ClaraVectorStore"]


class ClaraEmbeddings(Embeddings):
    """CLaRa as LangChain `Embeddings`: a document's vector is its flattened memory
    (compressor), a query's is the query reasoner's output; both `n_mem * H` wide and
    compared by cosine.

    Example:
        >>> emb = ClaraEmbeddings(model)  # doctest: +SKIP
        >>> len(emb.embed_query("Who is the Eiffel Tower named after?")) == model.n_mem * model.hidden_size  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        model: ClaraModel | None = None,
        batch_size: int = 16,
        show_progress: bool | None = None,
    ) -> None:
        self.pipeline = ClaraPipeline(default_model() if model is None else model)
        self.model: ClaraModel = self.pipeline.model
        self.batch_size = batch_size
        self.show_progress = show_progress  # None: a bar for many batches only

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.pipeline.embed_documents(
            texts, self.batch_size, show_progress=self.show_progress
        )

    def embed_query(self, text: str) -> list[float]:
        return self.pipeline.embed_query(text)


class ClaraVectorStore(ClosesStore, VectorStore):
    """LangChain `VectorStore` whose vectors are CLaRa memories in a `MemoryStore`.

    `add_texts` compresses texts with the model (upserting ids already present);
    searches rank by the query reasoner. Documents come back with their store id, text
    and metadata, so `as_retriever()` feeds `ChatClara` stored memory. `filter=` takes
    the store's metadata filter dict.

    Args:
        model: the CLaRa model (or give `embedding=ClaraEmbeddings(model)`; neither: the
            shipped default checkpoint).
        store: an existing store (default: a new `MemoryStore.for_model(model, **store_options)`).
        embedding: `ClaraEmbeddings` of the same model (what `from_texts` passes).
        store_options: for the new store, e.g. `dtype=torch.float32`, `index="hnsw"`.

    Raises:
        TypeError: `embedding` is not `ClaraEmbeddings` (CLaRa memory comes
            only from a CLaRa compressor).
        StoreMismatchError: `store` was built by another compressor / shape.

    Example:
        >>> vs = ClaraVectorStore.from_texts(texts, ClaraEmbeddings(model), dtype=torch.float32)  # doctest: +SKIP
        >>> vs.similarity_search_with_score("Who is the Eiffel Tower named after?", k=2)  # doctest: +SKIP
        >>> chain = create_clara_rag_chain(vs.as_retriever(search_kwargs={"k": 2}), ChatClara(model=model))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: ClaraModel | None = None,
        store: MemoryStoreProtocol | None = None,
        *,
        embedding: Embeddings | None = None,
        **store_options: Any,
    ) -> None:
        if "embedding_function" in store_options:  # Chroma's name for it
            if embedding is not None:
                raise TypeError("give embedding= or embedding_function=, not both")
            embedding = store_options.pop("embedding_function")
        options = set(StoreConfig.model_fields) - {"n_mem", "hidden_size", "model_identity"}
        unknown = sorted(set(store_options) - options)
        if unknown:
            raise TypeError(
                f"ClaraVectorStore got unexpected keyword arguments {unknown}; besides model, "
                f"store and embedding it takes MemoryStore options: {sorted(options)}"
            )
        if embedding is not None and not isinstance(embedding, ClaraEmbeddings):
            raise TypeError(
                f"ClaraVectorStore stores CLaRa memory, so embedding must be ClaraEmbeddings, got "
                f"{type(embedding).__name__}; use another VectorStore for {type(embedding).__name__}"
            )
        if model is None:
            model = default_model() if embedding is None else embedding.model
        elif embedding is not None and embedding.model is not model:
            raise ValueError("model and embedding.model are different ClaraModels")
        self._embedding = embedding if embedding is not None else ClaraEmbeddings(model)
        self.model: ClaraModel = model
        if store is None:
            store = MemoryStore.for_model(model, **store_options)
        elif store_options:
            raise TypeError(f"store_options {sorted(store_options)} only apply to a new store")
        self.pipeline = ClaraPipeline(model, store)  # StoreMismatchError names both fingerprints
        self.store: MemoryStoreProtocol = store

    @property
    def embeddings(self) -> ClaraEmbeddings:
        return self._embedding

    def _held_store(self) -> Any:  # ClosesStore: close() and `with`
        return self.store

    # ------------------------------------------------------------------ persistence
    def save_local(self, folder_path: str | os.PathLike[str]) -> None:
        """Persist the store to `folder_path` (LangChain's FAISS/Chroma convention),
        atomically: a crash leaves the previous version. Refuses a folder holding another
        store (`FileExistsError`).

        Example:
            >>> vs.save_local("my-index")  # doctest: +SKIP
            >>> again = ClaraVectorStore.load_local("my-index", ClaraEmbeddings(model))  # doctest: +SKIP
        """
        if not isinstance(self.store, MemoryStore):
            raise TypeError(
                f"save_local persists a MemoryStore; {type(self.store).__name__} keeps its data itself"
            )
        self.store.persist(folder_path, show_progress=False)

    @classmethod
    def load_local(
        cls,
        folder_path: str | os.PathLike[str],
        embeddings: ClaraEmbeddings | None = None,
        *,
        model: ClaraModel | None = None,
        **load_options: Any,
    ) -> ClaraVectorStore:
        """Open what `save_local` wrote. Nothing is unpickled (the store's files are
        safetensors-like arrays, SQLite and JSON), so unlike FAISS's no
        ``allow_dangerous_deserialization`` is needed.

        Raises:
            StoreMismatchError: the store holds another compressor's memory.
        """
        load_options.pop("allow_dangerous_deserialization", None)  # FAISS's flag: moot here
        if model is None:
            model = embeddings.model if embeddings is not None else default_model()
        store = MemoryStore.load(folder_path, model=model, **load_options)
        return cls(model, store, embedding=embeddings)

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Compress and store `texts`; an id already in the store is replaced (upsert).

        Args:
            texts: non-empty document texts.
            metadatas: one JSON-serialisable dict per text.
            ids: one id per text (None entries get a fresh uuid4).
            show_progress: keyword; tqdm bar (default: more than 64 texts).
            batch_size: keyword; compression batch size (default 16).

        Returns:
            The ids, in order.

        Raises:
            ValueError: empty text, length mismatch, duplicate ids.
        """
        texts = list(texts)
        show = kwargs.pop("show_progress", len(texts) > 64)
        batch_size = kwargs.pop("batch_size", self._embedding.batch_size)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        n = len(texts)
        metas = list(metadatas) if metadatas is not None else [{} for _ in range(n)]
        ids_ = (
            [i or str(uuid.uuid4()) for i in ids]
            if ids is not None
            else [str(uuid.uuid4()) for _ in range(n)]
        )
        if len(metas) != n or len(ids_) != n:
            raise ValueError(f"got {n} texts, {len(metas)} metadatas and {len(ids_)} ids")
        if len(set(ids_)) != n:
            raise ValueError("ids contains duplicates")
        if n:
            self.pipeline.add_texts(texts, metas, ids_, batch_size=batch_size, show_progress=show)
        return ids_

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete `ids`; ids not in the store are ignored. Returns True."""
        if ids is None:
            raise ValueError("delete() needs the ids to delete")
        self.store.delete(list(ids), missing_ok=True)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents for the ids present in the store (missing ids are skipped)."""
        present = [i for i in dict.fromkeys(ids) if i in self.store]
        return (
            [
                Document(page_content=n.text, metadata=n.metadata, id=n.id)
                for n in self.store.get_nodes(present)
            ]
            if present
            else []
        )

    # ------------------------------------------------------------------ searching
    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents and their cosine similarity (in [-1, 1]) to the query vector."""
        _no_kwargs(kwargs)
        items = self.pipeline.retrieve(query, k, filters=filter)
        return list(zip(self._documents(items), (i.score for i in items)))

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        _no_kwargs(kwargs)
        q = torch.as_tensor([embedding], dtype=torch.float32)
        return self._documents(self.pipeline.search(q, k, filter))

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Diverse results: MMR over the `fetch_k` best by cosine of flattened memory."""
        _no_kwargs(kwargs)
        q = self.pipeline.encode_query(query)
        items: list[Item] = self.pipeline.search(q, max(fetch_k, k), filter)
        if not items:
            return []
        vectors = torch.stack([i.memory for i in items]).flatten(1).float().numpy()
        picked = maximal_marginal_relevance(q.float().cpu().numpy()[0], vectors, lambda_mult, k)
        return self._documents([items[i] for i in picked])

    def _documents(self, items: Sequence[Item]) -> list[Document]:
        """Search results as documents, registered so that `ChatClara` finds their memory
        in a prompt filled with their text."""
        documents = [to_document(i) for i in items]
        register_documents(self.model.model_identity, documents, items)
        return documents

    def _select_relevance_score_fn(self) -> Any:
        # Cosine similarity in [-1, 1] -> relevance in [0, 1].
        return lambda score: (score + 1.0) / 2.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> ClaraVectorStore:
        """A new store holding `texts`, compressed by `embedding.model`.

        Args:
            embedding: `ClaraEmbeddings(model)`.
            store: keyword; an existing `MemoryStore` to add to.
            kwargs: other keywords create the new store (e.g. `dtype=torch.float32`).
        """
        store = kwargs.pop("store", None)
        vs = cls(store=store, embedding=embedding, **kwargs)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs


def _no_kwargs(kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} (filters go in filter=)")
