"""MemoryStore: nodes + compressed memory + an index, persistent and crash-safe.

Directory layout of a persisted store (every name but the manifest is unique per write)::

    manifest.json             the commit point: format version, config, files, checksums
    seg-<uid>.mem             immutable segments of memory rows (memory-mapped on load)
    alive-<uid>.bits          which rows are live (one bit per row)
    nodes-<uid>.sqlite        nodes, metadata, generation stamps (SQLite, WAL)
    index-<uid>.faiss         ANN index over rows [0, n_indexed)  (hnsw/ivfpq/factory)
    reducer-<uid>.safetensors PCA used by the ANN index
    .writer.lock              flock held by the one process that writes

See ``persist`` for the commit protocol and ``nodes.py`` for how SQLite stays in step.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _validate as check
from ._dirlock import DirLock
from ._files import unique_name
from ._indexing import IndexingMixin
from ._persistence import PersistenceMixin
from ._rwlock import RWLock
from ._search import Result, block_rows_for, merge, scan, score_candidates
from .ann import AnnIndex, build_empty_index
from .config import StoreConfig, canonical_dtype
from .errors import NodeNotFoundError, StoreClosedError, StoreCorruptError
from .filters import compile_filters
from .manifest import IndexEntry
from .nodes import NodeDB
from .records import Hit, Node
from .segments import MemoryRows, from_torch, inverse_norms, to_torch

logger = logging.getLogger(__name__)

__all__ = ["MemoryStore"]


class _Resources:
    """OS resources released when the store is closed or garbage-collected."""

    def __init__(self) -> None:
        self.db: NodeDB | None = None
        self.rows: MemoryRows | None = None
        self.lock: DirLock | None = None
        self.scratch: Path | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.db is not None:
            self.db.close()
        if self.rows is not None:
            self.rows.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


class MemoryStore(IndexingMixin, PersistenceMixin):
    """Compressed-memory node store: ids, texts, metadata and ``[n_mem, H]`` memories.

    Search ranks by the cosine between a query vector ``[n_mem*H]`` and each flattened
    memory (both L2-normalised in float32), as the CLaRa reference does. ``"flat"`` is
    exact; ``"hnsw"``/``"ivfpq"``/factory strings generate candidates from a PCA
    projection and re-score them exactly. Rows added after the index was built are
    scanned exactly, so results never miss fresh documents.

    A new store keeps its files in a private scratch directory until the first
    :meth:`persist`; from then on it lives in that directory and later ``persist()``
    calls are incremental. Concurrent :meth:`search` calls are safe; writers are
    serialised.

    Args:
        n_mem: memory tokens per document.
        hidden_size: hidden size H of the model.
        dtype: storage dtype, ``torch.float16`` (default), ``torch.bfloat16`` or
            ``torch.float32`` (or their names).
        index: ``"flat"`` (exact, default), ``"hnsw"``, ``"ivfpq"`` or a FAISS factory
            string (built over the PCA projection when ``reduce_dim`` is set).
        model_identity: identity of the compressor; None adopts the first model given
            to :meth:`add_documents`.
        scratch_dir: where an unpersisted store keeps its files (default: system temp;
            pick the file system of the final directory so persist can hard-link).
        **options: further :class:`StoreConfig` fields (``reduce_dim``, ``hnsw_m``...).

    Raises:
        ValueError: invalid configuration (e.g. a bad factory string).

    Example:
        >>> import torch
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore(n_mem=2, hidden_size=4)
        >>> ids = store.add(torch.randn(3, 2, 4), texts=["a", "b", "c"],
        ...                 metadata=[{"src": "x"}, {"src": "y"}, {"src": "x"}])
        >>> hits = store.search(store.get_memories(ids[:1]).flatten(1), k=2,
        ...                     filters={"src": "x"})
        >>> hits[0][0].id == ids[0], len(hits[0])
        (True, 2)
    """

    def __init__(
        self,
        n_mem: int,
        hidden_size: int,
        dtype: torch.dtype | str = torch.float16,
        index: str = "flat",
        *,
        model_identity: str | None = None,
        scratch_dir: str | Path | None = None,
        **options: Any,
    ) -> None:
        cfg = StoreConfig(
            n_mem=n_mem,
            hidden_size=hidden_size,
            dtype=canonical_dtype(dtype),
            index=index,
            model_identity=model_identity,
            **options,
        )
        if cfg.index != "flat":
            build_empty_index(cfg, cfg.train_size)  # reject a bad factory string now
        scratch = Path(tempfile.mkdtemp(prefix="clara-store-", dir=scratch_dir))
        db_file = unique_name("nodes", ".sqlite")
        self._setup(cfg, uuid.uuid4().hex, None, scratch, db_file, 0, mmap=True)
        self._set_db(NodeDB(scratch / db_file, create=True))
        self._res.scratch = scratch

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> MemoryStore:
        """A store shaped for ``model`` (n_mem, hidden size, identity).

        Example:
            >>> store = MemoryStore.for_model(model, index="hnsw")  # doctest: +SKIP
        """
        kwargs.setdefault("model_identity", getattr(model, "model_identity", None))
        return cls(model.n_mem, model.hidden_size, **kwargs)

    def _setup(
        self,
        cfg: StoreConfig,
        uid: str,
        home: Path | None,
        work_dir: Path,
        db_file: str,
        committed: int,
        *,
        mmap: bool,
    ) -> None:
        self._cfg = cfg
        self._uid = uid
        self._lock = RWLock()
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        self._home, self._work_dir, self._db_file = home, work_dir, db_file
        self._committed = self._view = committed
        self._dirty = home is None
        self._mmap = mmap
        self._rows = self._res.rows = MemoryRows(cfg.dim, cfg.dtype, cfg.numpy_dtype)
        self._alive = np.zeros(0, dtype=bool)
        self._n_live = 0
        self._ann: AnnIndex | None = None
        self._ann_trained_on = 0
        self._index_entry: IndexEntry | None = None  # files of the current, saved index
        self._filter_cache: dict[str, np.ndarray] = {}
        self._bitmap_cache: np.ndarray | None = None
        self._block_rows = block_rows_for(cfg.dim, cfg.scan_block_bytes)

    def _set_db(self, db: NodeDB) -> None:
        self._db = db
        self._res.db = db

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> StoreConfig:
        """The store's :class:`StoreConfig` (read-only)."""
        return self._cfg

    @property
    def fingerprint(self) -> str:
        """Model identity + n_mem + H + dtype, e.g. ``"m:n_mem=8:H=576:float16"``."""
        return self._cfg.fingerprint

    @property
    def path(self) -> Path | None:
        """Directory the store was last persisted to / loaded from (None if never)."""
        return self._home

    @property
    def generation(self) -> int:
        """Number of the last committed version (0 before the first persist)."""
        return self._committed

    def __len__(self) -> int:
        return self._n_live

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, str):
            return False
        with self._reading():
            return bool(self._db.live_by_ids([node_id], self._view))

    def __repr__(self) -> str:
        return (
            f"MemoryStore(n={self._n_live}, n_mem={self._cfg.n_mem}, "
            f"hidden_size={self._cfg.hidden_size}, dtype={self._cfg.dtype}, "
            f"index={self._cfg.index!r}, path={str(self._home) if self._home else None!r})"
        )

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release files and locks. Unpersisted changes of a never-persisted store are lost.

        Any later use of the store raises :class:`StoreClosedError`; closing twice is fine.
        """
        with self._lock.write():
            self._finalizer()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock.read():
            self._check_open()
            yield

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock.write():
            self._check_open()
            yield

    def _check_open(self) -> None:
        if self._res.closed:
            where = f" at {self._home}" if self._home is not None else ""
            raise StoreClosedError(
                f"the store{where} is closed; open it again with MemoryStore.load(path)"
            )

    # ------------------------------------------------------------------ writing
    def _begin_write(self) -> None:
        """Every write calls this first. The first write after a load or persist takes
        the directory's writer lock, refuses to go on if another writer has committed
        since (:class:`StoreStaleError`), and undoes what a writer that died uncommitted
        left in the node database."""
        if self._home is not None and self._res.lock is None:
            lock = DirLock(self._home)
            try:
                self._check_current()
                self._db.rollback_after(self._committed)
            except BaseException:
                lock.release()
                raise
            self._res.lock = lock
        self._view = self._committed + 1
        self._dirty = True
        self._filter_cache.clear()
        self._bitmap_cache = None

    def _grow_alive(self, n_rows: int) -> None:
        if n_rows > self._alive.shape[0]:
            grown = np.zeros(max(n_rows, 2 * self._alive.shape[0], 1024), dtype=bool)
            grown[: self._alive.shape[0]] = self._alive
            self._alive = grown

    def _append_rows(self, mem: torch.Tensor) -> int:
        """Append rows, still dead (not alive): they go live only once the node database
        names them. If writing a segment fails (disk full, file too large) the rows are
        taken back and the store is as before; if the database write fails afterwards,
        they stay dead rows that no node names, which compaction reclaims."""
        start = self._rows.append(from_torch(mem, self._cfg.dtype), inverse_norms(mem))
        self._grow_alive(self._rows.n_rows)
        if self._rows.ram_bytes() >= self._cfg.segment_bytes:
            try:
                self._rows.flush(self._work_dir, mmap=self._mmap)
            except BaseException:
                self._rows.drop_tail(start)
                raise
        return start

    def add(
        self,
        memories: torch.Tensor,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Add nodes with their memories.

        Args:
            memories: ``[N, n_mem, H]`` tensor, any float dtype and device; stored in
                the store dtype on CPU.
            texts: N strings (None: empty texts).
            metadata: N JSON-serialisable dicts (None: empty).
            ids: N new, unique string ids (None: fresh uuid4 strings; never reused).

        Returns:
            The ids of the new nodes, in order.

        Raises:
            ValueError / TypeError: wrong shape, non-finite values, length mismatch,
                duplicate or already-present ids. Nothing is added then.

        Example:
            >>> store = MemoryStore(n_mem=2, hidden_size=4)
            >>> store.add(torch.randn(1, 2, 4), texts=["x"], ids=["doc-1"])
            ['doc-1']
        """
        mem = check.memories(memories, self._cfg)
        n = mem.shape[0]
        texts_ = check.texts(texts, n)
        metas = check.metadata(metadata, n)
        ids_, supplied = check.new_ids(ids, n)
        if n == 0:
            return []
        with self._writing():
            if supplied:
                taken = self._db.live_by_ids(ids_, self._view)
                if taken:
                    raise ValueError(
                        f"ids already in the store: {sorted(taken)[:5]}; "
                        "use update() to change them"
                    )
            self._begin_write()
            start = self._append_rows(mem)
            self._db.insert(
                [(i, start + j, t, m) for j, (i, t, m) in enumerate(zip(ids_, texts_, metas))],
                self._view,
            )
            self._alive[start : start + n] = True
            self._n_live += n
        return ids_

    def add_documents(
        self,
        texts: Sequence[str],
        model: Any,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        batch_size: int = 16,
        *,
        chunk_size: int = 1024,
        show_progress: bool = True,
    ) -> list[str]:
        """Compress ``texts`` with ``model`` and add them.

        Texts are compressed ``chunk_size`` at a time (so millions of documents never
        sit in memory at once) with one progress bar over all of them. Everything is
        validated before the first chunk; if the model fails midway, the chunks
        already added stay in the store (unpersisted).

        Args:
            texts: non-empty document strings.
            model: a ClaraModel (``compress_documents``, ``n_mem``, ``hidden_size``,
                ``model_identity``). A store without identity adopts the model's.
            metadata, ids: as in :meth:`add`.
            batch_size: the model's compression batch size.
            chunk_size: texts per call to the model.
            show_progress: show a tqdm bar.

        Returns:
            The new ids.

        Raises:
            StoreMismatchError: the model's shape or identity differs from the store's.
            ValueError: empty texts, length mismatches, ids already present.

        Example:
            >>> store = MemoryStore.for_model(model)  # doctest: +SKIP
            >>> ids = store.add_documents(["Paris is in France."], model)  # doctest: +SKIP
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a list of strings")
        texts_ = check.texts(texts, len(texts), required=True)
        for i, t in enumerate(texts_):
            if not t.strip():
                raise ValueError(f"texts[{i}] is empty; the compressor needs text")
        identity = check.model_shape(model, self._cfg)
        metas = check.metadata(metadata, len(texts_))
        ids_, supplied = check.new_ids(ids, len(texts_))
        if supplied and (taken := self._db_live_ids(ids_)):
            raise ValueError(f"ids already in the store: {sorted(taken)[:5]}")
        if self._cfg.model_identity is None and identity is not None:
            with self._writing():
                self._begin_write()
                self._cfg = self._cfg.model_copy(update={"model_identity": identity})
                logger.info("store adopts model identity %r", identity)
        bar = tqdm(total=len(texts_), desc="compressing", unit="doc", disable=not show_progress)
        try:
            for s in range(0, len(texts_), chunk_size):
                part = slice(s, s + chunk_size)
                mem = model.compress_documents(
                    texts_[part], batch_size=batch_size, show_progress=False
                )
                self.add(mem, texts=texts_[part], metadata=metas[part], ids=ids_[part])
                bar.update(len(texts_[part]))
        finally:
            bar.close()
        return ids_

    def _db_live_ids(self, ids: Sequence[str]) -> set[str]:
        with self._reading():
            return set(self._db.live_by_ids(ids, self._view))

    def _require(self, ids: list[str]) -> dict:
        found = self._db.live_by_ids(ids, self._view)
        missing = [i for i in ids if i not in found]
        if missing:
            raise NodeNotFoundError(f"{len(missing)} id(s) not in the store, e.g. {missing[:5]}")
        return found

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete nodes (tombstones; rows are reclaimed by :meth:`compact`).

        Returns:
            How many nodes were deleted.

        Raises:
            NodeNotFoundError: an id is not present (unless ``missing_ok``); nothing
                is deleted then.
        """
        ids_ = list(dict.fromkeys(check.node_ids(ids)))
        with self._writing():
            found = self._db.live_by_ids(ids_, self._view)
            if len(found) != len(ids_) and not missing_ok:
                self._require(ids_)  # raises with the missing ids
            if not found:
                return 0
            self._begin_write()
            self._db.retire(list(found.values()), self._view)
            self._alive[[v.row for v in found.values()]] = False
            self._n_live -= len(found)
        return len(found)

    def update(
        self,
        ids: Sequence[str],
        memories: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Replace the memory, text and/or metadata of existing nodes (ids kept).

        New memory is appended as new rows (segments stay append-only); metadata is
        replaced, not merged. All-or-nothing: on any error nothing changes.

        Raises:
            NodeNotFoundError: an id is not present.
            ValueError: shapes or lengths are wrong, or nothing to update was given.
        """
        ids_ = check.node_ids(ids)
        if len(set(ids_)) != len(ids_):
            raise ValueError("ids contains duplicates")
        if memories is None and texts is None and metadata is None:
            raise ValueError("update() needs memories, texts and/or metadata")
        n = len(ids_)
        mem = check.memories(memories, self._cfg) if memories is not None else None
        if mem is not None and mem.shape[0] != n:
            raise ValueError(f"memories has {mem.shape[0]} rows but there are {n} ids")
        texts_ = check.texts(texts, n) if texts is not None else None
        metas = check.metadata(metadata, n) if metadata is not None else None
        with self._writing():
            found = self._require(ids_)
            self._begin_write()
            start = self._append_rows(mem) if mem is not None else -1
            records = []
            for j, node_id in enumerate(ids_):
                old = found[node_id]
                records.append(
                    (
                        node_id,
                        start + j if mem is not None else old.row,
                        texts_[j] if texts_ is not None else old.text,
                        metas[j] if metas is not None else _json(old.metadata),
                    )
                )
            self._db.insert(records, self._view, retire=list(found.values()))
            if mem is not None:
                self._alive[[v.row for v in found.values()]] = False
                self._alive[start : start + n] = True

    # ------------------------------------------------------------------ reading
    def get_memories(self, ids: Sequence[str]) -> torch.Tensor:
        """Memories of ``ids`` as ``[len(ids), n_mem, H]`` in the store dtype (CPU).

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        with self._reading():
            found = self._require(ids_)
            data, _ = self._rows.gather(np.array([found[i].row for i in ids_], dtype=np.int64))
        return to_torch(data, self._cfg.dtype).reshape(
            len(ids_), self._cfg.n_mem, self._cfg.hidden_size
        )

    def get_nodes(self, ids: Sequence[str]) -> list[Node]:
        """Id, text and metadata of ``ids``, in order.

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        with self._reading():
            found = self._require(ids_)
        return [Node(i, found[i].text, _json(found[i].metadata)) for i in ids_]

    def search(
        self,
        query_vectors: torch.Tensor,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` nodes per query by cosine similarity of flattened memory.

        Args:
            query_vectors: ``[B, n_mem*H]`` (or ``[n_mem*H]``, or ``[B, n_mem, H]``),
                e.g. from ``model.encode_queries``; normalised here in float32.
            k: results per query (fewer only if fewer nodes match).
            filters: metadata filter applied *before* the top-k cut, e.g.
                ``{"source": "a.pdf"}``, ``{"source": ["a.pdf", "b.pdf"]}`` or
                ``{"source": {"$in": [...]}}`` (see :mod:`.filters`).

        Returns:
            One list of :class:`Hit` per query, best first; scores are exact cosines.

        Raises:
            ValueError: wrong query width, non-finite values, bad ``k`` or filter.
        """
        q = check.queries(query_vectors, self._cfg)
        k = check.k_value(k)
        if filters is not None:
            compile_filters(filters)  # validate before taking the lock
        with self._reading():
            k = min(k, max(self._rows.n_rows, 1))  # k=10**9 must not size buffers
            allowed = self._filter_rows(filters) if filters else None
            results = self._search_rows(q, k, allowed)
            return self._hits(results)

    def _filter_rows(self, filters: Mapping[str, Any]) -> np.ndarray:
        key = repr(sorted((str(k), repr(v)) for k, v in filters.items()))
        rows = self._filter_cache.get(key)
        if rows is None:
            rows = self._db.rows_for_filter(filters, self._view)
            if len(self._filter_cache) > 64:
                self._filter_cache.clear()
            self._filter_cache[key] = rows
        return rows

    def _search_rows(self, q: torch.Tensor, k: int, allowed: np.ndarray | None) -> list[Result]:
        n_rows, cfg, br = self._rows.n_rows, self._cfg, self._block_rows
        if allowed is not None and allowed.size <= cfg.exact_filter_rows:
            # Selective filter: exact scores of exactly the allowed rows.
            return score_candidates(self._rows, q, [allowed] * q.shape[0], k, br)
        mask = self._alive[:n_rows]
        n_allowed = self._n_live
        if allowed is not None:
            mask = np.zeros(n_rows, dtype=bool)
            mask[allowed] = True
            n_allowed = allowed.size
        ann = self._ann
        if ann is None:
            return scan(self._rows, q, k, 0, n_rows, mask, br)
        pool = min(max(k * cfg.rescore_factor, cfg.min_candidates), max(ann.n_indexed, 1))
        bitmap = self._ann_bitmap(mask, filtered=allowed is not None)
        labels = ann.search(q, pool, cfg, bitmap)
        cands = [lab[lab >= 0] for lab in labels]
        found = score_candidates(self._rows, q, cands, k, br)
        fresh = scan(self._rows, q, k, ann.n_indexed, n_rows, mask, br)  # not yet indexed
        results = merge(found, fresh, k)
        want = min(k, n_allowed)
        if any(r[1].size < want for r in results):  # graph search ran dry: be exact
            logger.debug("ANN returned fewer than %d results; falling back to an exact scan", want)
            results = scan(self._rows, q, k, 0, n_rows, mask, br)
        return results

    def _ann_bitmap(self, mask: np.ndarray, *, filtered: bool) -> np.ndarray | None:
        """Packed selector bits over indexed rows; None when every indexed row qualifies."""
        n = self._ann.n_indexed
        if filtered:
            return np.packbits(mask[:n], bitorder="little")
        if self._bitmap_cache is None:
            alive = mask[:n]
            self._bitmap_cache = (
                np.zeros(0, np.uint8) if alive.all() else np.packbits(alive, bitorder="little")
            )
        return self._bitmap_cache if self._bitmap_cache.size else None

    def _hits(self, results: list[Result]) -> list[list[Hit]]:
        rows = np.unique(np.concatenate([r for _, r in results])) if results else []
        nodes = self._db.live_by_rows(rows, self._view) if len(rows) else {}
        out = []
        for scores, rws in results:
            hits = []
            for s, r in zip(scores.tolist(), rws.tolist()):
                node = nodes.get(r)
                if node is None:  # invariant: alive rows have a live node
                    raise StoreCorruptError(
                        f"row {r} has no node in {self._db.path}", self._db.path
                    )
                hits.append(Hit(node.id, s, node.text, _json(node.metadata)))
            out.append(hits)
        return out

    # ------------------------------------------------------------------ model checks
    def check_model(self, model: Any) -> None:
        """Raise :class:`StoreMismatchError` unless ``model`` fits this store."""
        check.model_shape(model, self._cfg)

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: live nodes, rows, segments, unindexed rows, bytes on disk."""
        with self._reading():
            disk = 0
            if self._home is not None:
                disk = sum(p.stat().st_size for p in self._home.iterdir() if p.is_file())
            return {
                "n_live": self._n_live,
                "n_rows": self._rows.n_rows,
                "segments": len(self._rows.pieces),
                "indexed_rows": self._ann.n_indexed if self._ann else 0,
                "generation": self._committed,
                "disk_bytes": disk,
            }


def _json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError as exc:  # checksummed rows cannot get here; pre-checksum ones can
        raise StoreCorruptError(f"node metadata is not valid JSON: {exc}") from None
