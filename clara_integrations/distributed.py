"""Compress a corpus too large for one machine's time budget, with Ray Data.

`compress_corpus` streams documents through ``ray.data`` ``map_batches`` over a pool of
actors, each holding one `ClaraModel` (loaded once per actor, on a GPU when the cluster
has them), and writes the memories into a store from the driver. It is resumable:
documents whose id the store already holds are skipped before compression, and ids are
deterministic (given ids are kept; otherwise the sha256 of the text), so running the same
command again after a crash compresses only what is missing. ``use_ray=False`` does the
same in this process (no Ray needed). `read_corpus` reads a folder of ``.txt``/``.md``
files or a ``.jsonl`` file; `open_store` opens a store from a path or a Milvus URI.
``clara compress`` (see ``clara_integrations/cli.py``) puts the three together.

Ray is the ``[ray]`` extra (``pip install "clara-integrations[ray]"``) and is imported
only when ``use_ray`` is true.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .errors import NotPicklableError

if TYPE_CHECKING:
    import numpy as np

    from .modeling import ClaraModel
    from .store import MemoryStoreProtocol

__all__ = [
    "CompressStats",
    "compress_corpus",
    "is_milvus_uri",
    "open_store",
    "read_corpus",
    "text_id",
]

logger = logging.getLogger(__name__)

#: Suffixes read as one document per file (as `training.synthesize.read_documents` does).
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst"})
_MILVUS_SCHEMES = ("http://", "https://", "tcp://")


@dataclass(frozen=True)
class CompressStats:
    """What one `compress_corpus` call did."""

    documents: int  # documents read (duplicates included)
    skipped: int  # already in the store before the call
    duplicates: int  # ids seen earlier in the same input (the first one wins)
    compressed: int  # compressed and written in this call
    seconds: float  # wall time of the call, model loading and Ray start-up included

    @property
    def docs_per_s(self) -> float:
        """Documents compressed per second of wall time."""
        return self.compressed / self.seconds if self.seconds > 0 else 0.0


def text_id(text: str) -> str:
    """The deterministic id of a document without one: ``"sha256-"`` + 32 hex digits of
    the sha256 of its UTF-8 text, so the same text gets the same id in every run.

    Example:
        >>> text_id("Paris is the capital of France.")
        'sha256-557be7eca214f1889cdb6dfa348eb7c9'
    """
    return "sha256-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------- reading
def read_corpus(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "text", "metadata"}`` for every document under `path`.

    * a ``.txt``/``.md``/``.markdown``/``.rst`` file is one document; its id is its path
      relative to `path` (the file name when `path` is the file) and its metadata
      ``{"source": id}``;
    * each line of a ``.jsonl`` file is a JSON object with a non-empty string ``"text"``
      and optionally ``"id"`` (kept; else `text_id`) and ``"metadata"`` (an object).

    Files are UTF-8 (a BOM is dropped); lines are read with the training module's readers
    (`training.data`), so bad lines are skipped with one warning that names them
    (``file:line``) as ``python -m training.finetune --docs`` does. Unlike
    `training.synthesize.read_documents` this keeps each line's id and metadata, and
    names files by relative path, so ids do not depend on how `path` is spelled.

    Raises:
        FileNotFoundError: `path` does not exist or holds no usable document.
        DataError: with `strict`, the first bad line.
    """
    from training.data import DataError, iter_jsonl, iter_text_lines, summarize_issues  # noqa: PLC0415

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"--docs {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    found, issues = 0, []

    def problem(message: str) -> None:
        if strict:
            raise DataError(message)
        issues.append(message)

    for file in files:
        name = file.name if file == root else file.relative_to(root).as_posix()
        suffix = file.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            lines = []
            for _, line in iter_text_lines(file, strict=strict):
                if isinstance(line, DataError):
                    issues.append(str(line))
                else:
                    lines.append(line)
            text = "".join(lines).replace("\r\n", "\n").replace("\r", "\n")
            if text.strip():
                found += 1
                yield {"id": name, "text": text, "metadata": {"source": name}}
            elif not lines:
                problem(f"{file}:1: the file is empty")
        elif suffix == ".jsonl":
            for origin, obj in iter_jsonl(file, strict=strict):
                if isinstance(obj, DataError):
                    issues.append(str(obj))
                    continue
                text = obj.get("text") if isinstance(obj, dict) else None
                meta = obj.get("metadata") if isinstance(obj, dict) else None
                if not isinstance(text, str) or not text.strip():
                    problem(f"{origin}: needs a non-empty string 'text'")
                elif meta is not None and not isinstance(meta, dict):
                    problem(f"{origin}: 'metadata' must be an object")
                else:
                    found += 1
                    given = obj.get("id")
                    yield {
                        "id": str(given) if given not in (None, "") else text_id(text),
                        "text": text,
                        "metadata": meta or {},
                    }
    if not found:
        why = f"; {summarize_issues(issues)}" if issues else ""
        raise FileNotFoundError(f"no usable .txt, .md or .jsonl document under --docs {root}{why}")
    if issues:
        logger.warning(
            "--docs %s (--strict stops at the first): %s", root, summarize_issues(issues)
        )


