"""Persistence of :class:`MemoryStore`: atomic persist, load, compaction, GC.

A mixin so that ``memory_store.py`` stays readable; it uses the store's attributes and
runs under the store's write lock. The commit protocol is described in
:meth:`PersistenceMixin.persist`; the directory layout in ``memory_store.py``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from . import _validate as check
from ._dirlock import LOCK_NAME, DirLock
from ._files import (
    fsync_dir,
    link_or_copy,
    new_hasher,
    replace_atomic,
    unique_name,
    write_file_durable,
)
from .ann import AnnIndex
from .config import RUNTIME_FIELDS, StoreConfig
from .errors import StoreCorruptError, StoreMismatchError
from .manifest import MANIFEST_NAME, FileEntry, IndexEntry, Manifest
from .nodes import NodeDB
from .segments import MemoryRows

if TYPE_CHECKING:
    from .memory_store import MemoryStore

logger = logging.getLogger(__name__)

_SMALL_FILE = 64 << 20  # files up to this size are checksummed on every load
_GC_PREFIXES = ("seg-", "alive-", "index-", "reducer-", "nodes-")

#: Testing aid: when set, called with the name of each persist stage ("segments",
#: "files", "db", "manifest", "gc"), e.g. to kill the process at a precise point.
_persist_hook: Callable[[str], None] | None = None


def _stage(name: str) -> None:
    if _persist_hook is not None:
        _persist_hook(name)


class PersistenceMixin:
    """persist / load / compact (see :class:`MemoryStore`)."""

    def persist(self, path: str | Path | None = None, *, show_progress: bool = True) -> Path:
        """Atomically write the current state to ``path`` (default: where it lives).

        Protocol (a crash at any point leaves the previous version loadable):

        1. new memory rows go to a *new* segment file; earlier segments are untouched
           (persisting to another directory hard-links them, or copies across devices);
        2. the alive bitmap and, if it changed, the index are written under new names;
        3. all of that is fsync'd; then the node database commits (fsync'd) a
           ``committed_generation`` stamp - its rows were written earlier, stamped
           with the new generation, so older readers ignore them;
        4. ``manifest.json`` is replaced atomically (temp + fsync + rename + fsync dir):
           this is the commit point;
        5. files no manifest names are deleted.

        After persisting elsewhere the store lives in the new directory.

        Returns:
            The directory.

        Raises:
            ValueError: no path and the store was never persisted.
            StoreLockedError: another process writes to that directory.
        """
        with self._lock.write():
            target = Path(path).resolve() if path is not None else self._home
            if target is None:
                raise ValueError("persist() needs a path the first time")
            same = target == self._home
            if same and not self._dirty:
                return target
            if same:
                self._begin_write()
            target.mkdir(parents=True, exist_ok=True)
            new_lock = None if same else DirLock(target)
            try:
                manifest, new_db = self._write_version(target, same, show_progress)
            except BaseException:
                if new_lock is not None:
                    new_lock.release()
                raise
            self._committed = self._view = manifest.generation
            self._rolled_back, self._dirty = True, False
            if not same:
                self._rebind(target, new_db, new_lock, manifest.db_file)
            _collect_garbage(target, manifest)
            _stage("gc")
            return target

    def _write_version(
        self, target: Path, same: bool, show_progress: bool
    ) -> tuple[Manifest, NodeDB | None]:
        gen = self._committed + 1
        self._refresh_index(show_progress)
        self._rows.flush(self._work_dir, mmap=self._mmap)
        _stage("segments")
        for piece in self._rows.pieces:
            if piece.directory != target:
                link_or_copy(piece.directory / piece.entry.file, target / piece.entry.file)
        alive_name = unique_name(f"alive-{gen}", ".bits")
        bits = np.packbits(self._alive[: self._rows.n_rows], bitorder="little").tobytes()
        alive = FileEntry(
            file=alive_name, bytes=len(bits), blake2b=write_file_durable(target / alive_name, bits)
        )
        index_entry = self._save_index(target)
        _stage("files")
        fsync_dir(target)
        new_db = None
        meta = {"committed_generation": str(gen), "store_uid": self._uid}
        if same:
            db_file = self._db_file
            self._db.set_meta(meta, durable=True)
        else:
            db_file = unique_name("nodes", ".sqlite")
            self._db.backup_to(target / db_file)
            new_db = NodeDB(target / db_file)
            if not self._rolled_back:  # the copy may carry a crashed writer's leftovers
                new_db.rollback_after(self._committed)
            new_db.set_meta(meta, durable=True)
        fsync_dir(target)
        _stage("db")
        manifest = Manifest(
            store_uid=self._uid,
            generation=gen,
            config=self._cfg,
            fingerprint=self.fingerprint,
            db_file=db_file,
            n_rows=self._rows.n_rows,
            n_live=self._n_live,
            segments=self._rows.segment_entries(),
            alive=alive,
            index=index_entry,
        )
        replace_atomic(target / MANIFEST_NAME, manifest.to_bytes())
        _stage("manifest")
        self._index_entry = index_entry
        return manifest, new_db

    def _save_index(self, target: Path) -> IndexEntry | None:
        if self._ann is None:
            return None
        entry = self._index_entry
        if entry is None:
            return self._ann.save(target, self._ann_trained_on)
        if self._home != target:
            for f in (entry.index, entry.reducer):
                if f is not None:
                    link_or_copy(self._home / f.file, target / f.file)
        return entry

    def _rebind(self, target: Path, new_db: NodeDB, new_lock: DirLock, db_file: str) -> None:
        old_db, self._db_file = self._db, db_file
        self._set_db(new_db)
        old_db.close()
        if self._res.lock is not None:
            self._res.lock.release()
        self._res.lock = new_lock
        for piece in self._rows.pieces:
            piece.directory = target
        self._home = self._work_dir = target
        if self._res.scratch is not None:
            shutil.rmtree(self._res.scratch, ignore_errors=True)
            self._res.scratch = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        mmap: bool = True,
        *,
        model: Any = None,
        fingerprint: str | None = None,
        verify: bool = False,
        **runtime: Any,
    ) -> MemoryStore:
        """Open a persisted store.

        Every file's presence and size is checked; files up to 64 MiB (manifest,
        bitmap, PCA, small segments and indexes) are also checksummed. Big segments
        are immutable and were checksummed when written; ``verify=True`` re-hashes
        everything (seconds per GB). Loading never changes store data (SQLite may
        create its ``-wal``/``-shm`` side files).

        Args:
            path: the store directory.
            mmap: memory-map segments (RSS stays small) instead of reading them.
            model: if given, must match the store (n_mem, H, identity).
            fingerprint: if given, must equal the store's fingerprint.
            verify: checksum every file and cross-check node counts.
            **runtime: overrides of runtime settings (e.g. ``hnsw_ef_search=256``).

        Raises:
            StoreCorruptError: a missing, truncated or corrupt file (named).
            StoreMismatchError: ``model``/``fingerprint`` do not match.
        """
        home = Path(path).resolve()
        m = Manifest.read(home)
        if fingerprint is not None and fingerprint != m.fingerprint:
            raise StoreMismatchError(
                f"store at {home} has fingerprint {m.fingerprint!r}, expected {fingerprint!r}"
            )
        bad = set(runtime) - RUNTIME_FIELDS
        if bad:
            raise ValueError(
                f"load() only overrides runtime settings {sorted(RUNTIME_FIELDS)}; "
                f"got {sorted(bad)}"
            )
        cfg = StoreConfig.model_validate({**m.config.model_dump(), **runtime})
        if model is not None:
            check.model_shape(model, cfg)
        store = cls.__new__(cls)
        store._setup(cfg, m.store_uid, home, home, m.db_file, m.generation, mmap=mmap)
        try:
            store._open_files(m, verify)
        except BaseException:
            store._finalizer()
            raise
        return store

    def _open_files(self, m: Manifest, verify: bool) -> None:
        home = self._home
        for seg in m.segments:
            piece = self._rows.open_segment(
                home, seg, mmap=self._mmap, verify=verify or seg.bytes <= _SMALL_FILE
            )
            self._rows.add_segment(piece)
        if self._rows.n_rows != m.n_rows:
            raise StoreCorruptError(
                f"manifest {home / MANIFEST_NAME} lists {self._rows.n_rows} rows, "
                f"expected {m.n_rows}",
                home / MANIFEST_NAME,
            )
        apath = home / m.alive.file
        try:
            raw = apath.read_bytes()
        except FileNotFoundError:
            raise StoreCorruptError(f"alive bitmap {apath} is missing", apath) from None
        if len(raw) != m.alive.bytes or _digest(raw) != m.alive.blake2b:
            raise StoreCorruptError(f"alive bitmap {apath} fails its checksum", apath)
        self._alive = np.unpackbits(
            np.frombuffer(raw, np.uint8), count=m.n_rows, bitorder="little"
        ).astype(bool)
        self._n_live = int(self._alive.sum())
        if self._n_live != m.n_live:
            raise StoreCorruptError(
                f"alive bitmap {apath} has {self._n_live} live rows, expected {m.n_live}", apath
            )
        self._set_db(NodeDB(home / m.db_file))
        uid = self._db.get_meta("store_uid")
        committed = int(self._db.get_meta("committed_generation") or -1)
        if uid != m.store_uid or committed < m.generation:
            raise StoreCorruptError(
                f"node database {self._db.path} does not belong to generation {m.generation} "
                f"of this store (uid {uid}, committed {committed})",
                self._db.path,
            )
        if verify and self._db.count_live(m.generation) != m.n_live:
            raise StoreCorruptError(
                f"node database {self._db.path} disagrees with the alive bitmap", self._db.path
            )
        if m.index is not None:
            self._ann = AnnIndex.load(home, m.index, verify)
            self._ann.use_gpu(self._cfg.use_gpu)
            self._ann_trained_on, self._index_entry = m.index.trained_on, m.index

    def compact(self, *, show_progress: bool = True) -> None:
        """Rewrite memory and nodes without deleted/superseded rows, then rebuild the
        index. Node ids are kept. A persisted store is persisted again (atomically)."""
        with self._lock.write():
            self._begin_write()
            db_file = unique_name("nodes", ".sqlite")
            self._db.backup_to(self._work_dir / db_file)
            new_db = NodeDB(self._work_dir / db_file)
            new_db.purge_dead(self._view)
            rows = MemoryRows(self._cfg.dim, self._cfg.dtype, self._cfg.numpy_dtype)
            pairs: list[tuple[int, int]] = []
            with tqdm(
                total=self._n_live, desc="compacting", unit="row", disable=not show_progress
            ) as bar:
                for batch in new_db.iter_live(self._view):
                    data, inv = self._rows.gather(np.array([v.row for v in batch], dtype=np.int64))
                    start = rows.append(data, inv)
                    pairs.extend((start + j, v.vid) for j, v in enumerate(batch))
                    if rows.ram_bytes() >= self._cfg.segment_bytes:
                        rows.flush(self._work_dir, mmap=self._mmap)
                    bar.update(len(batch))
            rows.flush(self._work_dir, mmap=self._mmap)
            new_db.remap_rows(pairs)
            old_db = self._db
            self._set_db(new_db)
            old_db.close()
            old_rows, self._db_file = self._rows, db_file
            self._rows = self._res.rows = rows
            old_rows.close()
            self._alive = np.ones(rows.n_rows, dtype=bool)
            self._set_ann(None)
            if self._cfg.index != "flat" and self._n_live >= 2:
                self._set_ann(self._trained(self._cfg, show_progress))
            if self._home is not None:
                self.persist(show_progress=show_progress)


def _digest(data: bytes) -> str:
    h = new_hasher()
    h.update(data)
    return h.hexdigest()


def _collect_garbage(directory: Path, m: Manifest) -> None:
    """Delete store files that the (durable) manifest ``m`` does not name."""
    keep = {
        MANIFEST_NAME,
        LOCK_NAME,
        m.alive.file,
        m.db_file,
        f"{m.db_file}-wal",
        f"{m.db_file}-shm",
    }
    keep.update(s.file for s in m.segments)
    if m.index is not None:
        keep.add(m.index.index.file)
        if m.index.reducer is not None:
            keep.add(m.index.reducer.file)
    for entry in directory.iterdir():
        name = entry.name
        if name in keep or not (name.startswith(_GC_PREFIXES) or ".tmp-" in name):
            continue
        try:
            entry.unlink()
        except OSError as exc:  # pragma: no cover - best effort
            logger.warning("could not remove stale store file %s: %s", entry, exc)
