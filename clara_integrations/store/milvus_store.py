"""`MilvusMemoryStore`: the node store of `MemoryStore`, kept in Milvus (``[milvus]`` extra).

For a team past one machine: the memories live in an existing Milvus deployment (a server
or cluster, ``http://host:19530``) or, on one machine, in a Milvus Lite folder
(``./clara.db``); the LlamaIndex and LangChain classes take it in place of a `MemoryStore`.
Validation, errors, filters and the fingerprint are `MemoryStore`'s own (shared modules),
and every method keeps its semantics (`MemoryStoreProtocol`).

Layout of one collection (``consistency_level="Strong"``: a write is visible to the next
read, from any process):

| field | type | holds |
|---|---|---|
| ``pk`` | VARCHAR primary key | sha256 of the node id (a safe literal in any expression) |
| ``id`` | VARCHAR | the node id, as given |
| ``text`` / ``metadata`` | VARCHAR / JSON | what `get_nodes` returns |
| ``pairs``, ``numbers``, ``strings`` | ARRAY / JSON | the filterable form (`milvus_filters`) |
| ``memory`` | FLOAT_VECTOR (n_mem x H) | the exact memory, indexed (COSINE) |

Memory wider than Milvus indexes (``max_vector_dim``, 32,768 on a Milvus server; CLaRa-7B
at compression 16 has 65,536 values per document) is kept exactly in several
``memory_<i>`` parts (never searched) and a fixed random projection of the unit memory to
``projection_dim`` values is indexed instead (Johnson-Lindenstrauss: inner products are
kept within ~1/sqrt(projection_dim)). `MemoryStore`'s hnsw/ivfpq do the same with a PCA.

Whatever is indexed, `search` re-scores the candidates exactly: Milvus finds ``k``
candidates on the memory itself (exactly with ``index="flat"``), or
``max(k * rescore_factor, min_candidates)`` on a projection (approximate then, even with
"flat", as `MemoryStore`'s PCA indexes are), their memories are read back and ranked by
the exact cosine, computed as `MemoryStore` does. Memories are sent as float32, which holds float16/bfloat16 values
exactly, so `get_memories` returns what `MemoryStore` would.

Writes from several processes are serialised by Milvus. Ids are checked before an insert;
two processes adding the *same* caller-given id at once are not detected (generated ids
are uuid4 and never collide). An `add` or `update` that fails midway undoes what it had
written. `update` reads the rows it changes and writes them back whole: two processes
updating the same node at once keep one of the two changes, as with any read-modify-write.

Example:
    >>> import torch
    >>> from clara_integrations.store import MilvusMemoryStore
    >>> store = MilvusMemoryStore(str(tmp_path / "clara.db"), n_mem=2, hidden_size=4)
    >>> ids = store.add(torch.randn(2, 2, 4), texts=["a", "b"], metadata=[{"s": 1}, {"s": 2}])
    >>> [h.id for h in store.search(store.get_memories(ids[:1]).flatten(1), k=1)[0]] == ids[:1]
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from . import _validate as check
from ._documents import add_in_chunks, document_texts
from .config import RUNTIME_FIELDS, StoreConfig, canonical_dtype
from .errors import NodeNotFoundError, StoreClosedError, StoreError, StoreMismatchError
from .milvus_filters import metadata_fields, milvus_expression
from .records import Hit, Node

__all__ = ["MilvusMemoryStore"]

logger = logging.getLogger(__name__)

#: Collection property holding the store's config and layout (JSON).
_PROPERTY = "clara.store"
#: Milvus limits: VARCHAR bytes, ARRAY capacity, hits per query, query page.
_MAX_VARCHAR = 65_535
_MAX_ID_BYTES = 4_096
_MAX_PAIRS = 4_096
_MAX_TOPK = 16_384
_PAGE = 1_000
#: Request size kept under gRPC's default 64 MiB message limit.
_REQUEST_BYTES = 16 << 20
_INDEXES = {"flat": "FLAT", "hnsw": "HNSW"}


class _NoLiteTimestampWarning(logging.Filter):
    """Milvus Lite has no MVCC timestamps: every query iterator warns that it uses the
    client's clock, which is what a Strong-consistency collection needs anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_NoLiteTimestampWarning())


