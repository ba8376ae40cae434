"""An advisory per-directory writer lock (``flock``), released by the OS if we die.

One process at a time may write a store directory; readers take no lock. Where
``fcntl`` is unavailable (Windows) locking is skipped with a debug message.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import StoreLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_NAME = ".writer.lock"


class DirLock:
    """Hold the writer lock of ``directory`` until :meth:`release`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._fh = open(self.directory / LOCK_NAME, "a+b")
        if fcntl is None:  # pragma: no cover
            logger.debug("no fcntl: store directory %s is not write-locked", directory)
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise StoreLockedError(
                f"another process or store object is writing to {directory}; "
                "close it first (one writer per store directory)"
            ) from None

    def release(self) -> None:
        if not self._fh.closed:
            self._fh.close()  # closing the descriptor drops the flock
