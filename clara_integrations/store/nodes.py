"""SQLite table of nodes (id, text, metadata) with generation stamps.

Each row of ``nodes`` is one *version* of a node. A version is visible in generation
``v`` when ``gen_added <= v`` and it was not retired at or before ``v``. Writes between two
``persist`` calls are stamped with the next generation, so a reader that loaded the last
manifest (generation ``G``) simply does not see them; a crash before the manifest names
``G + 1`` therefore loses nothing and exposes nothing half-written. The first writer after
such a crash deletes the leftovers (:meth:`NodeDB.rollback_after`).

Old versions are kept until :meth:`MemoryStore.compact`, so a process still serving an
older generation keeps seeing consistent text and metadata.

Every version carries a checksum (``crc``) of all its columns, checked whenever a node
is read, so a damaged byte surfaces as :class:`StoreCorruptError` naming the node, never
as changed text or a raw ``JSONDecodeError``. Databases written before checksums existed
get them on their first write (readers skip rows whose ``crc`` is NULL).

Connections never create files: a reader whose database file was replaced by another
process (compaction) keeps using the connections it already has, which still see the
file it loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreClosedError, StoreCorruptError
from .filters import JSON_TYPE_SQL, compile_filters, index_pairs

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes(
    vid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    row INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    gen_added INTEGER NOT NULL,
    gen_deleted INTEGER,
    crc TEXT
);
CREATE INDEX IF NOT EXISTS nodes_id ON nodes(id);
CREATE INDEX IF NOT EXISTS nodes_row ON nodes(row);
CREATE TABLE IF NOT EXISTS node_meta(vid INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS node_meta_kv ON node_meta(key, value, vid);
CREATE INDEX IF NOT EXISTS node_meta_vid ON node_meta(vid);
"""
_SELECT = "n.vid, n.id, n.row, n.text, n.metadata, n.gen_added, n.gen_deleted, n.crc"
_SELECT_OLD = _SELECT.replace("n.crc", "NULL")  # databases from before row checksums
_LIVE = "n.gen_added <= ? AND (n.gen_deleted IS NULL OR n.gen_deleted > ?)"
_CHUNK = 900  # stay far below SQLite's bound-parameter limit
_SQLITE_MAGIC = b"SQLite format 3\x00"


_COLUMNS = "vid, id, row, text, metadata, gen_added, gen_deleted"
_CRC_SQL = f"clara_crc({_COLUMNS})"  # the same function, registered on every connection


