"""Small file-system helpers of the store: file names, durable writes, hashing.

Atomic replacement is the package's one implementation (:mod:`clara_integrations._atomic`);
its temporary names (``<name>.tmp-<12 hex>``) are what garbage collection recognises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from .._atomic import atomic_write_bytes as replace_atomic
from .._atomic import fsync_dir, fsync_file, temp_name

__all__ = [
    "fsync_dir",
    "fsync_file",
    "hash_file",
    "is_created_file_name",
    "is_data_file_name",
    "link_or_copy",
    "new_hasher",
    "replace_atomic",
    "temp_name",
    "unique_name",
    "write_file_durable",
]

logger = logging.getLogger(__name__)

_HASH_CHUNK = 8 << 20


def new_hasher() -> hashlib._Hash:
    """blake2b-128: fast in pure hashlib (~0.9 GB/s here) and plenty against corruption."""
    return hashlib.blake2b(digest_size=16)


def unique_name(prefix: str, suffix: str) -> str:
    """A file name that no earlier or later version of the store will use."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}{suffix}"


# Exactly the names that ``unique_name`` / ``temp_name`` give store files (plus SQLite's
# side files). Garbage collection deletes only names matching this, so a user's
# ``nodes-export.csv`` or ``seg-notes.txt`` beside the store is never touched.
_UID = r"[0-9a-f]{16}"
_STORE_FILE = (
    rf"(seg-{_UID}\.mem|alive-\d+-{_UID}\.bits|nodes-{_UID}\.sqlite(-wal|-shm|-journal)?"
    rf"|index-{_UID}\.faiss|reducer-{_UID}\.safetensors)"
)
_DATA_RE = re.compile(_STORE_FILE)
_CREATED_RE = re.compile(rf"({_STORE_FILE}|manifest\.json)(\.tmp-[0-9a-f]{{12}})?")


def is_data_file_name(name: str) -> bool:
    """True for a plain file name the store itself gives to a data file.

    Manifest entries must pass this: a crafted manifest cannot point outside the store
    directory (``../x``, ``/etc/passwd``) or at a file the store did not write.
    """
    return isinstance(name, str) and _DATA_RE.fullmatch(name) is not None


def is_created_file_name(name: str) -> bool:
    """True for any file name the store creates (data files, manifest and their temps)."""
    return _CREATED_RE.fullmatch(name) is not None


def write_file_durable(path: Path, data: bytes) -> str:
    """Write a brand-new file, fsync it, and return its blake2b hex digest."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    h = new_hasher()
    h.update(data)
    return h.hexdigest()


def hash_file(path: Path) -> str:
    """blake2b hex digest of a whole file, read in 8 MiB chunks."""
    h = new_hasher()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Bring an immutable file into another directory: hard link if possible, else copy.

    Segment files are never modified after they are written, so a hard link is a safe,
    instant "copy"; across file systems we fall back to a real copy plus fsync.
    """
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        tmp = temp_name(dst)
        shutil.copyfile(src, tmp)
        fsync_file(tmp)
        os.replace(tmp, dst)
