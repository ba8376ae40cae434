"""Memory rows: append-only segment files (memory-mapped) plus an in-RAM tail.

Global row ``r`` is the ``r``-th memory ever appended; rows are never moved except by
``compact``. Each segment file holds a contiguous row range and is written exactly once
(never appended to or rewritten), so a persisted segment can be shared by every later
version of the store and hard-linked into another directory.

File layout of a segment with ``n`` rows of width ``D``::

    n  x float32      inverse L2 norm of each row (1 / max(|x|, 1e-12))
    n*D x element     the raw rows: float16, bfloat16 bits as uint16, or float32
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._files import hash_file, new_hasher, unique_name
from .errors import StoreCorruptError
from .manifest import SegmentEntry

logger = logging.getLogger(__name__)

_NORM_EPS = 1e-12  # same eps as torch.nn.functional.normalize
_WRITE_CHUNK = 16 << 20


@dataclass
class Piece:
    """A contiguous row range: a persisted segment (``entry`` set) or RAM tail."""

    start: int
    data: np.ndarray  # [rows, D], storage dtype
    inv_norm: np.ndarray  # [rows] float32
    entry: SegmentEntry | None = None
    directory: Path | None = None
    fd: int | None = None  # for positional reads of memory-mapped segments

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])

    def read_rows(self, local: np.ndarray, out: np.ndarray) -> None:
        """Copy rows ``local`` (sorted) of this piece into ``out`` ([len, D]).

        Memory-mapped segments are read with ``preadv``: a page fault on a mapping
        pulls in whole readahead windows / large folios (we measured ~0.5 MB of RSS
        and up to 8 MB of disk reads per random 9 KB row), whereas a positional read
        fetches just the row. Scans keep using the mapping (sequential access).
        """
        if self.fd is None:
            out[:] = self.data[local]
            return
        row_bytes = self.data.shape[1] * self.data.itemsize
        base = self.rows * 4  # the inverse norms come first
        view = out.reshape(out.shape[0], -1).view(np.uint8)
        for i, r in enumerate(local.tolist()):
            got = os.preadv(self.fd, [view[i]], base + r * row_bytes)
            if got != row_bytes:
                raise StoreCorruptError(
                    f"short read from segment {self.entry.file}", self.entry.file
                )

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def inverse_norms(x: torch.Tensor) -> np.ndarray:
    """[N, D] tensor -> [N] float32 numpy of 1 / max(||x||, eps), the norm computed in
    float64: a float32 sum of squares overflows to inf for elements past ~1e19 (finite
    in float32 and bfloat16), and such a row would score 0 against every query."""
    norms = torch.linalg.vector_norm(x.double(), dim=1).clamp_min(_NORM_EPS)
    return (1.0 / norms).numpy().astype(np.float32, copy=False)


def to_float32(block: np.ndarray, dtype: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Storage-dtype rows -> float32 torch tensor (into ``out`` when given)."""
    if dtype == "float32":
        return torch.from_numpy(block)
    src = (
        torch.from_numpy(block)
        if dtype == "float16"
        else (torch.from_numpy(block.view(np.int16)).view(torch.bfloat16))
    )
    if out is None:
        return src.float()
    view = out[: block.shape[0]]
    view.copy_(src)
    return view


def to_torch(block: np.ndarray, dtype: str) -> torch.Tensor:
    """Storage-dtype rows -> a torch tensor in the store dtype (a copy)."""
    t = torch.from_numpy(np.array(block, copy=True))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def from_torch(x: torch.Tensor, dtype: str) -> np.ndarray:
    """A CPU tensor already in the store dtype -> numpy in the storage dtype."""
    if dtype == "bfloat16":
        x = x.contiguous().view(torch.int16)
    # copy: the caller may still own (and later modify) the tensor's storage
    out = np.array(x.contiguous().numpy(), copy=True)
    return out.view(np.uint16) if dtype == "bfloat16" else out