def row_checksum(
    vid: int, id: str, row: int, text: str, metadata: str, gen_added: int, gen_deleted: Any
) -> str:
    """blake2b-64 of every column of a node version (``gen_deleted`` None -> "")."""
    parts = (vid, id, row, text, metadata, gen_added, "" if gen_deleted is None else gen_deleted)
    body = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def _chunks(seq: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class LiveNode:
    """A node version as read from SQLite (internal)."""

    __slots__ = ("vid", "id", "row", "text", "metadata", "gen_added")

    def __init__(self, vid: int, id: str, row: int, text: str, metadata: str, gen: int):
        self.vid, self.id, self.row, self.text = vid, id, row, text
        self.metadata, self.gen_added = metadata, gen

    @classmethod
    def checked(cls, record: tuple, path: Path) -> LiveNode:
        """From a record of the ``_SELECT`` columns, verifying its checksum."""
        vid, id, row, text, metadata, gen, gen_deleted, crc = record
        if crc is not None and crc != row_checksum(vid, id, row, text, metadata, gen, gen_deleted):
            raise StoreCorruptError(
                f"node {id!r} (version {vid}, row {row}) in {path} fails its checksum: the "
                "node database is damaged; restore the store directory from a backup",
                path,
            )
        return cls(vid, id, row, text, metadata, gen)


class NodeDB:
    """One SQLite file; a pool of read connections and one writer connection.

    Callers (the store) serialise writers and keep readers off while a write runs.
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create:
            self._check_header()
        self._idle: list[sqlite3.Connection] = []  # pooled read connections
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Condition(threading.Lock())
        self._writer: sqlite3.Connection | None = None
        self._closed = False
        self._next_vid: int | None = None
        if create:
            self._writer = self._open(create=True)
            self._writer.executescript(_SCHEMA)
        # One connection now, so that readers always have one to the file they loaded
        # even if it is later deleted and replaced (see ``reading``).
        first = self._open()
        self._file_id = _file_id(self.path)
        self._idle.append(first)
        try:
            self._has_crc = _has_column(first, "nodes", "crc")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreCorruptError(
                f"cannot read node database {self.path}: {exc}", self.path
            ) from exc

    # -- connections ------------------------------------------------------------------
    def _check_header(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise StoreCorruptError(
                f"node database {self.path} is missing: {exc}", self.path
            ) from None
        if head != _SQLITE_MAGIC:
            raise StoreCorruptError(f"{self.path} is not an SQLite database", self.path)

    def _open(self, *, create: bool = False) -> sqlite3.Connection:
        # mode=rw: a connection never creates a database file. Without it, a connection
        # opened after another process deleted the file made a new, empty one.
        mode = "rwc" if create else "rw"
        try:
            conn = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as exc:
            raise StoreCorruptError(
                f"cannot open node database {self.path}: {exc}", self.path
            ) from None
        conn.create_function("clara_crc", 7, row_checksum, deterministic=True)
        try:
            with self._damage_named():
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Borrow a read connection from the pool (WAL: readers never block each other).

        A pool rather than one connection per thread: servers that start a thread per
        request would otherwise leave a connection behind for every dead thread. The pool
        grows only while the file on disk is still the one this object opened; once
        another process has deleted or replaced it, callers wait for a pooled connection.

        Raises:
            StoreClosedError: the database (its store) was closed.
        """
        with self._conns_lock:
            self._check_open()
            conn = self._idle.pop() if self._idle else None
            while conn is None and self._conns and _file_id(self.path) != self._file_id:
                self._conns_lock.wait()
                self._check_open()
                conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            with self._damage_named():
                yield conn
        finally:
            with self._conns_lock:
                if conn in self._conns:  # not closed meanwhile
                    self._idle.append(conn)
                    self._conns_lock.notify()

    @property
    def _select(self) -> str:
        return _SELECT if self._has_crc else _SELECT_OLD

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed; load it again to use it")

    def writer(self) -> sqlite3.Connection:
        self._check_open()
        if self._writer is None:
            self._writer = self._open()
        if not self._has_crc:
            self._add_checksums(self._writer)
        return self._writer

    def _add_checksums(self, w: sqlite3.Connection) -> None:
        """Upgrade a database written before row checksums (on its first write only:
        loading never changes store data)."""
        with _transaction(w):
            if not _has_column(w, "nodes", "crc"):
                w.execute("ALTER TABLE nodes ADD COLUMN crc TEXT")
            w.execute(f"UPDATE nodes SET crc = {_CRC_SQL}")
        self._has_crc = True
        logger.info("added row checksums to node database %s", self.path)

    def close(self) -> None:
        with self._conns_lock:
            self._closed = True
            self._conns_lock.notify_all()
            conns, self._conns, self._idle = self._conns, [], []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
        self._writer = None

    # -- meta -------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        try:
            with self.reading() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(
                f"cannot read node database {self.path}: {exc}", self.path
            ) from exc
        return row[0] if row else None

    def set_meta(self, items: Mapping[str, str], *, durable: bool = False) -> None:
        """Write meta keys in one transaction; ``durable`` fsyncs the WAL on commit.

        A full-sync commit also makes every earlier NORMAL-sync commit durable, because
        they precede it in the same WAL file.
        """
        w = self.writer()
        if durable:
            w.execute("PRAGMA synchronous = FULL")
        try:
            with _transaction(w):
                w.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(items.items())
                )
        finally:
            if durable:
                w.execute("PRAGMA synchronous = NORMAL")

    # -- writes -----------------------------------------------------------------------
    def _vid_base(self) -> int:
        if self._next_vid is None:
            got = self.writer().execute("SELECT max(vid) FROM nodes").fetchone()[0]
            self._next_vid = (got or 0) + 1
        return self._next_vid

    def insert(
        self,
        records: Sequence[tuple[str, int, str, dict[str, Any]]],
        gen: int,
        retire: Iterable[LiveNode] = (),
    ) -> None:
        """Insert (id, row, text, metadata) versions stamped ``gen``; retire old versions.

        Everything happens in one transaction, so an update is never half applied.
        """
        w = self.writer()
        base = self._vid_base()
        node_rows, meta_rows = [], []
        for i, (node_id, row, text, meta) in enumerate(records):
            vid = base + i
            meta_json = json.dumps(meta, ensure_ascii=False)
            crc = row_checksum(vid, node_id, row, text, meta_json, gen, None)
            node_rows.append((vid, node_id, row, text, meta_json, gen, crc))
            meta_rows.extend((vid, k, v) for k, v in index_pairs(meta))
        with _transaction(w):
            self._retire(w, list(retire), gen)
            w.executemany(
                "INSERT INTO nodes(vid, id, row, text, metadata, gen_added, crc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                node_rows,
            )
            w.executemany("INSERT INTO node_meta(vid, key, value) VALUES (?, ?, ?)", meta_rows)
        self._next_vid = base + len(records)

    def retire(self, versions: Sequence[LiveNode], gen: int) -> None:
        """Delete node versions in generation ``gen`` (one transaction)."""
        w = self.writer()
        with _transaction(w):
            self._retire(w, versions, gen)

    @staticmethod
    def _retire(w: sqlite3.Connection, versions: Sequence[LiveNode], gen: int) -> None:
        # Versions born in the open generation were never committed: drop them outright.
        fresh = [(v.vid,) for v in versions if v.gen_added >= gen]
        old = [(gen, v.vid) for v in versions if v.gen_added < gen]
        w.executemany("DELETE FROM node_meta WHERE vid = ?", fresh)
        w.executemany("DELETE FROM nodes WHERE vid = ?", fresh)
        w.executemany(_set_where("gen_deleted", "?1", "vid = ?2"), old)

    def rollback_after(self, gen: int) -> int:
        """Undo every change stamped after ``gen`` (left by a crashed writer)."""
        w = self.writer()
        with _transaction(w):
            w.execute(
                "DELETE FROM node_meta WHERE vid IN (SELECT vid FROM nodes WHERE gen_added > ?)",
                (gen,),
            )
            dropped = w.execute("DELETE FROM nodes WHERE gen_added > ?", (gen,)).rowcount
            revive = _set_where("gen_deleted", "NULL", "gen_deleted > ?1")
            revived = w.execute(revive, (gen,)).rowcount
            w.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('committed_generation', ?)",
                (str(gen),),
            )
        self._next_vid = None
        if dropped or revived:
            logger.info(
                "rolled back %d uncommitted node versions and %d deletions in %s",
                dropped,
                revived,
                self.path,
            )
        return dropped + revived

    def purge_dead(self, gen: int) -> None:
        """Remove versions retired at or before ``gen`` (used by compaction only)."""
        w = self.writer()
        with _transaction(w):
            w.execute(
                "DELETE FROM node_meta WHERE vid IN "
                "(SELECT vid FROM nodes WHERE gen_deleted IS NOT NULL AND gen_deleted <= ?)",
                (gen,),
            )
            w.execute(
                "DELETE FROM nodes WHERE gen_deleted IS NOT NULL AND gen_deleted <= ?", (gen,)
            )

    def remap_rows(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Set ``row = new`` for (new, vid) pairs (compaction, on a private copy)."""
        w = self.writer()
        with _transaction(w):
            w.executemany(_set_where("row", "?1", "vid = ?2"), pairs)

    def backup_to(self, dest: Path) -> None:
        """Consistent copy of the whole database to a new file (then fsync'd)."""
        src = self.writer()
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = WAL")
        finally:
            dst.close()

    # -- reads ------------------------------------------------------------------------
    def live_by_ids(self, ids: Sequence[str], view: int) -> dict[str, LiveNode]:
        """Live versions (in generation ``view``) of ``ids``, keyed by id."""
        return {n.id: n for n in self._live_where("id", list(ids), view)}

    def live_by_rows(self, rows: Sequence[int], view: int) -> dict[int, LiveNode]:
        """Live versions (in generation ``view``) stored at ``rows``, keyed by row."""
        return {n.row: n for n in self._live_where("row", [int(r) for r in rows], view)}

    def _live_where(self, column: str, values: list, view: int) -> list[LiveNode]:
        out = []
        with self.reading() as conn:
            for part in _chunks(values):
                marks = ",".join("?" * len(part))
                cur = conn.execute(
                    f"SELECT {self._select} FROM nodes n WHERE n.{column} IN ({marks}) AND {_LIVE}",
                    (*part, view, view),
                )
                out.extend(LiveNode.checked(rec, self.path) for rec in cur)
        return out

    def rows_for_filter(self, filters: Mapping[str, Any], view: int) -> np.ndarray:
        """Sorted int64 rows of the live nodes that satisfy ``filters``."""
        cond, params = compile_filters(filters)
        with self.reading() as conn:
            cur = conn.execute(
                f"SELECT n.row FROM nodes n WHERE {_LIVE} AND {cond}", (view, view, *params)
            )
            rows = np.fromiter((r[0] for r in cur), dtype=np.int64)
        rows.sort()
        return rows

    def ids_for_filter(self, filters: Mapping[str, Any] | None, view: int) -> list[str]:
        """Ids of the live nodes that satisfy ``filters`` (all without), sorted."""
        cond, params = compile_filters(filters) if filters else ("1", [])
        with self.reading() as conn:
            cur = conn.execute(
                f"SELECT n.id FROM nodes n WHERE {_LIVE} AND {cond} ORDER BY n.id",
                (view, view, *params),
            )
            return [r[0] for r in cur]

    def value_types(self, key: str, view: int) -> set[str]:
        """JSON types (`filters.json_type`) of ``key``'s values among the live nodes of
        generation ``view``; empty when no live node has the key."""
        with self.reading() as conn:
            cur = conn.execute(
                f"SELECT DISTINCT {JSON_TYPE_SQL} FROM node_meta WHERE key = ? "
                f"AND vid IN (SELECT n.vid FROM nodes n WHERE {_LIVE})",
                (key, view, view),
            )
            return {r[0] for r in cur}

    def count_live(self, view: int) -> int:
        with self.reading() as conn:
            cur = conn.execute(f"SELECT count(*) FROM nodes n WHERE {_LIVE}", (view, view))
            return cur.fetchone()[0]

    def iter_live(self, view: int, batch: int = 10000) -> Iterator[list[LiveNode]]:
        """All live versions ordered by row, in batches."""
        with self.reading() as conn:
            cur = conn.execute(
                f"SELECT {self._select} FROM nodes n WHERE {_LIVE} ORDER BY n.row", (view, view)
            )
            while recs := cur.fetchmany(batch):
                yield [LiveNode.checked(r, self.path) for r in recs]

    def verify(self) -> None:
        """Check the whole database: SQLite's own integrity check, every version's
        checksum, and that the filter table matches every version's metadata.

        Raises:
            StoreCorruptError: naming the database and the first problem found.
        """
        with self.reading() as conn:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                self._corrupt(f"fails SQLite's integrity check: {problems[:3]}")
            pairs = conn.execute("SELECT vid, key, value FROM node_meta ORDER BY vid, key, value")
            pending = next(pairs, None)
            cur = conn.execute(f"SELECT {self._select} FROM nodes n ORDER BY n.vid")
            for rec in cur:
                node = LiveNode.checked(rec, self.path)
                try:
                    want = sorted(index_pairs(json.loads(node.metadata)))
                except ValueError:
                    self._corrupt(f"holds unreadable metadata for node {node.id!r}")
                got = []
                while pending is not None and pending[0] <= node.vid:
                    if pending[0] == node.vid:
                        got.append((pending[1], pending[2]))
                    pending = next(pairs, None)
                if got != want:
                    self._corrupt(f"has a filter index that disagrees with node {node.id!r}")

    def _corrupt(self, what: str) -> None:
        raise StoreCorruptError(f"node database {self.path} {what}", self.path)

    @contextmanager
    def _damage_named(self) -> Iterator[None]:
        """SQLite's plain ``DatabaseError`` ("database disk image is malformed", "file is
        not a database") is damage to this file: say which file, as `StoreCorruptError`.
        Its subclasses (a lock timeout, a constraint) pass unchanged."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:
                raise
            raise StoreCorruptError(
                f"node database {self.path} is damaged ({exc}); restore the store "
                "directory from a backup, or rebuild the store",
                self.path,
            ) from exc


def _set_where(column: str, value: str, condition: str) -> str:
    """``UPDATE nodes SET column = value WHERE condition`` that also refreshes the
    checksum; ``value`` is SQL (e.g. ``?1``) evaluated once per row like the rest."""
    args = ", ".join(value if c == column else c for c in _COLUMNS.split(", "))
    return f"UPDATE nodes SET {column} = {value}, crc = clara_crc({args}) WHERE {condition}"


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.conn.execute("ROLLBACK")
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:  # e.g. disk full at commit: leave no transaction open
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
