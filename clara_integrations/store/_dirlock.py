"""The per-directory writer lock, released by the OS if the writer dies.

One process (and one store object) at a time may write a store directory; readers take
no lock. The lock itself is ``filelock``'s (see :mod:`clara_integrations._filelock`).
"""

from __future__ import annotations

from pathlib import Path

from .._filelock import Timeout, process_lock
from .errors import StoreLockedError

LOCK_NAME = ".writer.lock"


class DirLock:
    """Hold the writer lock of ``directory`` until :meth:`release`.

    Raises:
        StoreLockedError: another process or store object holds it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = process_lock(self.directory / LOCK_NAME, blocking=False)
        try:
            self._lock.acquire()
        except Timeout:
            raise StoreLockedError(
                f"another process or store object is writing to {directory}; "
                "close it (or persist its changes) first: one writer per store directory"
            ) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)
