"""Persistence of a store: atomic persist, load, compaction, garbage collection.

Functions of a :class:`~._state.StoreState`, called by :class:`MemoryStore` under its
write lock. The commit protocol is described in :func:`persist`; the directory layout
in ``memory_store.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import _indexing as indexing
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
from ._state import Resources, StoreState, empty_rows
from .ann import AnnIndex
from .config import RUNTIME_FIELDS, StoreConfig
from .errors import StoreCorruptError, StoreMismatchError
from .manifest import MANIFEST_NAME, FileEntry, IndexEntry, Manifest
from .nodes import NodeDB

logger = logging.getLogger(__name__)

_SMALL_FILE = 64 << 20  # files up to this size are checksummed on every load
_LOAD_ATTEMPTS = 5  # a load that races another writer's garbage collection starts over

#: Testing aid: when set, called with the name of each persist stage ("segments",
#: "files", "db", "manifest", "gc"), e.g. to kill the process at a precise point.
_persist_hook: Callable[[str], None] | None = None


def _stage(name: str) -> None:
    if _persist_hook is not None:
        _persist_hook(name)


# ---------------------------------------------------------------------- persist
def persist_target(st: StoreState, path: str | Path | None) -> Path:
    if path is None:
        if st.home is None:
            raise ValueError("persist() needs a path the first time")
        return st.home
    if isinstance(path, str) and not path.strip():
        raise ValueError("persist() got an empty path; name the store directory")
    return Path(path).resolve()


def persist(st: StoreState, target: Path, *, overwrite: bool, show_progress: bool) -> None:
    """Commit the handle's state as a new generation in ``target`` (see
    :meth:`MemoryStore.persist` for the protocol)."""
    same = target == st.home
    if same and not (st.dirty or st.settings_changed):
        return
    before: set[str] | None = None  # store files in target before this persist wrote any
    if same:
        st.begin_write(changes_nodes=False)  # the writer lock and the staleness check
    else:
        target.mkdir(parents=True, exist_ok=True)
        _refuse_other_store(target, overwrite)  # before the lock: a refusal leaves no file
    new_lock = None if same else DirLock(target)
    try:
        if not same:
            _refuse_other_store(target, overwrite)  # again under the lock (a racing writer)
            before = set(_created_files(target))
        manifest, new_db = _write_version(st, target, same, show_progress)
    except BaseException:
        if before is not None:  # only once we know which files were there (not after a refusal)
            _remove_uncommitted(target, before, st.uid)
        if new_lock is not None:
            new_lock.release()
        raise
    st.committed_as(manifest.generation)
    if not same:
        st.set_db(new_db, manifest.db_file)
        st.move_to(target, new_lock)
    try:  # garbage collection under the lock: no other writer has new files yet
        _check_committed(target, manifest)
        _collect_garbage(target, manifest)
        _stage("gc")
    finally:
        st.res.release_lock()  # nothing unsaved: let other handles write


def _write_version(
    st: StoreState, target: Path, same: bool, show_progress: bool
) -> tuple[Manifest, NodeDB | None]:
    gen = st.committed + 1
    indexing.refresh(st, show_progress)
    st.rows.flush(st.work_dir, mmap=st.mmap)
    _stage("segments")
    for piece in st.rows.pieces:
        if piece.directory != target:
            link_or_copy(piece.directory / piece.entry.file, target / piece.entry.file)
    alive_name = unique_name(f"alive-{gen}", ".bits")
    bits = np.packbits(st.alive[: st.rows.n_rows], bitorder="little").tobytes()
    alive = FileEntry(
        file=alive_name, bytes=len(bits), blake2b=write_file_durable(target / alive_name, bits)
    )
    index_entry = _save_index(st, target)
    _stage("files")
    fsync_dir(target)
    meta = {"committed_generation": str(gen), "store_uid": st.uid}
    new_db = None
    if same:
        db_file, db = st.db_file, st.db
    else:
        db_file = unique_name("nodes", ".sqlite")
        st.db.backup_to(target / db_file)
        db = new_db = NodeDB(target / db_file)
    try:
        if not same and st.home is not None and st.res.lock is None:
            # Not writing at home, so the copy holds no changes of ours, but may hold
            # another writer's uncommitted (or newer) ones: back to our generation.
            db.rollback_after(st.committed)
        _check_consistent(st, db, gen)
        db.set_meta(meta, durable=True)
        fsync_dir(target)
        _stage("db")
        manifest = Manifest(
            store_uid=st.uid,
            generation=gen,
            config=st.cfg,
            fingerprint=st.cfg.fingerprint,
            db_file=db_file,
            n_rows=st.rows.n_rows,
            n_live=st.n_live,
            segments=st.rows.segment_entries(),
            alive=alive,
            index=index_entry,
        )
        replace_atomic(target / MANIFEST_NAME, manifest.to_bytes())
        _stage("manifest")
    except BaseException:
        if new_db is not None:
            new_db.close()  # its file may be removed as uncommitted (persist)
        raise
    st.index.entry = index_entry
    return manifest, new_db


def _check_consistent(st: StoreState, db: NodeDB, gen: int) -> None:
    """Refuse to commit a version that would not load: rows, the alive bitmap, the live
    count and the node database must agree."""
    n_alive = int(st.alive[: st.rows.n_rows].sum())
    n_nodes = db.count_live(gen)
    if not n_alive == st.n_live == n_nodes:
        raise StoreCorruptError(
            f"refusing to commit generation {gen}: {n_alive} live rows, "
            f"{st.n_live} live nodes counted, {n_nodes} in {db.path}; the previous "
            "version is kept",
            db.path,
        )


def _save_index(st: StoreState, target: Path) -> IndexEntry | None:
    if st.index.ann is None:
        return None
    entry = st.index.entry
    if entry is None:
        return st.index.ann.save(target, st.index.trained_on)
    if st.home != target:
        for f in (entry.index, entry.reducer):
            if f is not None:
                link_or_copy(st.home / f.file, target / f.file)
    return entry


# ---------------------------------------------------------------------- load
def load_state(
    path: str | Path,
    *,
    mmap: bool,
    model: Any,
    fingerprint: str | None,
    verify: bool,
    runtime: dict[str, Any],
) -> StoreState:
    """Open the committed version of the store at ``path`` (see :meth:`MemoryStore.load`)."""
    home = Path(path).resolve()
    for attempt in range(_LOAD_ATTEMPTS):
        m = Manifest.read(home)
        cfg = _load_config(home, m, model, fingerprint, runtime)
        try:
            return _open_version(home, m, cfg, mmap, verify)
        except (StoreCorruptError, FileNotFoundError) as exc:
            # A writer that committed meanwhile may have collected our version's files
            # (between a file's size check and its opening, too): that is a race, not
            # damage, when the manifest has moved on.
            if attempt + 1 == _LOAD_ATTEMPTS or _same_version(Manifest.read(home), m):
                if isinstance(exc, FileNotFoundError):
                    raise StoreCorruptError(
                        f"store file {exc.filename} is missing", exc.filename
                    ) from None
                raise
            logger.debug("store at %s changed while loading; loading again", home)
    raise AssertionError("unreachable")


def _load_config(
    home: Path, m: Manifest, model: Any, fingerprint: str | None, runtime: dict[str, Any]
) -> StoreConfig:
    if fingerprint is not None and fingerprint != m.fingerprint:
        raise StoreMismatchError(
            f"store at {home} has fingerprint {m.fingerprint!r}, expected {fingerprint!r}"
        )
    bad = set(runtime) - RUNTIME_FIELDS
    if bad:
        raise ValueError(
            f"load() only overrides runtime settings {sorted(RUNTIME_FIELDS)}; got {sorted(bad)}"
        )
    cfg = StoreConfig.model_validate({**m.config.model_dump(), **runtime})
    if model is not None:
        check.model_shape(model, cfg)
    return cfg


def _open_version(
    home: Path, m: Manifest, cfg: StoreConfig, mmap: bool, verify: bool
) -> StoreState:
    res = Resources()
    try:
        res.rows = rows = empty_rows(cfg)
        for seg in m.segments:
            piece = rows.open_segment(
                home, seg, mmap=mmap, verify=verify or seg.bytes <= _SMALL_FILE
            )
            rows.add_segment(piece)
        if rows.n_rows != m.n_rows:
            raise StoreCorruptError(
                f"manifest {home / MANIFEST_NAME} lists {rows.n_rows} rows, expected {m.n_rows}",
                home / MANIFEST_NAME,
            )
        alive = _read_alive(home, m)
        res.db = db = NodeDB(home / m.db_file)
        _check_db(db, m, verify)
        ann = None
        if m.index is not None:
            ann = AnnIndex.load(home, m.index, verify)
            ann.use_gpu(cfg.use_gpu)
    except BaseException:
        res.close()
        raise
    st = StoreState(
        cfg=cfg,
        uid=m.store_uid,
        db=db,
        db_file=m.db_file,
        rows=rows,
        home=home,
        work_dir=home,
        committed=m.generation,
        mmap=mmap,
        res=res,
        alive=alive,
        n_live=m.n_live,
    )
    if ann is not None:
        st.index.ann, st.index.trained_on, st.index.entry = ann, m.index.trained_on, m.index
    return st


def _read_alive(home: Path, m: Manifest) -> np.ndarray:
    apath = home / m.alive.file
    try:
        raw = apath.read_bytes()
    except FileNotFoundError:
        raise StoreCorruptError(f"alive bitmap {apath} is missing", apath) from None
    if len(raw) != m.alive.bytes or _digest(raw) != m.alive.blake2b:
        raise StoreCorruptError(f"alive bitmap {apath} fails its checksum", apath)
    alive = np.unpackbits(np.frombuffer(raw, np.uint8), count=m.n_rows, bitorder="little")
    alive = alive.astype(bool)
    n_live = int(alive.sum())
    if n_live != m.n_live:
        raise StoreCorruptError(
            f"alive bitmap {apath} has {n_live} live rows, expected {m.n_live}", apath
        )
    return alive


def _check_db(db: NodeDB, m: Manifest, verify: bool) -> None:
    uid = db.get_meta("store_uid")
    committed = int(db.get_meta("committed_generation") or -1)
    if uid != m.store_uid or committed < m.generation:
        raise StoreCorruptError(
            f"node database {db.path} does not belong to generation {m.generation} "
            f"of this store (uid {uid}, committed {committed})",
            db.path,
        )
    if verify:
        db.verify()
        if db.count_live(m.generation) != m.n_live:
            raise StoreCorruptError(
                f"node database {db.path} disagrees with the alive bitmap", db.path
            )


# ---------------------------------------------------------------------- compaction
def compact(st: StoreState, show_progress: bool) -> None:
    """Rewrite memory and nodes without dead rows, then rebuild the index (see
    :meth:`MemoryStore.compact`)."""
    st.begin_write(changes_nodes=False)
    db_file = unique_name("nodes", ".sqlite")
    st.db.backup_to(st.work_dir / db_file)
    new_db = NodeDB(st.work_dir / db_file)
    new_db.purge_dead(st.view)
    rows = empty_rows(st.cfg)
    pairs: list[tuple[int, int]] = []
    with tqdm(total=st.n_live, desc="compacting", unit="row", disable=not show_progress) as bar:
        for batch in new_db.iter_live(st.view):
            data, inv = st.rows.gather(np.array([v.row for v in batch], dtype=np.int64))
            start = rows.append(data, inv)
            pairs.extend((start + j, v.vid) for j, v in enumerate(batch))
            if rows.ram_bytes() >= st.cfg.segment_bytes:
                rows.flush(st.work_dir, mmap=st.mmap)
            bar.update(len(batch))
    rows.flush(st.work_dir, mmap=st.mmap)
    new_db.remap_rows(pairs)
    st.set_db(new_db, db_file)
    st.set_rows(rows, np.ones(rows.n_rows, dtype=bool))
    indexing.set_ann(st, None)
    if st.cfg.index != "flat" and st.n_live >= 2:
        indexing.set_ann(st, indexing.trained(st, st.cfg, show_progress))


def _digest(data: bytes) -> str:
    h = new_hasher()
    h.update(data)
    return h.hexdigest()


def _same_version(a: Manifest, b: Manifest) -> bool:
    return (a.store_uid, a.generation) == (b.store_uid, b.generation)


def _created_files(directory: Path) -> list[str]:
    """Names in ``directory`` that the store gives its own files (sorted)."""
    return sorted(e.name for e in directory.iterdir() if is_created_file_name(e.name))


def _remove_uncommitted(target: Path, before: set[str], uid: str) -> None:
    """After a failed persist into another directory: remove the files it created there,
    unless its manifest was committed (then they are the store), so that the directory is
    as it was and a retry is not refused as "files without a manifest"."""
    try:
        if Manifest.read(target).store_uid == uid:
            return
    except (OSError, StoreCorruptError):
        pass  # no manifest, or not ours
    for name in set(_created_files(target)) - before:
        try:
            (target / name).unlink()
        except OSError as exc:  # pragma: no cover - best effort, the error is re-raised
            logger.warning("could not remove %s left by a failed persist: %s", target / name, exc)


def _refuse_other_store(target: Path, overwrite: bool) -> None:
    """Persisting into a directory that already holds a store replaces that store:
    only when asked. Store data files without a manifest (a store whose manifest was
    lost, or a persist that was killed) count as a store: garbage collection would
    delete them."""
    if overwrite:
        return
    if not (target / MANIFEST_NAME).exists():
        orphans = _created_files(target)
        if orphans:
            shown = ", ".join(orphans[:3]) + (", ..." if len(orphans) > 3 else "")
            raise FileExistsError(
                f"{target} holds {len(orphans)} store data files ({shown}) but no "
                f"{MANIFEST_NAME}: a store whose manifest was lost, or a persist that was "
                "interrupted. Persisting there would delete them: restore the manifest and "
                "MemoryStore.load() it, persist to another directory, or pass "
                "overwrite=True to replace them"
            )
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
