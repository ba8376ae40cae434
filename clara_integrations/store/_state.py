"""The state of one :class:`MemoryStore` handle, in one place.

Every field a handle keeps is declared here, and every change of the handle's life
cycle (first write, commit, closing) is a method here; ``memory_store.py`` (the public
API), ``_indexing.py`` and ``_persistence.py`` are functions and methods that read the
state and call these. Callers hold the store's readers-writer lock.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._dirlock import DirLock
from ._files import unique_name
from ._search import block_rows_for
from .ann import AnnIndex
from .config import StoreConfig
from .errors import StoreClosedError, StoreStaleError
from .manifest import IndexEntry, Manifest
from .nodes import NodeDB
from .segments import MemoryRows, from_torch, inverse_norms

# One counter for every handle of the process, so a revision never repeats across stores
# (a cache keyed on it cannot mistake one store, or one reload, for another).
_REVISIONS = itertools.count(1)


@dataclass
class Resources:
    """OS resources released when the store is closed or garbage-collected (kept apart
    from :class:`StoreState` so that ``weakref.finalize`` does not keep the store alive)."""

    db: NodeDB | None = None
    rows: MemoryRows | None = None
    lock: DirLock | None = None
    scratch: Path | None = None
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        if self.db is not None:
            self.db.close()
        if self.rows is not None:
            self.rows.close()
        self.release_lock()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@dataclass
class IndexSlot:
    """The ANN index and what is known about its files."""

    ann: AnnIndex | None = None
    trained_on: int = 0  #: rows the index was trained over (retrain after 4x growth)
    entry: IndexEntry | None = None  #: files of the current index, once saved
    bitmap: np.ndarray | None = None  #: cached packed alive bits over indexed rows


@dataclass
class StoreState:
    """What one handle knows about its store."""

    cfg: StoreConfig
    uid: str  #: identity of the store across versions and directories
    db: NodeDB
    db_file: str
    rows: MemoryRows
    home: Path | None  #: the directory it was persisted to / loaded from
    work_dir: Path  #: where new files go: ``home``, or a scratch directory before persist
    committed: int  #: the generation this handle is based on
    mmap: bool
    res: Resources
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    n_live: int = 0
    view: int = 0  #: the generation reads see: ``committed``, or the open one while writing
    dirty: bool = False  #: changes not yet committed
    settings_changed: bool = False  #: configure() since the last commit (the manifest keeps them)
    index: IndexSlot = field(default_factory=IndexSlot)
    filter_cache: dict[str, np.ndarray] = field(default_factory=dict)
    block_rows: int = 0
    #: changes whenever the nodes may have (add, update, delete); derived caches key on it
    revision: int = field(default_factory=lambda: next(_REVISIONS))

    def __post_init__(self) -> None:
        self.view = self.committed
        self.res.db, self.res.rows = self.db, self.rows
        self.block_rows = block_rows_for(self.cfg.dim, self.cfg.scan_block_bytes)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def fresh(cls, cfg: StoreConfig, scratch_dir: str | Path | None) -> StoreState:
        """A new, empty store whose files live in a scratch directory until persisted."""
        scratch = Path(tempfile.mkdtemp(prefix="clara-store-", dir=scratch_dir))
        db_file = unique_name("nodes", ".sqlite")
        res = Resources(scratch=scratch)
        try:
            db = NodeDB(scratch / db_file, create=True)
        except BaseException:
            res.close()
            raise
        state = cls(
            cfg=cfg,
            uid=uuid.uuid4().hex,
            db=db,
            db_file=db_file,
            rows=empty_rows(cfg),
            home=None,
            work_dir=scratch,
            committed=0,
            mmap=True,
            res=res,
        )
        state.dirty = True  # a fresh store is unsaved until its first persist
        return state

    # -- life cycle -------------------------------------------------------------------
    def check_open(self) -> None:
        if self.res.closed:
            where = f" at {self.home}" if self.home is not None else ""
            raise StoreClosedError(
                f"the store{where} is closed; open it again with MemoryStore.load(path)"
            )

    def begin_write(self, *, changes_nodes: bool = True) -> None:
        """Every write calls this first (``changes_nodes=False``: one that keeps every
        node's text, metadata and memory - persist, compact, an index rebuild - and so
        keeps the ``revision`` that caches of derived data key on). The first write after a load or persist takes
        the directory's writer lock, refuses to go on if another writer has committed
        since (:class:`StoreStaleError`), and undoes what a writer that died uncommitted
        left in the node database."""
        if self.home is not None and self.res.lock is None:
            lock = DirLock(self.home)
            try:
                self.check_current()
                self.db.rollback_after(self.committed)
            except BaseException:
                lock.release()
                raise
            self.res.lock = lock
        self.view = self.committed + 1
        self.dirty = True
        if changes_nodes:
            self.revision = next(_REVISIONS)
        self.filter_cache.clear()
        self.index.bitmap = None

    def check_current(self) -> None:
        """Raise :class:`StoreStaleError` unless the directory's committed version is
        the one this handle is based on (call with the directory's writer lock held)."""
        m = Manifest.read(self.home)
        if m.store_uid != self.uid or m.generation != self.committed:
            other = "another store" if m.store_uid != self.uid else "another writer"
            raise StoreStaleError(
                f"the store at {self.home} is at generation {m.generation}, committed by "
                f"{other}, but this handle is based on generation {self.committed}: "
                "writing would overwrite that commit. Reload it with "
                "MemoryStore.load(path) and repeat the change",
                self.committed,
                m.generation,
            )

    def committed_as(self, generation: int) -> None:
        """A commit succeeded: the handle is now based on ``generation``, clean."""
        self.committed = self.view = generation
        self.dirty = self.settings_changed = False

    def set_db(self, db: NodeDB, db_file: str) -> None:
        old, self.db, self.db_file = self.db, db, db_file
        self.res.db = db
        if old is not db:
            old.close()

    def set_rows(self, rows: MemoryRows, alive: np.ndarray) -> None:
        old, self.rows, self.alive = self.rows, rows, alive
        self.res.rows = rows
        old.close()

    def move_to(self, directory: Path, lock: DirLock | None) -> None:
        """The store now lives in ``directory`` (after persisting there)."""
        self.res.release_lock()
        self.res.lock = lock
        for piece in self.rows.pieces:
            piece.directory = directory
        self.home = self.work_dir = directory
        if self.res.scratch is not None:
            shutil.rmtree(self.res.scratch, ignore_errors=True)
            self.res.scratch = None

    # -- rows -------------------------------------------------------------------------
    def append_rows(self, mem: torch.Tensor) -> int:
        """Append rows, still dead (not alive): they go live (:meth:`mark_live`) only once
        the node database names them. If writing a segment fails (disk full, file too
        large) the rows are taken back and the store is as before; if the database write
        fails afterwards, they stay dead rows that no node names (compaction drops them).
        """
        start = self.rows.append(from_torch(mem, self.cfg.dtype), inverse_norms(mem))
        if self.rows.n_rows > self.alive.shape[0]:
            grown = np.zeros(max(self.rows.n_rows, 2 * self.alive.shape[0], 1024), dtype=bool)
            grown[: self.alive.shape[0]] = self.alive
            self.alive = grown
        if self.rows.ram_bytes() >= self.cfg.segment_bytes:
            try:
                self.rows.flush(self.work_dir, mmap=self.mmap)
            except BaseException:
                self.rows.drop_tail(start)
                raise
        return start

    def mark_live(self, start: int, n: int) -> None:
        self.alive[start : start + n] = True

    def mark_dead(self, rows: list[int]) -> None:
        self.alive[rows] = False


def empty_rows(cfg: StoreConfig) -> MemoryRows:
    return MemoryRows(cfg.dim, cfg.dtype, cfg.numpy_dtype)
