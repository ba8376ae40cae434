"""Frozen-compressor memories kept on disk between runs (`--memory-cache-dir`).

A run that trains the query reasoner or the generator against a frozen compressor spends
its first minutes compressing the stage's documents (the bank of `--retrieval-negatives
bank`: 5,593 documents, 20-34 min on a 2-core CPU). The next run from the same compressor
on the same data computes the same rows again. With a cache directory, `MemoryCache`
saves what it compressed and the next run loads it.

A file is reused only when it was made from the *same* inputs in the same way, so that
loading it gives exactly the numbers compressing would (and a resumed run stays
bit-identical to an uninterrupted one): its name is a digest of the compressor's
`model_identity`, the sorted distinct texts, the encode batch size, the parameter dtypes,
the autocast state, the device type and the torch and transformers versions. Anything
else (another compressor, one document more, bf16 instead of fp32) is another file. The
key cannot see the processor or the thread count, which can change the last bits of a
float: a cache directory is for reruns on the same machine. Each file records a digest of
its rows, so a file damaged inside an intact safetensors frame is recomputed too. Files are
written atomically under a lock, so concurrent runs never read half a file and compress a
set once between them.

Example:
    >>> import tempfile
    >>> directory = Path(tempfile.mkdtemp())
    >>> key = memory_file_key(model, ["Paris is in France."], batch_size=64)
    >>> memory, mse = torch.zeros(1, model.n_mem, model.hidden_size), torch.zeros(1)
    >>> save_memories(directory / f"{key}.safetensors", memory, mse, model.model_identity)
    >>> load_memories(directory / f"{key}.safetensors", 1)[0].shape == memory.shape
    True
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from clara_integrations import ClaraModel
from clara_integrations._atomic import atomic_write

__all__ = ["load_memories", "memory_file_key", "save_memories"]

logger = logging.getLogger(__name__)


def _autocast_state(device_type: str) -> str:
    if not torch.is_autocast_enabled(device_type):
        return "off"
    return str(torch.get_autocast_dtype(device_type))


def memory_file_key(model: ClaraModel, texts: Sequence[str], batch_size: int) -> str:
    """Digest of everything the memory of `texts` (sorted, distinct) depends on."""
    device_type = model.device.type
    digest = hashlib.sha256()
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    header = (
        f"{model.model_identity}|{torch.__version__}|{transformers.__version__}|{device_type}|"
        f"{_autocast_state(device_type)}|{','.join(dtypes)}|{batch_size}|{len(texts)}"
    )
    digest.update(header.encode())
    for text in texts:
        digest.update(b"\0")
        digest.update(text.encode())
    return f"{model.model_identity}-{digest.hexdigest()[:24]}"


def _rows_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in ("memory", "mse"):
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_memories(path: Path, memory: torch.Tensor, mse: torch.Tensor, identity: str) -> None:
    """Write (memory, mse) to `path` atomically (a crash leaves no partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"memory": memory.detach().contiguous().cpu(), "mse": mse.detach().contiguous().cpu()}
    metadata = {"model_identity": identity, "sha256": _rows_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    size_mb = path.stat().st_size / 2**20
    logger.info("saved %d memories (%.1f MiB) to %s", len(memory), size_mb, path)


def load_memories(path: Path, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(memory, mse) from `path`, or None when there is no usable file there (a damaged
    or mismatched file is reported and ignored: the caller compresses again)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:  # one read: header and rows
            recorded = (handle.metadata() or {}).get("sha256")
            tensors = {name: handle.get_tensor(name) for name in ("memory", "mse")}
        memory, mse = tensors["memory"], tensors["mse"]
        if recorded != _rows_digest(tensors):
            raise ValueError(f"its rows do not match the digest recorded with them ({recorded})")
    except (SafetensorError, KeyError, OSError, ValueError) as exc:
        warnings.warn(
            f"ignoring the unreadable memory cache file {path} ({exc}); compressing again",
            stacklevel=3,
        )
        return None
    if len(memory) != count or len(mse) != count:
        warnings.warn(
            f"ignoring the memory cache file {path}: {len(memory)} rows, expected {count}; "
            "compressing again",
            stacklevel=3,
        )
        return None
    return memory, mse
