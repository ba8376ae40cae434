"""Compressed-memory node store (framework-free).

Holds nodes (id, text, metadata) with their CLaRa memory tokens ``[n_mem, H]`` on disk
(float16 by default), searchable by cosine similarity with an exact ("flat") or
approximate ("hnsw", "ivfpq", FAISS factory) index, persisted atomically.
:class:`MemoryStoreProtocol` is what the pipeline and the framework adapters need of a
store; ``MemoryStore`` implements it, and so does ``MilvusMemoryStore`` (the same API over
a Milvus collection, imported on first use: it needs the ``[milvus]`` extra).

Example:
    >>> import torch
    >>> from clara_integrations.store import MemoryStore
    >>> store = MemoryStore(n_mem=2, hidden_size=4)
    >>> ids = store.add(torch.randn(2, 2, 4), texts=["a", "b"])
    >>> [h.id for h in store.search(store.get_memories(ids).flatten(1), k=1)[1]] == ids[1:]
    True
"""

from .config import StoreConfig
from .errors import (
    NodeNotFoundError,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    StoreStaleError,
)
from .memory_store import MemoryStore
from .protocol import MemoryStoreProtocol
from .records import Hit, Node

__all__ = [
    "Hit",
    "MemoryStore",
    "MemoryStoreProtocol",
    "MilvusMemoryStore",
    "Node",
    "NodeNotFoundError",
    "StoreClosedError",
    "StoreConfig",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreStaleError",
]


def __getattr__(name: str) -> object:
    # pymilvus is an optional extra: imported when the Milvus backend is first asked for.
    if name == "MilvusMemoryStore":
        from .milvus_store import MilvusMemoryStore

        return MilvusMemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