# ---------------------------------------------------------------------------- stores
def is_milvus_uri(spec: str | os.PathLike[str]) -> bool:
    """Whether `spec` names a Milvus store: a server URI (``http://``, ``https://``,
    ``tcp://``) or a Milvus Lite file (``*.db``); anything else is a `MemoryStore` path.

    Example:
        >>> is_milvus_uri("http://localhost:19530"), is_milvus_uri("./milvus.db"), is_milvus_uri("./store")
        (True, True, False)
    """
    text = str(spec)
    return text.lower().startswith(_MILVUS_SCHEMES) or text.lower().endswith(".db")


def open_store(
    spec: str | os.PathLike[str],
    model: ClaraModel,
    *,
    dtype: Any = None,
    collection: str | None = None,
) -> MemoryStoreProtocol:
    """The store `spec` names, opened (or created) for `model`.

    * a Milvus URI (see `is_milvus_uri`): ``MilvusMemoryStore.for_model(model, uri=spec)``
      (``collection=`` when given); needs the ``[milvus]`` extra;
    * a directory holding a persisted `MemoryStore`: ``MemoryStore.load(spec, model=model)``
      (refused with `StoreMismatchError` if another compressor wrote it);
    * a missing or empty directory: a new ``MemoryStore.for_model(model, dtype=...)``
      (float16 by default), persisted there at once so later persists are incremental.

    Raises:
        StoreMismatchError: the store holds memories of another model.
        FileExistsError: `spec` is a non-empty directory that holds no store.
        ImportError: a Milvus URI, and the Milvus backend is not available.
    """
    if is_milvus_uri(spec):
        try:
            from .store import MilvusMemoryStore  # noqa: PLC0415 - optional backend
        except ImportError as exc:
            raise ImportError(
                f"{spec} is a Milvus URI, but the Milvus store backend "
                f"(clara_integrations.store.MilvusMemoryStore) cannot be imported: {exc}. "
                'Install it with pip install "clara-integrations[milvus]", or pass a '
                "directory for a local MemoryStore"
            ) from exc
        kwargs: dict[str, Any] = {"collection": collection} if collection else {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return MilvusMemoryStore.for_model(model, uri=str(spec), **kwargs)
    from .store import MemoryStore  # noqa: PLC0415
    from .store.manifest import MANIFEST_NAME  # noqa: PLC0415

    path = Path(spec)
    if (path / MANIFEST_NAME).is_file():
        return MemoryStore.load(path, model=model)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"--store {path} exists and is not a MemoryStore directory (no {MANIFEST_NAME}); "
            "pass a new or empty directory, or an existing store"
        )
    store = MemoryStore.for_model(model, **({"dtype": dtype} if dtype is not None else {}))
    store.persist(path, show_progress=False)
    return store


# ---------------------------------------------------------------------------- compressing
def _records(docs: Iterable[str | Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """``{"id", "text", "metadata"}`` per document; validated, ids filled in."""
    for i, doc in enumerate(docs):
        if isinstance(doc, str):
            text, given, meta = doc, None, None
        elif isinstance(doc, Mapping):
            text, given, meta = doc.get("text"), doc.get("id"), doc.get("metadata")
        else:
            raise TypeError(f"document {i} is {type(doc).__name__}; expected a str or a dict")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"document {i} needs a non-empty string 'text'")
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"document {i}: 'metadata' must be a dict")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"document {i}: metadata is not JSON-serialisable ({exc})") from None
        yield {
            "id": str(given) if given not in (None, "") else text_id(text),
            "text": text,
            "metadata": dict(meta or {}),
        }


