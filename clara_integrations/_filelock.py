"""Inter-process locks through ``filelock`` (POSIX ``flock``, Windows ``msvcrt``).

One configuration for every lock of the package: the OS drops the lock when the holder
dies (no soft lock files that a ``kill -9`` would leave behind), the lock file is kept
(deleting it on release races with a process that just opened it), and a lock taken in
one thread may be released in another (a server persists from any thread).
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["Timeout", "process_lock"]


def process_lock(path: str | Path, *, blocking: bool = True) -> FileLock:
    """A lock on ``path``; ``acquire()`` raises :class:`Timeout` at once if not ``blocking``.

    Example:
        >>> import tempfile, pathlib
        >>> lock = process_lock(pathlib.Path(tempfile.mkdtemp()) / ".lock", blocking=False)
        >>> with lock:
        ...     lock.is_locked
        True
    """
    return FileLock(
        str(path),
        timeout=-1 if blocking else 0,
        thread_local=False,
        preserve_lock_file=True,
        fallback_to_soft=False,
    )
