"""Atomic file replacement, the one implementation every writer of the package uses.

Crash safety rests on two POSIX facts: ``os.replace`` is atomic within a directory, and
data is durable only after ``fsync`` of the file *and* of its directory entry. A crash
at any moment leaves either the old file or the new one, never a mix, and no temporary
file outlives a failed write. (No maintained library does write-to-callback + fsync +
rename + directory fsync in one call; ``atomicwrites`` is archived.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "temp_name",
]


def temp_name(path: Path) -> Path:
    """The temporary sibling of ``path``: ``<name>.tmp-<12 hex digits>``."""
    return path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def fsync_dir(path: Path) -> None:
    """Make directory entries (creations, renames) durable; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync an existing file by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Replace ``path`` by what ``write(tmp_path)`` writes, durably and atomically.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
        >>> atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
        >>> target.read_bytes()
        b'new'
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
