"""`ClaraDocumentCompressor`: rerank any retriever's documents with CLaRa's query reasoner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from ..modeling import ClaraModel
from ..modeling.assets import default_model
from ..pipeline import MemoryStoreProtocol
from ._common import PipelineOwner, to_document, to_items

__all__ = ["ClaraDocumentCompressor"]

RELEVANCE_KEY = "relevance_score"


class ClaraDocumentCompressor(PipelineOwner, BaseDocumentCompressor):
    """Rerank documents by the cosine between the query reasoner's question vector and
    each document's memory (stored memory when the document's id is in `store` with the
    same text, else its text compressed now), keeping the best `top_n`.

    Each returned document is a copy with the cosine under `metadata["relevance_score"]`.
    Use it in `ContextualCompressionRetriever` to let CLaRa rerank BM25, Chroma, ...
    results. Texts compressed here are cached (by content), so a document is compressed
    once however often it comes back.

    Raises:
        StoreMismatchError: `store` holds another compressor's memory.
        MissingAdapterError: the model has no query reasoner.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever  # doctest: +SKIP
        >>> reranker = ClaraDocumentCompressor(model=model, top_n=3)  # doctest: +SKIP
        >>> retriever = ContextualCompressionRetriever(base_compressor=reranker,
        ...                                            base_retriever=bm25)  # doctest: +SKIP
        >>> reranker.compress_documents(docs, "Who is the Eiffel Tower named after?")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: ClaraModel = Field(default_factory=default_model)
    """The CLaRa model (compressor and query reasoner adapters)."""
    store: MemoryStoreProtocol | None = None
    """Optional store: documents whose id it holds are not compressed again."""
    top_n: int | None = Field(default=3, gt=0)
    """Documents to keep after reranking (None keeps all, reordered)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # After pydantic, so a mismatch surfaces as StoreMismatchError, not ValidationError.
        self.pipeline.require_query_reasoner()

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank `documents` for `query`, best first; at most `top_n` are returned.

        Raises:
            ValueError: empty query, or a document to compress has no text.
        """
        items = self.pipeline.rerank(query, to_items(documents), self.top_n)
        return [to_document(i, **{RELEVANCE_KEY: i.score}) for i in items]
