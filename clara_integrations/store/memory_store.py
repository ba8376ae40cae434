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
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._sharing import store_reduce
from . import _indexing as indexing
from . import _persistence as persistence
from . import _validate as check
from ._documents import add_in_chunks, document_texts
from ._rwlock import RWLock
from ._search import Result, block_rows_for, merge, scan, score_candidates
from ._state import StoreState
from .ann import build_empty_index
from .config import RUNTIME_FIELDS, StoreConfig, canonical_dtype
from .errors import NodeNotFoundError, StoreCorruptError
from .filters import compile_filters, value_types
from .records import Hit, Node
from .segments import to_torch

logger = logging.getLogger(__name__)

__all__ = ["MemoryStore"]


class MemoryStore:
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
        _state: internal (an opened store's state, from :meth:`load`).
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
        _state: StoreState | None = None,
        **options: Any,
    ) -> None:
        if _state is not None:  # an opened store (``load``): its own config rules
            self._attach(_state)
            return
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
        self._attach(StoreState.fresh(cfg, scratch_dir))

    def _attach(self, state: StoreState) -> None:
        """Take ownership of ``state`` (its files are released when the store is
        closed or garbage-collected)."""
        self._st = state
        self._lock = RWLock()
        self._warned_keys: set[str] = set()  # filter keys named in a warning already
        self._finalizer = weakref.finalize(self, _close_state, state)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        """Pickle by reference to the persisted directory: the same store in this process,
        ``MemoryStore.load(path)`` in another (`NotPicklableError` while unpersisted)."""
        return store_reduce(self)

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
        everything (seconds per GB) and checks the node database (SQLite's integrity
        check, every row's checksum, the filter table). Loading never changes store
        data (SQLite may create its ``-wal``/``-shm`` side files). A load that races
        another writer's commit loads the new version.

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

        Example:
            >>> store = MemoryStore(n_mem=2, hidden_size=4)
            >>> _ = store.add(torch.randn(3, 2, 4))
            >>> import tempfile
            >>> path = store.persist(tempfile.mkdtemp(), show_progress=False)
            >>> len(MemoryStore.load(path))
            3
        """
        state = persistence.load_state(
            path,
            mmap=mmap,
            model=model,
            fingerprint=fingerprint,
            verify=verify,
            runtime=runtime,
        )
        cfg = state.cfg
        return cls(cfg.n_mem, cfg.hidden_size, cfg.dtype, cfg.index, _state=state)

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> MemoryStore:
        """A store shaped for ``model`` (n_mem, hidden size, identity).

        Example:
            >>> store = MemoryStore.for_model(model, index="hnsw")
            >>> store.config.n_mem == model.n_mem, store.config.index
            (True, 'hnsw')
        """
        kwargs.setdefault("model_identity", getattr(model, "model_identity", None))
        return cls(model.n_mem, model.hidden_size, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> StoreConfig:
        """The store's :class:`StoreConfig` (read-only)."""
        return self._st.cfg

    @property
    def fingerprint(self) -> str:
        """Model identity + n_mem + H + dtype, e.g. ``"m:n_mem=8:H=576:float16"``."""
        return self._st.cfg.fingerprint

    @property
    def path(self) -> Path | None:
        """Directory the store was last persisted to / loaded from (None if never)."""
        return self._st.home

    @property
    def generation(self) -> int:
        """Number of the last committed version (0 before the first persist)."""
        return self._st.committed

    @property
    def revision(self) -> int:
        """A number that changes on every add, update and delete through this handle (not
        on persist, compact or an index rebuild) and differs between handles (never
        reused in the process): what caches of derived data key on, such as the BM25
        index of hybrid retrieval. Read it *before* reading the contents.

        Example:
            >>> store = MemoryStore(n_mem=2, hidden_size=4)
            >>> before = store.revision
            >>> _ = store.add(torch.randn(1, 2, 4), texts=["a"])
            >>> store.revision != before
            True
        """
        return self._st.revision

    def __len__(self) -> int:
        return self._st.n_live

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, str):
            return False
        with self._reading():
            return bool(self._st.db.live_by_ids([node_id], self._st.view))

    def __repr__(self) -> str:
        cfg, home = self._st.cfg, self._st.home
        return (
            f"MemoryStore(n={self._st.n_live}, n_mem={cfg.n_mem}, "
            f"hidden_size={cfg.hidden_size}, dtype={cfg.dtype}, "
            f"index={cfg.index!r}, path={str(home) if home else None!r})"
        )

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release files and locks. Unpersisted changes are lost: those of a never-persisted
        store silently (it lives in memory), those of a persisted or loaded one with a
        warning naming the directory (call `persist` first to keep them).

        Any later use of the store raises :class:`StoreClosedError`; closing twice is fine.
        """
        with self._lock.write():
            self._finalizer()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock.read():
            self._st.check_open()
            yield

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock.write():
            self._st.check_open()
            yield

    # ------------------------------------------------------------------ writing
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
        mem = check.memories(memories, self._st.cfg)
        n = mem.shape[0]
        texts_ = check.texts(texts, n)
        metas = check.metadata(metadata, n)
        ids_, supplied = check.new_ids(ids, n)
        if n == 0:
            return []
        with self._writing():
            if supplied:
                taken = self._st.db.live_by_ids(ids_, self._st.view)
                if taken:
                    raise ValueError(
                        f"ids already in the store: {sorted(taken)[:5]}; "
                        "use update() to change them"
                    )
            self._st.begin_write()
            start = self._st.append_rows(mem)
            self._st.db.insert(
                [(i, start + j, t, m) for j, (i, t, m) in enumerate(zip(ids_, texts_, metas))],
                self._st.view,
            )
            self._st.mark_live(start, n)
            self._st.n_live += n
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
        show_progress: bool | None = None,
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
            show_progress: show a tqdm bar (default: for more than 64 texts).

        Returns:
            The new ids.

        Raises:
            StoreMismatchError: the model's shape or identity differs from the store's.
            ValueError: empty texts, length mismatches, ids already present.

        Example:
            >>> store = MemoryStore.for_model(model)
            >>> ids = store.add_documents(["Paris is in France."], model, show_progress=False)
            >>> store.get_nodes(ids)[0].text
            'Paris is in France.'
        """
        texts_ = document_texts(texts)
        identity = check.model_shape(model, self._st.cfg)
        metas = check.metadata(metadata, len(texts_))
        ids_, supplied = check.new_ids(ids, len(texts_))
        if supplied and (taken := self._db_live_ids(ids_)):
            raise ValueError(f"ids already in the store: {sorted(taken)[:5]}")
        if self._st.cfg.model_identity is None and identity is not None:
            with self._writing():
                self._st.begin_write()
                self._st.cfg = self._st.cfg.model_copy(update={"model_identity": identity})
                logger.info("store adopts model identity %r", identity)
        add_in_chunks(self.add, model, texts_, metas, ids_, batch_size, chunk_size, show_progress)
        return ids_

    def _db_live_ids(self, ids: Sequence[str]) -> set[str]:
        with self._reading():
            return set(self._st.db.live_by_ids(ids, self._st.view))

    def _require(self, ids: list[str]) -> dict:
        found = self._st.db.live_by_ids(ids, self._st.view)
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
            found = self._st.db.live_by_ids(ids_, self._st.view)
            if len(found) != len(ids_) and not missing_ok:
                self._require(ids_)  # raises with the missing ids
            if not found:
                return 0
            self._st.begin_write()
            self._st.db.retire(list(found.values()), self._st.view)
            self._st.mark_dead([v.row for v in found.values()])
            self._st.n_live -= len(found)
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
        mem = check.memories(memories, self._st.cfg) if memories is not None else None
        if mem is not None and mem.shape[0] != n:
            raise ValueError(f"memories has {mem.shape[0]} rows but there are {n} ids")
        texts_ = check.texts(texts, n) if texts is not None else None
        metas = check.metadata(metadata, n) if metadata is not None else None
        with self._writing():
            found = self._require(ids_)
            self._st.begin_write()
            start = self._st.append_rows(mem) if mem is not None else -1
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
            self._st.db.insert(records, self._st.view, retire=list(found.values()))
            if mem is not None:
                self._st.mark_dead([v.row for v in found.values()])
                self._st.mark_live(start, n)

    # ------------------------------------------------------------------ reading
    def get_memories(self, ids: Sequence[str]) -> torch.Tensor:
        """Memories of ``ids`` as ``[len(ids), n_mem, H]`` in the store dtype (CPU).

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        with self._reading():
            return self._memories(ids_, self._require(ids_))

    def get_nodes(self, ids: Sequence[str]) -> list[Node]:
        """Id, text and metadata of ``ids``, in order.

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        with self._reading():
            found = self._require(ids_)
        return [Node(i, found[i].text, _json(found[i].metadata)) for i in ids_]

    def get_nodes_with_memories(self, ids: Sequence[str]) -> tuple[list[Node], torch.Tensor]:
        """`get_nodes` and `get_memories` of ``ids`` read together, under one read lock: a
        concurrent `update` can never pair one version's text with another's memory (as
        two separate calls can).

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        with self._reading():
            found = self._require(ids_)
            memories = self._memories(ids_, found)
        return [Node(i, found[i].text, _json(found[i].metadata)) for i in ids_], memories

    def _memories(self, ids: list[str], found: dict) -> torch.Tensor:
        """``[len(ids), n_mem, H]`` rows of ``found`` nodes (caller holds the read lock)."""
        data, _ = self._st.rows.gather(np.array([found[i].row for i in ids], dtype=np.int64))
        cfg = self._st.cfg
        return to_torch(data, cfg.dtype).reshape(len(ids), cfg.n_mem, cfg.hidden_size)

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
        q = check.queries(query_vectors, self._st.cfg)
        k = check.k_value(k)
        if filters is not None:
            compile_filters(filters)  # validate before taking the lock
        with self._reading():
            k = min(k, max(self._st.rows.n_rows, 1))  # k=10**9 must not size buffers
            allowed = self._filter_rows(filters) if filters else None
            results = self._search_rows(q, k, allowed)
            return self._hits(results)

    def ids_where(self, filters: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of every live node matching ``filters`` (the `search` syntax; all nodes
        without), sorted; no vectors are read.

        Raises:
            ValueError: malformed filters.

        Example:
            >>> store = MemoryStore(n_mem=2, hidden_size=4)
            >>> _ = store.add(torch.randn(3, 2, 4), ids=["a", "b", "c"],
            ...               metadata=[{"year": 1990}, {"year": 2005}, {"year": 2020}])
            >>> store.ids_where({"year": {"$gte": 2000}})
            ['b', 'c']
        """
        if filters is not None:
            compile_filters(filters)  # validate before taking the lock
        with self._reading():
            ids = self._st.db.ids_for_filter(filters, self._st.view)
            if filters and not ids and self._st.n_live:
                self._warn_empty_filter(filters)
            return ids

    def _filter_rows(self, filters: Mapping[str, Any]) -> np.ndarray:
        key = repr(sorted((str(k), repr(v)) for k, v in filters.items()))
        rows = self._st.filter_cache.get(key)
        if rows is None:
            rows = self._st.db.rows_for_filter(filters, self._st.view)
            if not rows.size and self._st.n_live:
                self._warn_empty_filter(filters)
            if len(self._st.filter_cache) > 64:
                self._st.filter_cache.clear()
            self._st.filter_cache[key] = rows
        return rows

    def _warn_empty_filter(self, filters: Mapping[str, Any]) -> None:
        """A filter that matched nothing because it names a key no node has (a typo:
        ``{"soruce": ...}``) or compares a key with values of another JSON type than the
        nodes hold (``{"year": "2020"}`` against 2020) returns no results, which reads like
        "nothing relevant": say so, once per key and store."""
        for key, wanted in value_types(filters).items():
            if key in self._warned_keys:
                continue
            held = self._st.db.value_types(key, self._st.view)
            if not held:
                why = f"is in no node's metadata ({self._st.n_live} nodes)"
            elif wanted and not wanted & held:
                why = (
                    f"is compared with {'/'.join(sorted(wanted))} values, but the nodes hold "
                    f'{"/".join(sorted(held))} values there ("2020" never equals 2020)'
                )
            else:
                continue
            self._warned_keys.add(key)
            warnings.warn(
                f"filter key {key!r} {why}, so the filter matched nothing; check it",
                UserWarning,
                stacklevel=4,
            )

    def _search_rows(self, q: torch.Tensor, k: int, allowed: np.ndarray | None) -> list[Result]:
        n_rows, cfg, br = self._st.rows.n_rows, self._st.cfg, self._st.block_rows
        if allowed is not None and allowed.size <= cfg.exact_filter_rows:
            # Selective filter: exact scores of exactly the allowed rows.
            return score_candidates(self._st.rows, q, [allowed] * q.shape[0], k, br)
        mask = self._st.alive[:n_rows]
        n_allowed = self._st.n_live
        if allowed is not None:
            mask = np.zeros(n_rows, dtype=bool)
            mask[allowed] = True
            n_allowed = allowed.size
        ann = self._st.index.ann
        if ann is None:
            return scan(self._st.rows, q, k, 0, n_rows, mask, br)
        pool = min(max(k * cfg.rescore_factor, cfg.min_candidates), max(ann.n_indexed, 1))
        bitmap = self._ann_bitmap(mask, filtered=allowed is not None)
        labels = ann.search(q, pool, cfg, bitmap)
        cands = [lab[lab >= 0] for lab in labels]
        found = score_candidates(self._st.rows, q, cands, k, br)
        fresh = scan(self._st.rows, q, k, ann.n_indexed, n_rows, mask, br)  # not yet indexed
        results = merge(found, fresh, k)
        want = min(k, n_allowed)
        if any(r[1].size < want for r in results):  # graph search ran dry: be exact
            logger.debug("ANN returned fewer than %d results; falling back to an exact scan", want)
            results = scan(self._st.rows, q, k, 0, n_rows, mask, br)
        return results

    def _ann_bitmap(self, mask: np.ndarray, *, filtered: bool) -> np.ndarray | None:
        """Packed selector bits over indexed rows; None when every indexed row qualifies."""
        n = self._st.index.ann.n_indexed
        if filtered:
            return np.packbits(mask[:n], bitorder="little")
        if self._st.index.bitmap is None:
            alive = mask[:n]
            self._st.index.bitmap = (
                np.zeros(0, np.uint8) if alive.all() else np.packbits(alive, bitorder="little")
            )
        return self._st.index.bitmap if self._st.index.bitmap.size else None

    def _hits(self, results: list[Result]) -> list[list[Hit]]:
        rows = np.unique(np.concatenate([r for _, r in results])) if results else []
        nodes = self._st.db.live_by_rows(rows, self._st.view) if len(rows) else {}
        out = []
        for scores, rws in results:
            hits = []
            for s, r in zip(scores.tolist(), rws.tolist()):
                node = nodes.get(r)
                if node is None:  # invariant: alive rows have a live node
                    raise StoreCorruptError(
                        f"row {r} has no node in {self._st.db.path}", self._st.db.path
                    )
                hits.append(Hit(node.id, s, node.text, _json(node.metadata)))
            out.append(hits)
        return out

    # ------------------------------------------------------------------ persistence
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
            target = persistence.persist_target(self._st, path)
            persistence.persist(self._st, target, overwrite=overwrite, show_progress=show_progress)
            return target

    def compact(self, *, show_progress: bool = True) -> None:
        """Rewrite memory and nodes without deleted/superseded rows, then rebuild the
        index. Node ids are kept. A persisted store is persisted again (atomically)."""
        with self._writing():
            persistence.compact(self._st, show_progress)
            if self._st.home is not None:
                self.persist(show_progress=show_progress)

    # ------------------------------------------------------------------ index
    def configure(self, **runtime: Any) -> None:
        """Change search-time settings (see :data:`config.RUNTIME_FIELDS`); the next
        `persist` saves them with the store, even if no node changed.

        Example:
            >>> store = MemoryStore(n_mem=2, hidden_size=4, index="hnsw")
            >>> store.configure(hnsw_ef_search=256, rescore_factor=20)
            >>> store.config.hnsw_ef_search
            256
        """
        bad = set(runtime) - RUNTIME_FIELDS
        if bad:
            raise ValueError(
                f"only runtime settings can change: {sorted(RUNTIME_FIELDS)}; got {sorted(bad)}"
            )
        with self._writing():
            st = self._st
            before, st.cfg = st.cfg, StoreConfig.model_validate({**st.cfg.model_dump(), **runtime})
            # Saved by the next persist() (the manifest records the settings in force),
            # even when no node changed meanwhile.
            st.settings_changed |= st.cfg != before
            st.block_rows = block_rows_for(st.cfg.dim, st.cfg.scan_block_bytes)
            if st.index.ann is not None:
                st.index.ann.use_gpu(st.cfg.use_gpu)

    def build_index(self, index: str | None = None, *, show_progress: bool = True) -> None:
        """(Re)train the ANN index over all rows, optionally switching its kind.

        ``persist`` calls this automatically once the store has ``min_index_rows``
        nodes; call it yourself to search a large unpersisted store fast, or to switch
        between ``"flat"``, ``"hnsw"``, ``"ivfpq"`` and factory strings. On error the
        store keeps its previous index and kind.

        Raises:
            ValueError: an invalid index kind, or too few rows to train it.
        """
        with self._writing():
            cfg = self._st.cfg
            if index is not None:
                cfg = StoreConfig.model_validate({**cfg.model_dump(), "index": index})
            ann = indexing.trained(self._st, cfg, show_progress) if cfg.index != "flat" else None
            self._st.begin_write(changes_nodes=False)
            self._st.cfg = cfg
            indexing.set_ann(self._st, ann)

    # ------------------------------------------------------------------ model checks
    def check_model(self, model: Any) -> None:
        """Raise :class:`StoreMismatchError` unless ``model`` fits this store."""
        check.model_shape(model, self._st.cfg)

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: live nodes, rows, segments, unindexed rows, bytes on disk."""
        with self._reading():
            disk = 0
            if self._st.home is not None:
                disk = sum(p.stat().st_size for p in self._st.home.iterdir() if p.is_file())
            return {
                "n_live": self._st.n_live,
                "n_rows": self._st.rows.n_rows,
                "segments": len(self._st.rows.pieces),
                "indexed_rows": self._st.index.ann.n_indexed if self._st.index.ann else 0,
                "generation": self._st.committed,
                "disk_bytes": disk,
            }


def _close_state(state: StoreState) -> None:
    """Close a store's resources (its `close`, its finalizer when it is garbage collected
    or the interpreter exits), saying so when changes to a store on disk are discarded:
    the directory keeps its last persisted version, which a later load returns."""
    if not state.res.closed and state.home is not None and (state.dirty or state.settings_changed):
        warnings.warn(
            f"closing the store at {state.home} discards its unpersisted changes (the "
            f"directory keeps generation {state.committed}); call persist() before close() "
            "to keep them",
            UserWarning,
            stacklevel=3,
        )
    state.res.close()


def _json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError as exc:  # checksummed rows cannot get here; pre-checksum ones can
        raise StoreCorruptError(f"node metadata is not valid JSON: {exc}") from None
