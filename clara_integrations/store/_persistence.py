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
    is_created_file_name,
    link_or_copy,
    new_hasher,
    replace_atomic,
    unique_name,
    write_file_durable,
)
from .ann import AnnIndex
from .config import RUNTIME_FIELDS, StoreConfig
from .errors import StoreCorruptError, StoreMismatchError, StoreStaleError
from .manifest import MANIFEST_NAME, FileEntry, IndexEntry, Manifest
from .nodes import NodeDB
from .segments import MemoryRows

if TYPE_CHECKING:
    from .memory_store import MemoryStore

logger = logging.getLogger(__name__)

_SMALL_FILE = 64 << 20  # files up to this size are checksummed on every load
_LOAD_ATTEMPTS = 5  # a load that races another writer's garbage collection starts over

#: Testing aid: when set, called with the name of each persist stage ("segments",
#: "files", "db", "manifest", "gc"), e.g. to kill the process at a precise point.
_persist_hook: Callable[[str], None] | None = None


def _stage(name: str) -> None:
    if _persist_hook is not None:
        _persist_hook(name)


class PersistenceMixin:
    """persist / load / compact (see :class:`MemoryStore`)."""

    def persist(
        self,
        path: str | Path | None = None,
        *,
        overwrite: bool = False,
        show_progress: bool = True,
    ) -> Path:
        """Atomically write the current state to ``path`` (default: where it lives).

        Protocol (a crash at any point leaves the previous version loadable):

        1. new memory rows go to a *new* segment file; earlier segments are untouched
           (persisting to another directory hard-links them, or copies across devices);
        2. the alive bitmap and, if it changed, the index are written under new names;
        3. the new version is checked (row, bitmap and node counts agree) and all of it
           is fsync'd; then the node database commits (fsync'd) a
           ``committed_generation`` stamp - its rows were written earlier, stamped
           with the new generation, so older readers ignore them;
        4. ``manifest.json`` is replaced atomically (temp + fsync + rename + fsync dir):
           this is the commit point;
        5. once the new manifest reads back and names files that all exist, the store
           files it does not name are deleted - only names the store itself gives its
           files; nothing else in the directory is touched.

        One writer at a time: the directory's writer lock is held from the first change
        after a load or persist until the next persist (or close). A handle that another
        writer overtook (it committed a newer generation since this handle loaded or last
        persisted) cannot write; see :class:`StoreStaleError`.

        After persisting elsewhere the store lives in the new directory.

        Args:
            path: target directory (created if missing). Default: the store's own.
            overwrite: allow replacing another store that ``path`` already holds.
            show_progress: show progress bars (index training).

        Returns:
            The directory.

        Raises:
            ValueError: no path and the store was never persisted, or an empty path.
            FileExistsError: ``path`` holds another store and ``overwrite`` is False.
            StoreLockedError: another process or handle writes to that directory.
            StoreStaleError: another writer committed to this store's directory since.
        """
        with self._writing():
            target = self._persist_target(path)
            same = target == self._home
            if same and not self._dirty:
                return target
            if same:
                self._begin_write()  # the writer lock and the staleness check
            else:
                target.mkdir(parents=True, exist_ok=True)
            new_lock = None if same else DirLock(target)
            try:
                if not same:
                    _refuse_other_store(target, overwrite)
                manifest, new_db = self._write_version(target, same, show_progress)
            except BaseException:
                if new_lock is not None:
                    new_lock.release()
                raise
            self._committed = self._view = manifest.generation
            self._dirty = False
            if not same:
                self._rebind(target, new_db, new_lock, manifest.db_file)
            try:  # garbage collection under the lock: no other writer has new files yet
                _check_committed(target, manifest)
                _collect_garbage(target, manifest)
                _stage("gc")
            finally:
                self._release_writer_lock()
            return target

    def _persist_target(self, path: str | Path | None) -> Path:
        if path is None:
            if self._home is None:
                raise ValueError("persist() needs a path the first time")
            return self._home
        if isinstance(path, str) and not path.strip():
            raise ValueError("persist() got an empty path; name the store directory")
        return Path(path).resolve()

    def _release_writer_lock(self) -> None:
        """After a commit this handle has nothing unsaved: let other handles write."""
        if self._res.lock is not None:
            self._res.lock.release()
            self._res.lock = None

    def _check_current(self) -> None:
        """Raise :class:`StoreStaleError` unless the directory's committed version is
        the one this handle is based on (call with the directory's writer lock held)."""
        m = Manifest.read(self._home)
        if m.store_uid != self._uid or m.generation != self._committed:
            other = "another store" if m.store_uid != self._uid else "another writer"
            raise StoreStaleError(
                f"the store at {self._home} is at generation {m.generation}, committed by "
                f"{other}, but this handle is based on generation {self._committed}: "
                "writing would overwrite that commit. Reload it with "
                "MemoryStore.load(path) and repeat the change",
                self._committed,
                m.generation,
            )

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
        meta = {"committed_generation": str(gen), "store_uid": self._uid}
        new_db = None
        if same:
            db_file, db = self._db_file, self._db
        else:
            db_file = unique_name("nodes", ".sqlite")
            self._db.backup_to(target / db_file)
            db = new_db = NodeDB(target / db_file)
        try:
            if not same and self._home is not None and self._res.lock is None:
                # Not writing at home, so the copy holds no changes of ours, but may hold
                # another writer's uncommitted (or newer) ones: back to our generation.
                db.rollback_after(self._committed)
            self._check_consistent(db, gen)
            db.set_meta(meta, durable=True)
        except BaseException:
            if new_db is not None:
                new_db.close()
            raise
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

    def _check_consistent(self, db: NodeDB, gen: int) -> None:
        """Refuse to commit a version that would not load: rows, the alive bitmap, the
        live count and the node database must agree."""
        n_alive = int(self._alive[: self._rows.n_rows].sum())
        n_nodes = db.count_live(gen)
        if not n_alive == self._n_live == n_nodes:
            raise StoreCorruptError(
                f"refusing to commit generation {gen}: {n_alive} live rows, "
                f"{self._n_live} live nodes counted, {n_nodes} in {db.path}; the previous "
                "version is kept",
                db.path,
            )

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
        for attempt in range(_LOAD_ATTEMPTS):
            m = Manifest.read(home)
            try:
                return cls._load_version(home, m, mmap, model, fingerprint, verify, runtime)
            except StoreCorruptError:
                # A writer that committed meanwhile may have collected our version's
                # files: that is a race, not damage, when the manifest has moved on.
                if attempt + 1 == _LOAD_ATTEMPTS or _same_version(Manifest.read(home), m):
                    raise
                logger.debug("store at %s changed while loading; loading again", home)
        raise AssertionError("unreachable")

    @classmethod
    def _load_version(
        cls,
        home: Path,
        m: Manifest,
        mmap: bool,
        model: Any,
        fingerprint: str | None,
        verify: bool,
        runtime: dict[str, Any],
    ) -> MemoryStore:
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
        if verify:
            self._db.verify()
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
        with self._writing():
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


