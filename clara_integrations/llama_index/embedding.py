"""`ClaraEmbedding`: CLaRa memory and query vectors as LlamaIndex embeddings."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from ..modeling.assets import default_model
from ..pipeline import ClaraPipeline
from ._pickle import PicklesWhole
from ._provenance import VECTORS

__all__ = ["ClaraEmbedding"]


class ClaraEmbedding(PicklesWhole, BaseEmbedding):
    """Texts embed as their flattened CLaRa memory (``n_mem * H`` floats, the compressor),
    queries as the query reasoner's vector of the same width; cosine between the two is
    CLaRa's retrieval score.

    Because the flattened memory is an ordinary vector, any LlamaIndex vector store can
    hold CLaRa memory: `ClaraVectorStore` (the MemoryStore), or Qdrant, Milvus,
    ``SimpleVectorStore``... `ClaraLLM` reads memory back from a store's query results only
    if the store returns each node's stored embedding with them (``node.embedding``; see
    `ClaraSynthesizer` for the alternatives).

    Args:
        model: a `ClaraModel` with compressor and query reasoner.
        embed_batch_size: texts per compression batch.

    The vectors it returns are remembered as this model's, so that `ClaraVectorStore`
    refuses them if its store holds another model's memory.

    Raises:
        MissingAdapterError (when a query is embedded): the model has no query reasoner.

    Example:
        >>> from llama_index.core import StorageContext, VectorStoreIndex
        >>> vector_store = ClaraVectorStore(model=model)  # doctest: +SKIP
        >>> storage = StorageContext.from_defaults(vector_store=vector_store)  # doctest: +SKIP
        >>> index = VectorStoreIndex.from_documents(
        ...     docs, storage_context=storage, embed_model=ClaraEmbedding(model=model))  # doctest: +SKIP
    """

    _pipeline: ClaraPipeline = PrivateAttr()

    def __init__(self, model: Any = None, embed_batch_size: int = 16, **kwargs: Any) -> None:
        model = default_model() if model is None else model
        kwargs.setdefault("model_name", model.model_identity)
        super().__init__(embed_batch_size=embed_batch_size, **kwargs)
        self._pipeline = ClaraPipeline(model)

    @classmethod
    def class_name(cls) -> str:
        return "ClaraEmbedding"

    @property
    def model(self) -> Any:
        """The `ClaraModel` that embeds."""
        return self._pipeline.model

    def _get_query_embedding(self, query: str) -> list[float]:
        vector = self._pipeline.embed_query(query)
        VECTORS.note(self.model.model_identity, [vector])  # ClaraVectorStore checks it
        return vector

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vectors = self._pipeline.embed_documents(texts, self.embed_batch_size)  # (N, n_mem * H)
        VECTORS.note(self.model.model_identity, vectors)
        return vectors

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