class MemoryRows:
    """All memory rows of a store; thread-safe for readers while no writer runs."""

    def __init__(self, dim: int, dtype: str, np_dtype: np.dtype) -> None:
        self.dim, self.dtype, self.np_dtype = dim, dtype, np_dtype
        self.pieces: list[Piece] = []
        self._starts: list[int] = []
        self.n_rows = 0

    # -- building ---------------------------------------------------------------------
    def append(self, data: np.ndarray, inv_norm: np.ndarray) -> int:
        """Append rows to the RAM tail; returns the first new global row."""
        start = self.n_rows
        self.pieces.append(Piece(start, data, inv_norm))
        self._starts.append(start)
        self.n_rows += data.shape[0]
        return start

    def drop_tail(self, start: int) -> None:
        """Take back the RAM rows from global row ``start`` on (an append that failed)."""
        while self.pieces and self.pieces[-1].start >= start:
            if self.pieces[-1].entry is not None:
                raise AssertionError("only RAM rows can be taken back")
            self.pieces.pop()
            self._starts.pop()
        self.n_rows = start

    def ram_bytes(self) -> int:
        return sum(p.data.nbytes for p in self.pieces if p.entry is None)

    def flush(self, directory: Path, *, mmap: bool = True) -> SegmentEntry | None:
        """Write the RAM tail into one new segment file (fsync'd) and map it back."""
        ram = [p for p in self.pieces if p.entry is None]
        if not ram:
            return None
        assert ram[0] is self.pieces[-len(ram)], "RAM pieces must form the tail"
        name = unique_name("seg", ".mem")
        path = directory / name
        h = new_hasher()
        try:
            with open(path, "xb") as fh:
                for arr in [p.inv_norm for p in ram] + [p.data for p in ram]:
                    _write_array(fh, arr, h)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:  # disk full, file too large...: the RAM tail is unchanged
            path.unlink(missing_ok=True)
            raise
        rows = sum(p.rows for p in ram)
        entry = SegmentEntry(
            file=name,
            bytes=path.stat().st_size,
            blake2b=h.hexdigest(),
            start=ram[0].start,
            rows=rows,
        )
        if mmap:
            piece = self.open_segment(directory, entry, mmap=True, verify=False)
        else:  # keep the rows we already hold in RAM
            data = np.concatenate([p.data for p in ram]) if len(ram) > 1 else ram[0].data
            inv = np.concatenate([p.inv_norm for p in ram]) if len(ram) > 1 else ram[0].inv_norm
            piece = Piece(ram[0].start, data, inv, entry, Path(directory))
        del self.pieces[-len(ram) :], self._starts[-len(ram) :]
        self.pieces.append(piece)
        self._starts.append(piece.start)
        logger.debug("wrote segment %s (%d rows)", path, rows)
        return entry

    def open_segment(
        self, directory: Path, entry: SegmentEntry, *, mmap: bool, verify: bool
    ) -> Piece:
        """Open one segment file, checking its size (and checksum when ``verify``)."""
        path = Path(directory) / entry.file
        expected = entry.rows * 4 + entry.rows * self.dim * self.np_dtype.itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StoreCorruptError(f"segment file {path} is missing", path) from None
        if size != expected or size != entry.bytes:
            raise StoreCorruptError(
                f"segment file {path} has {size} bytes, expected {expected}", path
            )
        if verify and hash_file(path) != entry.blake2b:
            raise StoreCorruptError(f"segment file {path} fails its checksum", path)
        if entry.rows == 0:
            data = np.empty((0, self.dim), self.np_dtype)
            inv = np.empty((0,), np.float32)
        elif mmap:
            # mode "c" (private copy-on-write) gives writable arrays that torch can wrap
            # without warnings; we never write, so pages stay shared with the page cache.
            inv = np.memmap(path, np.float32, "c", 0, (entry.rows,))
            data = np.memmap(path, self.np_dtype, "c", entry.rows * 4, (entry.rows, self.dim))
            if hasattr(os, "preadv"):
                fd = os.open(path, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):  # no readahead for single-row reads
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                return Piece(entry.start, data, inv, entry, Path(directory), fd)
        else:
            raw = np.fromfile(path, dtype=np.uint8)
            inv = raw[: entry.rows * 4].view(np.float32)
            data = raw[entry.rows * 4 :].view(self.np_dtype).reshape(entry.rows, self.dim)
        return Piece(entry.start, data, inv, entry, Path(directory))

    def add_segment(self, piece: Piece) -> None:
        if piece.start != self.n_rows:
            raise StoreCorruptError(
                f"segment {piece.entry.file if piece.entry else '?'} starts at row "
                f"{piece.start}, expected {self.n_rows}",
                piece.entry.file if piece.entry else None,
            )
        self.pieces.append(piece)
        self._starts.append(piece.start)
        self.n_rows += piece.rows

    # -- reading ----------------------------------------------------------------------
    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (any order) -> ([len, D] storage dtype, [len] float32 inverse norms)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], self.dim), self.np_dtype)
        inv = np.empty((rows.shape[0],), np.float32)
        if not rows.size:
            return out, inv
        which = np.searchsorted(np.asarray(self._starts), rows, side="right") - 1
        for p_idx in np.unique(which):
            piece = self.pieces[p_idx]
            sel = np.nonzero(which == p_idx)[0]
            local = rows[sel] - piece.start
            order = np.argsort(local, kind="stable")  # sequential file access
            part = np.empty((sel.size, self.dim), self.np_dtype)
            piece.read_rows(local[order], part)
            out[sel[order]] = part
            inv[sel[order]] = piece.inv_norm[local[order]]
        return out, inv

    def close(self) -> None:
        """Close file descriptors (mappings close when their arrays are collected)."""
        for piece in self.pieces:
            piece.close()

    def iter_blocks(
        self, start: int, stop: int, block_rows: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first_row, rows, inverse norms) blocks covering ``[start, stop)``."""
        if start >= stop:
            return
        p_idx = max(bisect.bisect_right(self._starts, start) - 1, 0)
        for piece in self.pieces[p_idx:]:
            if piece.start >= stop:
                break
            lo = max(start, piece.start) - piece.start
            hi = min(stop, piece.start + piece.rows) - piece.start
            for s in range(lo, hi, block_rows):
                e = min(s + block_rows, hi)
                yield piece.start + s, piece.data[s:e], piece.inv_norm[s:e]

    def segment_entries(self) -> list[SegmentEntry]:
        """Entries of persisted segments (call after :meth:`flush`)."""
        return [p.entry for p in self.pieces if p.entry is not None]


def _write_array(fh, arr: np.ndarray, h) -> None:
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    for i in range(0, flat.shape[0], _WRITE_CHUNK):
        chunk = memoryview(flat[i : i + _WRITE_CHUNK])
        fh.write(chunk)
        h.update(chunk)