def _milvus() -> Any:
    try:
        import pymilvus
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "MilvusMemoryStore needs pymilvus (and milvus-lite for a local ./file.db): "
            "pip install 'clara-integrations[milvus]'"
        ) from None
    return pymilvus


def _pk(node_id: str) -> str:
    """The primary key of a node: hex digits, so no id needs quoting in an expression."""
    return hashlib.sha256(node_id.encode("utf-8", "surrogatepass")).hexdigest()


def _pk_expression(ids: Sequence[str]) -> str:
    return f"pk in {json.dumps([_pk(i) for i in ids])}"


@functools.lru_cache(maxsize=4)
def _projection(dim: int, width: int, seed: int) -> torch.Tensor:
    """The fixed (dim, width) Gaussian projection, the same in every process (built once
    per process: at 65,536 x 1,024 it is 256 MiB and takes a second)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim, width, generator=gen) / math.sqrt(width)


class MilvusMemoryStore:
    """`MemoryStore`'s API over a Milvus collection (see the module docstring).

    Args:
        uri: a Milvus Lite path (``"./clara.db"``) or a server URI (``"http://host:19530"``).
        collection: collection name; an existing one is opened (its config rules, and a
            different ``n_mem``/``hidden_size``/``dtype`` is refused), else created.
        n_mem, hidden_size: memory shape (needed to create a collection).
        dtype: precision the memories are kept at (rounded to it, as in `MemoryStore`;
            default float16 for a new collection, the collection's own otherwise).
        index: ``"flat"`` (exact, default) or ``"hnsw"`` (Milvus HNSW with
            `StoreConfig`'s ``hnsw_m`` / ``hnsw_ef_construction`` / ``hnsw_ef_search``).
        model_identity: the compressor's identity; None adopts the first model given to
            `add_documents`.
        token: server credentials (``"user:password"`` or an API key; default: the
            ``MILVUS_TOKEN`` environment variable). Never pickled.
        max_vector_dim: widest vector the deployment indexes (Milvus: 32,768).
        projection_dim: width of the indexed projection of wider memories.
        **options: further `StoreConfig` fields (``rescore_factor``, ``min_candidates``...);
            for an existing collection only the runtime ones (`configure`).

    Raises:
        StoreMismatchError: the collection exists with another shape, dtype, index or
            model identity.
        ValueError: a new collection without ``n_mem``/``hidden_size``, or a bad option.
    """

    def __init__(
        self,
        uri: str,
        collection: str = "clara",
        *,
        n_mem: int | None = None,
        hidden_size: int | None = None,
        dtype: torch.dtype | str | None = None,
        index: str = "flat",
        model_identity: str | None = None,
        token: str | None = None,
        max_vector_dim: int = 32_768,
        projection_dim: int = 1_024,
        **options: Any,
    ) -> None:
        if index not in _INDEXES:
            raise ValueError(f"index must be one of {sorted(_INDEXES)} on Milvus, got {index!r}")
        uri = str(uri)
        if "://" not in uri:  # a Milvus Lite folder: the same one from any working directory
            uri = os.path.abspath(uri)
        self._uri, self._collection = uri, collection
        token = token if token is not None else os.environ.get("MILVUS_TOKEN")
        self._client = _milvus().MilvusClient(uri=self._uri, token=token or "")
        self._closed = False
        self._lock = threading.Lock()  # one writer per handle; Milvus orders the rest
        if self._client.has_collection(collection):
            self._open(n_mem, hidden_size, dtype, index, model_identity, options)
        else:
            if n_mem is None or hidden_size is None:
                raise ValueError(
                    f"collection {collection!r} does not exist at {self._uri}: pass n_mem= and "
                    "hidden_size= (or use MilvusMemoryStore.for_model(model, uri))"
                )
            cfg = StoreConfig(
                n_mem=n_mem,
                hidden_size=hidden_size,
                dtype=canonical_dtype(dtype or torch.float16),
                index=index,
                model_identity=model_identity,
                **options,
            )
            parts = 1 if cfg.dim <= max_vector_dim else math.ceil(cfg.dim / max_vector_dim)
            layout = {
                "parts": parts,
                "projection_dim": projection_dim if parts > 1 else 0,
                "projection_seed": 0,
            }
            self._create(cfg, layout)
        self._client.load_collection(collection)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def for_model(
        cls, model: Any, uri: str, collection: str = "clara", **kwargs: Any
    ) -> MilvusMemoryStore:
        """A store shaped for ``model`` (n_mem, hidden size, identity).

        Example:
            >>> store = MilvusMemoryStore.for_model(model, str(tmp_path / "m.db"))
            >>> store.config.n_mem == model.n_mem
            True
        """
        kwargs.setdefault("model_identity", getattr(model, "model_identity", None))
        return cls(uri, collection, n_mem=model.n_mem, hidden_size=model.hidden_size, **kwargs)

    def _create(self, cfg: StoreConfig, layout: dict[str, Any]) -> None:
        milvus = _milvus()
        dt = milvus.DataType
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", dt.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("id", dt.VARCHAR, max_length=_MAX_ID_BYTES)
        schema.add_field("text", dt.VARCHAR, max_length=_MAX_VARCHAR)
        schema.add_field("metadata", dt.JSON)
        schema.add_field(
            "pairs", dt.ARRAY, element_type=dt.VARCHAR, max_capacity=_MAX_PAIRS, max_length=32
        )
        schema.add_field("numbers", dt.JSON)
        schema.add_field("strings", dt.JSON)
        index = self._client.prepare_index_params()
        kind = _INDEXES[cfg.index]
        params = {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction}
        params = params if kind == "HNSW" else {}
        for name, width in self._part_widths(cfg, layout):
            schema.add_field(name, dt.FLOAT_VECTOR, dim=width)
            if layout["parts"] == 1:  # the memory itself is what is searched
                index.add_index(name, index_type=kind, metric_type="COSINE", params=params)
            else:  # kept exactly, never searched: the cheapest index Milvus accepts
                index.add_index(name, index_type="FLAT", metric_type="L2")
        if layout["projection_dim"]:
            schema.add_field("projection", dt.FLOAT_VECTOR, dim=layout["projection_dim"])
            index.add_index("projection", index_type=kind, metric_type="COSINE", params=params)
        self._cfg, self._layout = cfg, layout
        # The config travels with the creation: no moment with a collection but no config.
        self._client.create_collection(
            self._collection,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties={_PROPERTY: self._config_json()},
        )

    def _saved_config(self) -> tuple[StoreConfig, dict[str, Any]]:
        props = self._client.describe_collection(self._collection).get("properties", {})
        if _PROPERTY not in props:
            raise StoreError(
                f"collection {self._collection!r} at {self._uri} was not made by "
                "MilvusMemoryStore (no store config); pick another collection name"
            )
        saved = json.loads(props[_PROPERTY])
        return StoreConfig.model_validate(saved["config"]), saved["layout"]

    def _open(
        self,
        n_mem: int | None,
        hidden_size: int | None,
        dtype: Any | None,
        index: str,
        model_identity: str | None,
        options: dict[str, Any],
    ) -> None:
        self._cfg, self._layout = self._saved_config()
        cfg = self._cfg
        given = (n_mem or cfg.n_mem, hidden_size or cfg.hidden_size)
        wrong = given != (cfg.n_mem, cfg.hidden_size) or (
            dtype is not None and canonical_dtype(dtype) != cfg.dtype
        )
        if wrong or (index != "flat" and index != cfg.index):
            raise StoreMismatchError(
                f"collection {self._collection!r} holds memories of fingerprint "
                f"{cfg.fingerprint} (index {cfg.index!r}); asked for n_mem={n_mem}, "
                f"H={hidden_size}, dtype={dtype}, index={index!r}. Use another collection name"
            )
        if model_identity is not None and cfg.model_identity not in (None, model_identity):
            raise StoreMismatchError(
                f"collection {self._collection!r} was built by model {cfg.model_identity!r} "
                f"(fingerprint {cfg.fingerprint}) but got model {model_identity!r}; its memories "
                "live in another space. Use another collection or the original model"
            )
        fixed = set(options) - RUNTIME_FIELDS
        if fixed:
            raise ValueError(
                f"collection {self._collection!r} exists: only runtime settings can be given "
                f"({sorted(RUNTIME_FIELDS)}), got {sorted(fixed)}"
            )
        if options:
            self._cfg = StoreConfig.model_validate({**cfg.model_dump(), **options})

    def _config_json(self) -> str:
        return json.dumps({"config": self._cfg.model_dump(), "layout": self._layout})

    def configure(self, **runtime: Any) -> None:
        """Change this handle's search-time settings (`config.RUNTIME_FIELDS`, e.g.
        ``rescore_factor``, ``hnsw_ef_search``); the collection is not changed.

        Raises:
            ValueError: a setting that is not a runtime one.
        """
        bad = set(runtime) - RUNTIME_FIELDS
        if bad:
            raise ValueError(
                f"only runtime settings can change: {sorted(RUNTIME_FIELDS)}; got {sorted(bad)}"
            )
        self._cfg = StoreConfig.model_validate({**self._cfg.model_dump(), **runtime})

    @staticmethod
    def _part_widths(cfg: StoreConfig, layout: dict[str, Any]) -> list[tuple[str, int]]:
        parts = layout["parts"]
        if parts == 1:
            return [("memory", cfg.dim)]
        width = math.ceil(cfg.dim / parts)
        return [(f"memory_{i}", min(width, cfg.dim - i * width)) for i in range(parts)]

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> StoreConfig:
        """The store's `StoreConfig` (read-only)."""
        return self._cfg

    @property
    def fingerprint(self) -> str:
        """Model identity + n_mem + H + dtype, as `MemoryStore.fingerprint`."""
        return self._cfg.fingerprint

    @property
    def uri(self) -> str:
        """Where the collection lives."""
        return self._uri

    def __len__(self) -> int:
        rows = self._call(
            self._client.query, self._collection, filter="", output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"])

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and bool(node_id) and bool(self.present([node_id]))

    def __repr__(self) -> str:
        return (
            f"MilvusMemoryStore(uri={self._uri!r}, collection={self._collection!r}, "
            f"n_mem={self._cfg.n_mem}, hidden_size={self._cfg.hidden_size}, "
            f"dtype={self._cfg.dtype}, index={self._cfg.index!r})"
        )

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        """Pickle by reference: the unpickled store connects to the same collection (a
        server's from any process, with ``MILVUS_TOKEN`` for credentials, which are never
        pickled; a Milvus Lite folder is held by one process at a time)."""
        return _reopen, (self._uri, self._collection)

    def __enter__(self) -> MilvusMemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; the data stays in Milvus. Later use raises `StoreClosedError`."""
        with self._lock:  # not in the middle of another thread's write
            if not self._closed:
                self._closed = True
                self._client.close()

    def check_model(self, model: Any) -> None:
        """Raise `StoreMismatchError` unless ``model`` fits this store."""
        check.model_shape(model, self._cfg)

    # ------------------------------------------------------------------ helpers
    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise StoreClosedError(f"MilvusMemoryStore {self._collection!r} is closed")
        return method(*args, **kwargs)

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are in the store (one query per thousand ids; a resumed
        `compress_corpus` asks this of every document).

        Example:
            >>> store = MilvusMemoryStore(str(tmp_path / "p.db"), n_mem=2, hidden_size=4)
            >>> store.present(store.add(torch.randn(1, 2, 4), ids=["a"]) + ["nope"])
            {'a'}
        """
        ids_ = check.node_ids(ids)
        found: set[str] = set()
        unique = list(dict.fromkeys(ids_))
        for s in range(0, len(unique), _PAGE):
            rows = self._call(
                self._client.query,
                self._collection,
                filter=_pk_expression(unique[s : s + _PAGE]),
                output_fields=["id"],
            )
            found.update(r["id"] for r in rows)
        return found

    def _fetch(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(ids))
        step = self._rows_per_request()
        for s in range(0, len(unique), step):
            got = self._call(
                self._client.query,
                self._collection,
                filter=_pk_expression(unique[s : s + step]),
                output_fields=["id", *fields],
            )
            rows.update((r["id"], r) for r in got)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise NodeNotFoundError(f"{len(missing)} id(s) not in the store, e.g. {missing[:5]}")
        return rows

    def _rows_per_request(self, extra_bytes: int = 0) -> int:
        """Rows per request within `_REQUEST_BYTES` (gRPC's limit is 64 MiB): vectors as
        float32, plus `extra_bytes` per row (text, metadata) when known."""
        row = 4 * (self._cfg.dim + self._layout["projection_dim"]) + 1024 + extra_bytes
        return max(1, _REQUEST_BYTES // row)

    def _memory_fields(self) -> list[str]:
        return [name for name, _ in self._part_widths(self._cfg, self._layout)]

    def _memory_of(self, row: Mapping[str, Any]) -> torch.Tensor:
        """The flat memory (dim,) of a fetched row, in the store dtype."""
        parts = [torch.as_tensor(row[name], dtype=torch.float32) for name in self._memory_fields()]
        return torch.cat(parts).to(self._cfg.torch_dtype)

    def _rows(
        self,
        ids: list[str],
        mem: torch.Tensor,
        texts: list[str],
        metas: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Milvus rows of validated nodes (`mem`: (N, dim) in the store dtype)."""
        flat = mem.float()
        projected = None
        if self._layout["projection_dim"]:
            matrix = _projection(
                self._cfg.dim, self._layout["projection_dim"], self._layout["projection_seed"]
            )
            projected = F.normalize(flat, dim=1, eps=1e-12) @ matrix
        rows = []
        for j, (node_id, text, meta) in enumerate(zip(ids, texts, metas)):
            if len(text.encode()) > _MAX_VARCHAR:
                raise ValueError(
                    f"texts[{j}] is {len(text.encode())} bytes; Milvus keeps at most "
                    f"{_MAX_VARCHAR} per node: split the document into chunks first"
                )
            filterable = metadata_fields(meta)
            if len(filterable["pairs"]) > _MAX_PAIRS:
                raise ValueError(
                    f"metadata[{j}] has {len(filterable['pairs'])} filterable values; Milvus "
                    f"keeps at most {_MAX_PAIRS} per node"
                )
            if len(node_id.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
                raise ValueError(
                    f"ids[{j}] is longer than the {_MAX_ID_BYTES} bytes Milvus keeps per id"
                )
            row = {"pk": _pk(node_id), "id": node_id, "text": text, "metadata": meta}
            row.update(filterable)
            start = 0
            for name, width in self._part_widths(self._cfg, self._layout):
                row[name] = flat[j, start : start + width].tolist()
                start += width
            if projected is not None:
                row["projection"] = projected[j].tolist()
            rows.append(row)
        return rows

    def _write(self, method: Any, rows: list[dict[str, Any]]) -> None:
        """Send `rows` in requests that stay within `_REQUEST_BYTES`."""
        start, size = 0, 0
        limit = self._rows_per_request()
        for end, row in enumerate(rows, 1):
            size += len(row["text"]) + 64 * len(row["pairs"]) + len(json.dumps(row["metadata"]))
            if end - start >= limit or size >= _REQUEST_BYTES // 2 or end == len(rows):
                self._call(method, self._collection, data=rows[start:end])
                start, size = end, 0

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"MilvusMemoryStore {self._collection!r} is closed")
            yield

    def _undo(self, action: Any) -> None:
        """Undo a half-done write; a failure here is logged, the write's own error is the
        one raised."""
        try:
            action()
        except Exception:  # noqa: BLE001 - the caller re-raises the original error
            logger.exception(
                "could not undo a failed write in collection %r: check its nodes", self._collection
            )

    # ------------------------------------------------------------------ writing
    def add(
        self,
        memories: torch.Tensor,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Add nodes with their memories (as `MemoryStore.add`).

        Raises:
            ValueError / TypeError: wrong shape, non-finite values, length mismatch,
                duplicate or already-present ids, a text or metadata over Milvus' limits.
                Nothing is added then.
        """
        mem = check.memories(memories, self._cfg)
        n = mem.shape[0]
        texts_ = check.texts(texts, n)
        metas = check.metadata(metadata, n)
        ids_, supplied = check.new_ids(ids, n)
        if n == 0:
            return []
        rows = self._rows(ids_, mem, texts_, metas)
        with self._writing():
            if supplied and (taken := self.present(ids_)):
                raise ValueError(
                    f"ids already in the store: {sorted(taken)[:5]}; use update() to change them"
                )
            try:
                self._write(self._client.insert, rows)
            except BaseException:
                self._undo(
                    lambda: self._client.delete(self._collection, filter=_pk_expression(ids_))
                )
                raise
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
        """Compress ``texts`` with ``model`` and add them (as `MemoryStore.add_documents`).

        Raises:
            StoreMismatchError: the model's shape or identity differs from the store's.
        """
        texts_ = document_texts(texts)
        identity = check.model_shape(model, self._cfg)
        metas = check.metadata(metadata, len(texts_))
        ids_, supplied = check.new_ids(ids, len(texts_))
        if supplied and (taken := self.present(ids_)):
            raise ValueError(f"ids already in the store: {sorted(taken)[:5]}")
        if self._cfg.model_identity is None and identity is not None:
            with self._writing():
                saved, _ = self._saved_config()  # another process may have adopted one since
                self._cfg = self._cfg.model_copy(update={"model_identity": saved.model_identity})
                check.model_shape(model, self._cfg)
                if saved.model_identity is None:
                    self._cfg = self._cfg.model_copy(update={"model_identity": identity})
                    self._call(
                        self._client.alter_collection_properties,
                        self._collection,
                        properties={_PROPERTY: self._config_json()},
                    )
                    logger.info("store adopts model identity %r", identity)
        return add_in_chunks(
            self.add, model, texts_, metas, ids_, batch_size, chunk_size, show_progress
        )

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete nodes; returns how many.

        Raises:
            NodeNotFoundError: an id is not present (unless ``missing_ok``); nothing is
                deleted then.
        """
        ids_ = list(dict.fromkeys(check.node_ids(ids)))
        with self._writing():
            found = self.present(ids_)
            if len(found) != len(ids_) and not missing_ok:
                missing = [i for i in ids_ if i not in found]
                raise NodeNotFoundError(
                    f"{len(missing)} id(s) not in the store, e.g. {missing[:5]}"
                )
            if found:
                self._call(
                    self._client.delete, self._collection, filter=_pk_expression(sorted(found))
                )
        return len(found)

    def update(
        self,
        ids: Sequence[str],
        memories: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Replace the memory, text and/or metadata of existing nodes (as
        `MemoryStore.update`; each row is replaced by one upsert).

        Raises:
            NodeNotFoundError: an id is not present; nothing changes then.
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
        if n == 0:
            return
        with self._writing():
            old = self._fetch(ids_, ["text", "metadata", *self._memory_fields()])
            before = torch.stack([self._memory_of(old[i]) for i in ids_])
            texts_before = [old[i]["text"] for i in ids_]
            metas_before = [old[i]["metadata"] for i in ids_]
            rows = self._rows(
                ids_,
                mem if mem is not None else before,
                texts_ if texts_ is not None else texts_before,
                metas if metas is not None else metas_before,
            )
            try:
                self._write(self._client.upsert, rows)
            except BaseException:  # all or nothing: the rows as they were
                previous = self._rows(ids_, before, texts_before, metas_before)
                self._undo(lambda: self._write(self._client.upsert, previous))
                raise

    # ------------------------------------------------------------------ reading
    def get_memories(self, ids: Sequence[str]) -> torch.Tensor:
        """Memories of ``ids`` as ``[len(ids), n_mem, H]`` in the store dtype (CPU).

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        cfg = self._cfg
        if not ids_:
            return torch.empty(0, cfg.n_mem, cfg.hidden_size, dtype=cfg.torch_dtype)
        rows = self._fetch(ids_, self._memory_fields())
        return torch.stack([self._memory_of(rows[i]) for i in ids_]).reshape(
            len(ids_), cfg.n_mem, cfg.hidden_size
        )

    def get_nodes(self, ids: Sequence[str]) -> list[Node]:
        """Id, text and metadata of ``ids``, in order.

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        rows = self._fetch(ids_, ["text", "metadata"]) if ids_ else {}
        return [Node(i, rows[i]["text"], dict(rows[i]["metadata"] or {})) for i in ids_]

    def get_nodes_with_memories(self, ids: Sequence[str]) -> tuple[list[Node], torch.Tensor]:
        """`get_nodes` and `get_memories` of ``ids`` in one fetch: each node's text,
        metadata and memory come from the same row version (Milvus reads whole rows).

        Raises:
            NodeNotFoundError: an id is not present.
        """
        ids_ = check.node_ids(ids)
        cfg = self._cfg
        if not ids_:
            return [], torch.empty(0, cfg.n_mem, cfg.hidden_size, dtype=cfg.torch_dtype)
        rows = self._fetch(ids_, ["text", "metadata", *self._memory_fields()])
        nodes = [Node(i, rows[i]["text"], dict(rows[i]["metadata"] or {})) for i in ids_]
        memories = torch.stack([self._memory_of(rows[i]) for i in ids_])
        return nodes, memories.reshape(len(ids_), cfg.n_mem, cfg.hidden_size)

    def ids_where(self, filters: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of every node matching ``filters`` (the `search` syntax; all without), sorted.

        Raises:
            ValueError: malformed filters.
        """
        expression = milvus_expression(filters) or 'id != ""'
        iterator = self._call(
            self._client.query_iterator,
            self._collection,
            batch_size=_PAGE,
            filter=expression,
            output_fields=["id"],
        )
        found: list[str] = []
        try:
            while batch := iterator.next():
                found.extend(r["id"] for r in batch)
        finally:
            iterator.close()
        return sorted(found)

    def search(
        self,
        query_vectors: torch.Tensor,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` nodes per query by exact cosine, filters applied before the cut
        (pushed down to Milvus); as `MemoryStore.search`.

        Raises:
            ValueError: wrong query width, non-finite values, bad ``k`` or filter, or
                ``k`` above what Milvus returns per query (16,384) on a larger store.
        """
        q = check.queries(query_vectors, self._cfg)
        k = check.k_value(k)
        expression = milvus_expression(filters)
        if k > _MAX_TOPK:
            k = min(k, max(len(self), 1))  # k=10**9 means "all", as in MemoryStore
            if k > _MAX_TOPK:
                raise ValueError(f"k={k}: Milvus returns at most {_MAX_TOPK} hits per query")
        projected = bool(self._layout["projection_dim"])
        # Milvus ranks the memory itself by cosine (exactly with "flat"): its top k are
        # the candidates. A projection only approximates the ranking: a larger pool.
        pool = k
        if projected:
            pool = min(max(k * self._cfg.rescore_factor, self._cfg.min_candidates), _MAX_TOPK)
        field, data = "memory", q
        if projected:
            matrix = _projection(
                self._cfg.dim, self._layout["projection_dim"], self._layout["projection_seed"]
            )
            field, data = "projection", q @ matrix
        params = {}
        if self._cfg.index == "hnsw":
            params = {"params": {"ef": max(self._cfg.hnsw_ef_search, pool)}}
        fields = ["text", "metadata", *self._memory_fields()]
        # The memories come back with the hits when the reply stays small; else they are
        # read in chunks afterwards (a reply is limited to 64 MiB like any request).
        inline = q.shape[0] * pool * 4 * self._cfg.dim <= _REQUEST_BYTES
        found = self._call(
            self._client.search,
            self._collection,
            data=data.tolist(),
            anns_field=field,
            limit=pool,
            filter=expression,
            output_fields=["id", *(fields if inline else [])],
            search_params=params,
        )
        candidates = [[hit["entity"]["id"] for hit in per_query] for per_query in found]
        if inline:
            rows = {hit["entity"]["id"]: hit["entity"] for per_query in found for hit in per_query}
        else:
            rows = self._fetch([i for ids in candidates for i in ids], fields)
        out = []
        for row_q, ids in zip(q, candidates):
            if not ids:
                out.append([])
                continue
            mem = torch.stack([self._memory_of(rows[i]) for i in ids]).float()
            scores = F.normalize(mem, dim=1, eps=1e-12) @ row_q  # exact, as MemoryStore
            order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
            out.append(
                [
                    Hit(
                        ids[j],
                        float(scores[j]),
                        rows[ids[j]]["text"],
                        dict(rows[ids[j]]["metadata"] or {}),
                    )
                    for j in order
                ]
            )
        return out


def _reopen(uri: str, collection: str) -> MilvusMemoryStore:
    return MilvusMemoryStore(uri, collection)