def _model_source(model: ClaraModel) -> tuple[str, dict[str, Any]]:
    """The checkpoint folder and load options that give `model` again in an actor."""
    origin = getattr(model, "_origin", None)
    if origin is None:
        raise NotPicklableError(
            "this ClaraModel was not loaded from a checkpoint folder (built with from_base), "
            "so Ray workers could not load it: save it with model.save_pretrained(DIR) and "
            "pass DIR (or ClaraModel.from_pretrained(DIR))"
        )
    # Each actor picks its own device (the GPU Ray gave it, or the CPU); the dtype stays
    # the driver's, because the model identity the store checks depends on it.
    kwargs = {k: v for k, v in origin.load_kwargs.items() if k != "device"}
    kwargs["dtype"] = model.dtype
    return origin.folder, kwargs


class _Compressor:
    """A Ray Data actor: one model per worker, loaded once, compressing batches."""

    def __init__(
        self,
        folder: str,
        load_kwargs: dict[str, Any],
        identity: str,
        batch_size: int,
        device: str | None,
        threads: int | None,
    ) -> None:
        import torch  # noqa: PLC0415 - the worker's own imports

        from .modeling import ClaraModel  # noqa: PLC0415
        from .store import StoreMismatchError  # noqa: PLC0415

        if threads:
            torch.set_num_threads(threads)
        self.model = ClaraModel.from_pretrained(folder, device=device, **load_kwargs)
        if self.model.model_identity != identity:
            raise StoreMismatchError(
                f"the model a worker loaded from {folder} is {self.model.model_identity!r}, "
                f"not the driver's {identity!r} (did the folder change?)"
            )
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        memory = self.model.compress_documents(
            texts, batch_size=self.batch_size, show_progress=False
        )
        # float32 on the CPU: numpy has no bfloat16, and the store casts to its own dtype.
        return {
            "id": batch["id"],
            "text": batch["text"],
            "metadata": batch["metadata"],
            "memory": memory.float().cpu().numpy(),
        }


def _stored(store: Any, ids: list[str]) -> set[str]:
    """Which of `ids` the store holds: one query where the store answers for many
    (`MilvusMemoryStore.present`; a round trip per id would take hours at 10M documents)."""
    present = getattr(store, "present", None)
    if callable(present):
        return set(present(ids))
    return {i for i in ids if i in store}


class _Writer:
    """Adds batches to the store, persisting a persisted store every `persist_every`."""

    def __init__(self, store: Any, persist_every: int | None, total: int, show: bool) -> None:
        self.store = store
        persist = getattr(store, "persist", None)
        lives_on_disk = getattr(store, "path", None) is not None
        # A store that lives in a directory is always persisted at the end (else the run
        # would be lost at close); `persist_every` only adds the intermediate persists.
        self.persist = persist if callable(persist) and lives_on_disk else None
        self.persist_every = persist_every or 0
        self.pending = 0
        self.written = 0
        self.bar = tqdm(total=total, desc="compressing", unit="doc", disable=not show)

    def add(self, memories: Any, texts: list[str], metadata: list[dict], ids: list[str]) -> None:
        self.store.add(memories, texts=texts, metadata=metadata, ids=ids)
        self.wrote(len(ids))

    def wrote(self, n: int) -> None:
        self.written += n
        self.pending += n
        self.bar.update(n)
        if self.persist is not None and self.persist_every and self.pending >= self.persist_every:
            self.flush()

    def flush(self) -> None:
        if self.persist is not None and self.pending:
            self.persist(show_progress=False)
            self.pending = 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.bar.close()