def _same_version(a: Manifest, b: Manifest) -> bool:
    return (a.store_uid, a.generation) == (b.store_uid, b.generation)


def _refuse_other_store(target: Path, overwrite: bool) -> None:
    """Persisting into a directory that already holds a store replaces that store:
    only when asked."""
    if overwrite or not (target / MANIFEST_NAME).exists():
        return
    try:
        m = Manifest.read(target)
        what = f"a store (generation {m.generation}, {m.n_live} nodes, {m.fingerprint})"
    except StoreCorruptError:
        what = "a store manifest"
    raise FileExistsError(
        f"{target} already holds {what}; persist to an empty directory, or pass "
        "overwrite=True to replace it"
    )


def _check_committed(directory: Path, m: Manifest) -> None:
    """The manifest on disk is ``m`` and names files that exist with their sizes (the
    old version's files are collected only after this)."""
    on_disk = Manifest.read(directory)
    if not _same_version(on_disk, m):
        raise StoreCorruptError(
            f"manifest in {directory} is generation {on_disk.generation} right after "
            f"committing {m.generation}; not collecting garbage",
            directory / MANIFEST_NAME,
        )
    files = [*m.segments, m.alive]
    if m.index is not None:
        files += [f for f in (m.index.index, m.index.reducer) if f is not None]
    for f in files:
        path = directory / f.file
        if not path.is_file() or path.stat().st_size != f.bytes:
            raise StoreCorruptError(f"committed file {path} is missing or truncated", path)
    if not (directory / m.db_file).is_file():
        raise StoreCorruptError(f"committed node database {m.db_file} is missing", directory)


def _collect_garbage(directory: Path, m: Manifest) -> None:
    """Delete store files that the (durable, checked) manifest ``m`` does not name.

    Only names the store gives its own files are candidates (see
    :func:`._files.is_created_file_name`): a user's ``nodes-export.csv`` stays.
    """
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
        if name in keep or not is_created_file_name(name) or not entry.is_file():
            continue
        try:
            entry.unlink()
        except OSError as exc:  # pragma: no cover - best effort
            logger.warning("could not remove stale store file %s: %s", entry, exc)
