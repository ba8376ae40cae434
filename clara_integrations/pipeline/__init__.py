"""The framework-free CLaRa RAG pipeline: retrieve / rerank / memories / answer / stream.

One implementation that the LlamaIndex and LangChain adapters translate their objects
to and from, so the same question gives the same documents, scores and answer through
either framework. Needs neither framework.

Example:
    >>> from clara_integrations.pipeline import ClaraPipeline
    >>> from clara_integrations.store import MemoryStore
    >>> store = MemoryStore.for_model(model)
    >>> _ = store.add_documents(["Paris is in France.", "Rome is in Italy."], model, show_progress=False)
    >>> pipeline = ClaraPipeline(model, store)
    >>> items = pipeline.retrieve("Where is Paris?", k=1)
    >>> stream = pipeline.answer("Where is Paris?", pipeline.memories(items), stream=True, max_new_tokens=4)
    >>> "".join(stream) == stream.answer.text
    True
"""

from ..store.protocol import MemoryStoreProtocol
from .cache import CompressionCache
from .core import (
    EMPTY_QUERY,
    HYBRID_DEPTH,
    ClaraPipeline,
    Item,
    check_question,
    fuse_rankings,
    search_store,
    upsert_store,
)
from .generation import CLEANUP_HOLD, Answer, AnswerStream, Generation, sampling_kwargs
from .hybrid import RRF_K, StoreBM25, reciprocal_rank_fusion

__all__ = [
    "CLEANUP_HOLD",
    "EMPTY_QUERY",
    "HYBRID_DEPTH",
    "RRF_K",
    "Answer",
    "AnswerStream",
    "ClaraPipeline",
    "CompressionCache",
    "Generation",
    "Item",
    "MemoryStoreProtocol",
    "StoreBM25",
    "check_question",
    "fuse_rankings",
    "reciprocal_rank_fusion",
    "sampling_kwargs",
    "search_store",
    "upsert_store",
]
