"""`CompressionCache`: memory of texts compressed on the fly, bounded, least recently used out."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["CompressionCache"]


class CompressionCache:
    """``(model identity, text) -> memory (n_mem, H)`` for texts that have no stored memory
    (another retriever's nodes, documents outside the store), so each is compressed once.

    The key holds the model identity, which changes when the compressor's weights do
    (training), so one cache may serve several models and never returns stale memory.
    Entries live on the CPU in the model's dtype; beyond `max_items` entries or
    `max_bytes` bytes the least recently used go first.

    Args:
        max_items: entries kept (0 disables caching).
        max_bytes: bytes of memory kept.
        batch_size: compression batch size.

    Example:
        >>> cache = CompressionCache(max_items=16)
        >>> cache.get(model, ["Paris is in France.", "Paris is in France."]).shape[0]
        2
        >>> cache.compressed, len(cache)
        (1, 1)
    """

    def __init__(
        self, max_items: int = 4096, max_bytes: int = 256 * 2**20, batch_size: int = 16
    ) -> None:
        if max_items < 0 or max_bytes < 0:
            raise ValueError(
                f"cache bounds must be >= 0, got max_items={max_items}, max_bytes={max_bytes}"
            )
        self.max_items, self.max_bytes, self.batch_size = max_items, max_bytes, batch_size
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._guard = threading.Lock()
        self.compressed = 0
        """Texts compressed so far (cache misses), for diagnostics."""

    def __getstate__(self) -> dict:
        # A copy (pickle, a worker process) starts empty: entries are cheap to recompute
        # and may be hundreds of MB; the lock cannot be pickled at all.
        return {
            "max_items": self.max_items,
            "max_bytes": self.max_bytes,
            "batch_size": self.batch_size,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _key(model: Any, text: str) -> str:
        return hashlib.sha256(f"{model.model_identity}\0{text}".encode()).hexdigest()

    def get(self, model: Any, texts: Sequence[str]) -> torch.Tensor:
        """(N, n_mem, H) memory of `texts` in the model's dtype, on the CPU.

        Raises:
            ValueError: a text is empty (from the compressor, naming its index).
        """
        keys = [self._key(model, t) for t in texts]
        found: dict[str, torch.Tensor] = {}
        with self._guard:
            for key in keys:
                if key in self._items:
                    self._items.move_to_end(key)
                    found[key] = self._items[key]
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        if todo:  # compressed outside the guard: other threads keep reading the cache
            fresh = model.compress_documents(
                todo, batch_size=self.batch_size, show_progress=False
            ).cpu()
            with self._guard:
                self.compressed += len(todo)
                for text, memory in zip(todo, fresh):
                    found[self._key(model, text)] = memory
                    self._put(self._key(model, text), memory)
        if not keys:
            return torch.empty(0, model.n_mem, model.hidden_size, dtype=model.dtype)
        return torch.stack([found[k] for k in keys])

    def _put(self, key: str, memory: torch.Tensor) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = memory
        self._bytes += memory.numel() * memory.element_size()
        while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        """Drop every entry."""
        with self._guard:
            self._items.clear()
            self._bytes = 0
