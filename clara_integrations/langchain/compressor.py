"""`ClaraDocumentCompressor`: rerank any retriever's documents with CLaRa's query reasoner."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from ..modeling import ClaraModel
from ..modeling.assets import default_model
from ..modeling.topk import cosine_scores
from ..store import MemoryStore
from ._common import check_store, document_memories, query_text

__all__ = ["ClaraDocumentCompressor"]

RELEVANCE_KEY = "relevance_score"


class ClaraDocumentCompressor(BaseDocumentCompressor):
    """Rerank documents by the cosine between the query reasoner's question vector and
    each document's memory (stored memory when the document's id is in `store`, else
    its text compressed now), keeping the best `top_n`.

    Each returned document is a copy with the cosine under `metadata["relevance_score"]`.
    Use it in `ContextualCompressionRetriever` to let CLaRa rerank BM25, Chroma, ...
    results.

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
    store: MemoryStore | None = None
    """Optional store: documents whose id it holds are not compressed again."""
    top_n: int | None = Field(default=3, gt=0)
    """Documents to keep after reranking (None keeps all, reordered)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # After pydantic, so a mismatch surfaces as StoreMismatchError, not ValidationError.
        if self.store is not None:
            check_store(self.model, self.store)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Rerank `documents` for `query`, best first; at most `top_n` are returned.

        Raises:
            ValueError: empty query, or a document to compress has no text.
        """
        query = query_text(query)
        docs = list(documents)
        if not docs:
            return []
        q = self.model.encode_queries([query], show_progress=False)  # (1, n_mem*H)
        memories = document_memories(self.model, self.store, docs)  # (N, n_mem, H)
        scores = cosine_scores(q, memories.flatten(1)[None])[0]  # (N,) float32
        order = sorted(range(len(docs)), key=lambda i: -float(scores[i]))
        keep = order[: self.top_n] if self.top_n is not None else order
        return [
            Document(page_content=docs[i].page_content, id=docs[i].id,
                     metadata={**docs[i].metadata, RELEVANCE_KEY: float(scores[i])})
            for i in keep
        ]