def compress_corpus(
    docs: Iterable[str | Mapping[str, Any]],
    store: MemoryStoreProtocol,
    model: ClaraModel | str | os.PathLike[str] | None = None,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    use_ray: bool = True,
    batch_size: int = 16,
    num_workers: int = 1,
    num_gpus: float | None = None,
    num_cpus: float = 1,
    ray_address: str | None = None,
    write_batch_size: int = 256,
    persist_every: int | None = 1000,
    show_progress: bool = True,
) -> CompressStats:
    """Compress `docs` into `store`, skipping those it already holds; with Ray by default.

    With `use_ray`, documents go through ``ray.data`` ``map_batches`` over a fixed pool of
    `num_workers` actors, each loading the model once (``ClaraModel.from_pretrained`` of
    the same folder, dtype and options as `model`) and compressing `batch_size`
    documents per call; Ray schedules the batches across the cluster. Without it the
    documents are compressed here, `write_batch_size` at a time, with
    ``store.add_documents``.

    Args:
        docs: strings or dicts with ``"text"`` and optional ``"id"`` (kept) and
            ``"metadata"`` (a JSON-serialisable dict). A document without an id gets
            `text_id` of its text, so a rerun finds it. Read into memory on the driver
            (ids and texts of the documents still to compress).
        store: anything implementing `MemoryStoreProtocol` (`MemoryStore`,
            `MilvusMemoryStore`). It must fit the model: checked with
            ``store.check_model`` before anything is compressed.
        model: a loaded `ClaraModel` (from a checkpoint folder), a checkpoint path, or
            None for the shipped default. A path is loaded here once for the check, on
            the CPU when Ray does the compressing.
        model_kwargs: options of ``ClaraModel.from_pretrained`` when `model` is not a
            loaded model (``base_model=``, ``dtype=``...).
        use_ray: compress with Ray Data (the ``[ray]`` extra) or in this process.
        batch_size: documents per ``compress_documents`` call (per actor call with Ray).
        num_workers: actors, one model each.
        num_gpus: GPUs per actor; None: 1 when the Ray cluster has GPUs, else 0 (the
            actor then runs on the CPU). Fractions share a GPU between actors.
        num_cpus: CPUs per actor (also its torch threads on the CPU).
        ray_address: the cluster to connect to (``"auto"``, ``"ray://host:10001"``); None
            connects to ``$RAY_ADDRESS`` if set, else starts a local cluster (shut down
            at the end). An already initialised Ray is used as it is.
        write_batch_size: documents per ``store.add``.
        persist_every: a store that lives in a directory (``store.path`` set, e.g. a
            loaded `MemoryStore`) is persisted after this many new documents and at the
            end, so an interrupted run resumes from there. None: never persist.
        show_progress: a tqdm bar on the driver over the documents to compress.

    Returns:
        `CompressStats` (read, skipped, duplicates, compressed, seconds).

    Raises:
        StoreMismatchError: `store` holds memories of another model (nothing is written).
        ValueError / TypeError: a document without text, or bad metadata.
        NotPicklableError: with Ray, `model` was not loaded from a checkpoint folder.

    Example:
        >>> from clara_integrations.store import MemoryStore
        >>> store = MemoryStore.for_model(model)
        >>> docs = [{"id": "a", "text": "Paris is in France.", "metadata": {"src": "geo"}},
        ...         "Berlin is in Germany."]
        >>> stats = compress_corpus(docs, store, model, use_ray=False, show_progress=False)
        >>> again = compress_corpus(docs, store, model, use_ray=False, show_progress=False)
        >>> stats.compressed, again.skipped, sorted(store.ids_where())
        (2, 2, ['a', 'sha256-838389897e4b2ae7527fae77650f709b'])

        On a Ray cluster (``ray_address="auto"``), four models, one GPU each; a store
        persisted to a directory is persisted again every `persist_every` documents:

        >>> store.persist("/data/corpus-store")  # doctest: +SKIP
        >>> compress_corpus(docs, store, model, num_workers=4, num_gpus=1)  # doctest: +SKIP
    """
    start = time.perf_counter()
    if batch_size < 1 or num_workers < 1 or write_batch_size < 1:
        raise ValueError("batch_size, num_workers and write_batch_size must be at least 1")
    model = _driver_model(model, model_kwargs, on_cpu=use_ray)
    store.check_model(model)  # before reading or compressing anything: refuse a wrong store
    seen: set[str] = set()
    pending: list[dict[str, Any]] = []
    read = skipped = duplicates = 0
    check_store = len(store) > 0  # an empty store holds nothing to skip: no lookups
    unique: list[dict[str, Any]] = []
    for record in _records(docs):
        read += 1
        if record["id"] in seen:
            duplicates += 1
            continue
        seen.add(record["id"])
        unique.append(record)
    del seen
    for start in range(0, len(unique), 1000):  # which are stored: a lookup per thousand
        part = unique[start : start + 1000]
        stored = _stored(store, [r["id"] for r in part]) if check_store else set()
        skipped += len(stored)
        pending += [r for r in part if r["id"] not in stored]
    del unique
    if duplicates:
        logger.warning("%d documents repeat an earlier id and were left out", duplicates)
    if pending:
        writer = _Writer(store, persist_every, len(pending), show_progress)
        try:
            if use_ray:
                _compress_with_ray(
                    pending,
                    writer,
                    model,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    num_gpus=num_gpus,
                    num_cpus=num_cpus,
                    ray_address=ray_address,
                    write_batch_size=write_batch_size,
                )
            else:
                _compress_here(pending, writer, model, batch_size, write_batch_size)
        finally:
            writer.close()  # also after an interruption: what was written is kept
    return CompressStats(read, skipped, duplicates, len(pending), time.perf_counter() - start)


