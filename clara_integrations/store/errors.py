"""Exceptions raised by the memory store.

Every error derives from :class:`StoreError`, so callers can catch the whole family;
the mismatch error is also a ``ValueError`` and the not-found error also a ``KeyError``
so that generic handlers keep working.
"""

from __future__ import annotations

from ..errors import ClaraError

__all__ = [
    "NodeNotFoundError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreStaleError",
]


class StoreError(ClaraError):
    """Base class of every error the store raises on purpose (a :class:`ClaraError`)."""


class StoreMismatchError(StoreError, ValueError):
    """The store and a model (or an expected fingerprint) disagree.

    Raised when a model with another identity, ``n_mem`` or hidden size meets a store,
    and when :meth:`MemoryStore.load` is given a fingerprint the store does not have.
    """


class StoreCorruptError(StoreError):
    """A store file is missing, truncated, or fails its checksum.

    Attributes:
        file: the path of the offending file.
    """

    def __init__(self, message: str, file: object = None) -> None:
        super().__init__(message)
        self.file = file


class StoreLockedError(StoreError):
    """Another process holds the writer lock of this store directory."""


class StoreStaleError(StoreError):
    """Another writer committed a newer version of the store directory since this
    handle loaded or last persisted it.

    Writing on would overwrite (and garbage-collect) that writer's commit, so the write
    is refused; the handle keeps serving searches on the version it loaded. Reload with
    ``MemoryStore.load(path)`` and repeat the change.

    Attributes:
        handle_generation: the generation this handle is based on.
        disk_generation: the generation committed on disk now.
    """

    def __init__(self, message: str, handle_generation: int, disk_generation: int) -> None:
        super().__init__(message)
        self.handle_generation = handle_generation
        self.disk_generation = disk_generation


class StoreClosedError(StoreError, ValueError):
    """The store was closed; like I/O on a closed file (hence also a ``ValueError``)."""


class NodeNotFoundError(StoreError, KeyError):
    """One or more node ids are not in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
