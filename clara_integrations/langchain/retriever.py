"""`ClaraRetriever`: CLaRa's query reasoner over a `MemoryStore`, as a LangChain retriever."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator

from ..modeling import ClaraModel
from ..modeling.assets import default_model
from ..pipeline import MemoryStoreProtocol
from ._common import PipelineOwner, register_documents, to_document
from .vector_store import ClaraVectorStore

__all__ = ["ClaraRetriever"]

SCORE_KEY = "score"


class ClaraRetriever(PipelineOwner, BaseRetriever):
    """Retrieve documents by CLaRa's query reasoner: cosine between the question vector
    and each stored document's flattened memory.

    It is a LangChain runnable: `invoke`, `batch`, `ainvoke`, `stream` all work. Each
    `Document` carries the node's text, its metadata plus the cosine under
    `metadata["score"]`, and the store id as `Document.id` (which lets `ChatClara`
    read the node's stored memory instead of its text).

    With `candidate_pool=N` the store returns `N` candidates, which are re-ranked
    exactly by `ClaraModel.select` (the reference's selector) before keeping `k`: use it
    with approximate indexes.

    With `hybrid=True` its ranking is fused with BM25's over the store's texts
    (`ClaraPipeline.retrieve`), and every document still maps to its stored memory.

    Raises:
        StoreMismatchError: `store` holds another compressor's memory.
        MissingAdapterError: the model has no query reasoner.
        TypeError: `hybrid=True` with a store that cannot keep a BM25 index current.

    Example:
        >>> store = MemoryStore.for_model(model, dtype=torch.float32)  # doctest: +SKIP
        >>> store.add_documents(texts, model)  # doctest: +SKIP
        >>> retriever = ClaraRetriever(model=model, store=store, k=2)  # doctest: +SKIP
        >>> retriever.invoke("Who is the Eiffel Tower named after?")  # doctest: +SKIP
        [Document(id='...', metadata={'score': 0.83}, page_content='The Eiffel Tower ...'), ...]
        >>> retriever.invoke("...", k=1, filters={"source": "a.pdf"})  # per-call overrides  # doctest: +SKIP
        >>> retriever.invoke("error code E1234", hybrid=True)  # BM25 fusion for this call  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: ClaraModel = Field(default_factory=default_model)
    """The CLaRa model; needs its query reasoner adapter."""
    store: MemoryStoreProtocol
    """Store of compressed documents made by this model's compressor (a `MemoryStore`)."""
    k: int = Field(default=5, gt=0)
    """Documents to return (overridable per call: `invoke(q, k=3)`)."""
    candidate_pool: int | None = Field(default=None, gt=0)
    """If set, fetch this many candidates and re-rank them with `ClaraModel.select`."""
    filters: dict[str, Any] | None = None
    """Metadata filter applied before the top-k cut, e.g. `{"source": "a.pdf"}`."""
    hybrid: bool = False
    """Fuse the query reasoner's ranking with BM25's over the store's texts (reciprocal
    rank); `metadata["score"]` is then the fused score. Needs a `MemoryStore`
    (overridable per call: `invoke(q, hybrid=True)`)."""

    @field_validator("store", mode="before")
    @classmethod
    def _unwrap_vector_store(cls, store: Any) -> Any:
        # The LlamaIndex retriever takes its vector store too: the same MemoryStore.
        return store.store if isinstance(store, ClaraVectorStore) else store

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # After pydantic, so a mismatch surfaces as StoreMismatchError, not ValidationError.
        self.pipeline.require_query_reasoner()
        if self.hybrid:
            self.pipeline.store_bm25()  # a store without a revision: TypeError now

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        hybrid: bool | None = None,
    ) -> list[Document]:
        if hybrid is not None and not isinstance(hybrid, bool):
            raise TypeError(f"hybrid must be True, False or None, got {hybrid!r}")
        items = self.pipeline.retrieve(
            query,
            self.k if k is None else k,
            self.candidate_pool,
            self.filters if filters is None else filters,
            hybrid=self.hybrid if hybrid is None else hybrid,
        )
        documents = [to_document(i, **{SCORE_KEY: i.score}) for i in items]
        register_documents(self.model.model_identity, documents, items)
        return documents

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        hybrid: bool | None = None,
    ) -> list[Document]:
        # LangChain's default async path takes no per-call options (ainvoke(q, k=1) was
        # a TypeError): the sync search, in a thread, with them.
        return await asyncio.to_thread(
            self._get_relevant_documents,
            query,
            run_manager=run_manager.get_sync(),
            k=k,
            filters=filters,
            hybrid=hybrid,
        )