def _driver_model(model: Any, model_kwargs: Mapping[str, Any] | None, *, on_cpu: bool) -> Any:
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if model_kwargs:
            raise ValueError("model_kwargs is for a checkpoint path, not a loaded model")
        return model
    from .modeling import ClaraModel  # noqa: PLC0415

    kwargs = dict(model_kwargs or {})
    if on_cpu:  # the driver's copy only checks the store; the actors compress
        kwargs.setdefault("device", "cpu")
    return ClaraModel.from_pretrained(model, **kwargs)


def _compress_here(
    pending: list[dict[str, Any]], writer: _Writer, model: Any, batch_size: int, chunk: int
) -> None:
    for s in range(0, len(pending), chunk):
        part = pending[s : s + chunk]
        ids = [r["id"] for r in part]
        writer.store.add_documents(
            [r["text"] for r in part],
            model,
            metadata=[r["metadata"] for r in part],
            ids=ids,
            batch_size=batch_size,
            show_progress=False,
        )
        writer.wrote(len(ids))


def _compress_with_ray(
    pending: list[dict[str, Any]],
    writer: _Writer,
    model: Any,
    *,
    batch_size: int,
    num_workers: int,
    num_gpus: float | None,
    num_cpus: float,
    ray_address: str | None,
    write_batch_size: int,
) -> None:
    try:
        import ray  # noqa: PLC0415 - the optional [ray] extra
        import ray.data  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            'compressing with Ray needs the [ray] extra: pip install "clara-integrations[ray]"'
            " (or use_ray=False / clara compress without --ray)"
        ) from exc
    import torch  # noqa: PLC0415

    folder, load_kwargs = _model_source(model)
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address)
    elif ray_address is not None:
        logger.warning("Ray is already initialised; ray_address=%r is ignored", ray_address)
    try:
        if num_gpus is None:
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        context = ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, False  # ours instead
        try:
            # Metadata travels as JSON text: Arrow would turn dicts of different keys into
            # one struct type, filling missing keys with nulls.
            rows = [
                {"id": r["id"], "text": r["text"], "metadata": json.dumps(r["metadata"])}
                for r in pending
            ]
            dataset = ray.data.from_items(
                rows, override_num_blocks=max(1, -(-len(rows) // batch_size))
            ).map_batches(
                _Compressor,
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                fn_constructor_kwargs={
                    "folder": folder,
                    "load_kwargs": load_kwargs,
                    "identity": model.model_identity,
                    "batch_size": batch_size,
                    "device": None if num_gpus else "cpu",
                    "threads": None if num_gpus else max(1, int(num_cpus)),
                },
            )
            # The writes happen here, on the driver, not in the actors: a store has one
            # writer (MemoryStore is a single-process writer holding its directory's lock;
            # parallel inserts into one Milvus collection would gain little over batches),
            # and one writer keeps the resume logic simple: a document is in the store
            # exactly when its batch was added.
            for batch in dataset.iter_batches(batch_size=write_batch_size, batch_format="numpy"):
                writer.add(
                    torch.tensor(batch["memory"]),  # a copy: Ray's arrays are read-only
                    texts=[str(t) for t in batch["text"]],
                    metadata=[json.loads(m) for m in batch["metadata"]],
                    ids=[str(i) for i in batch["id"]],
                )
        finally:
            context.enable_progress_bars = bars
    finally:
        if started:
            ray.shutdown()
