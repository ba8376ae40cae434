"""SQLite table of nodes (id, text, metadata) with generation stamps.

Each row of ``nodes`` is one *version* of a node. A version is visible in generation
``v`` when ``gen_added <= v`` and it was not retired at or before ``v``. Writes between two
``persist`` calls are stamped with the next generation, so a reader that loaded the last
manifest (generation ``G``) simply does not see them; a crash before the manifest names
``G + 1`` therefore loses nothing and exposes nothing half-written. The first writer after
such a crash deletes the leftovers (:meth:`NodeDB.rollback_after`).

Old versions are kept until :meth:`MemoryStore.compact`, so a process still serving an
older generation keeps seeing consistent text and metadata.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreCorruptError
from .filters import compile_filters, index_pairs

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
    gen_deleted INTEGER
);
CREATE INDEX IF NOT EXISTS nodes_id ON nodes(id);
CREATE INDEX IF NOT EXISTS nodes_row ON nodes(row);
CREATE TABLE IF NOT EXISTS node_meta(vid INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS node_meta_kv ON node_meta(key, value, vid);
CREATE INDEX IF NOT EXISTS node_meta_vid ON node_meta(vid);
"""
_LIVE = "n.gen_added <= ? AND (n.gen_deleted IS NULL OR n.gen_deleted > ?)"
_CHUNK = 900  # stay far below SQLite's bound-parameter limit
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _chunks(seq: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class LiveNode:
    """A node version as read from SQLite (internal)."""

    __slots__ = ("vid", "id", "row", "text", "metadata", "gen_added")

    def __init__(self, vid: int, id: str, row: int, text: str, metadata: str, gen: int):
        self.vid, self.id, self.row, self.text = vid, id, row, text
        self.metadata, self.gen_added = metadata, gen


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
        self._conns_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        if create:
            w = self.writer()
            w.executescript(_SCHEMA)
        self._next_vid: int | None = None

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

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Borrow a read connection from the pool (WAL: readers never block each other).

        A pool rather than one connection per thread: servers that start a thread per
        request would otherwise leave a connection behind for every dead thread.
        """
        with self._conns_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._conns_lock:
                if conn in self._conns:  # not closed meanwhile
                    self._idle.append(conn)

    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._open()
        return self._writer

    def close(self) -> None:
        with self._conns_lock:
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
            node_rows.append((vid, node_id, row, text, json.dumps(meta, ensure_ascii=False), gen))
            meta_rows.extend((vid, k, v) for k, v in index_pairs(meta))
        with _transaction(w):
            self._retire(w, list(retire), gen)
            w.executemany(
                "INSERT INTO nodes(vid, id, row, text, metadata, gen_added) "
                "VALUES (?, ?, ?, ?, ?, ?)",
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
        w.executemany("UPDATE nodes SET gen_deleted = ? WHERE vid = ?", old)

    def rollback_after(self, gen: int) -> int:
        """Undo every change stamped after ``gen`` (left by a crashed writer)."""
        w = self.writer()
        with _transaction(w):
            w.execute(
                "DELETE FROM node_meta WHERE vid IN (SELECT vid FROM nodes WHERE gen_added > ?)",
                (gen,),
            )
            dropped = w.execute("DELETE FROM nodes WHERE gen_added > ?", (gen,)).rowcount
            revived = w.execute(
                "UPDATE nodes SET gen_deleted = NULL WHERE gen_deleted > ?", (gen,)
            ).rowcount
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
            w.executemany("UPDATE nodes SET row = ? WHERE vid = ?", pairs)

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
                    "SELECT n.vid, n.id, n.row, n.text, n.metadata, n.gen_added FROM nodes n "
                    f"WHERE n.{column} IN ({marks}) AND {_LIVE}",
                    (*part, view, view),
                )
                out.extend(LiveNode(*rec) for rec in cur)
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

    def count_live(self, view: int) -> int:
        with self.reading() as conn:
            cur = conn.execute(f"SELECT count(*) FROM nodes n WHERE {_LIVE}", (view, view))
            return cur.fetchone()[0]

    def iter_live(self, view: int, batch: int = 10000) -> Iterator[list[LiveNode]]:
        """All live versions ordered by row, in batches."""
        with self.reading() as conn:
            cur = conn.execute(
                "SELECT n.vid, n.id, n.row, n.text, n.metadata, n.gen_added FROM nodes n "
                f"WHERE {_LIVE} ORDER BY n.row",
                (view, view),
            )
            while recs := cur.fetchmany(batch):
                yield [LiveNode(*r) for r in recs]


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
