"""`ClosesStore`: ``close()`` and ``with`` for the framework classes that hold a store."""

from __future__ import annotations

from typing import Any, Self

__all__ = ["ClosesStore"]


class ClosesStore:
    """Mixin: release the held store's files and writer lock (then another object may
    open and write the same directory), by ``close()`` or at the end of a ``with``.

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> class Holder(ClosesStore):
        ...     def __init__(self): self.store = MemoryStore(n_mem=2, hidden_size=4)
        ...     def _held_store(self): return self.store
        >>> with Holder() as holder:
        ...     pass
        >>> import torch
        >>> try:
        ...     holder.store.search(torch.zeros(1, 8))
        ... except Exception as exc:
        ...     type(exc).__name__
        'StoreClosedError'

    """

    def _held_store(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Close the store (a store without `close`, e.g. a server's, is left alone)."""
        close = getattr(self._held_store(), "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
