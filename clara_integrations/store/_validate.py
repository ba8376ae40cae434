"""Input checks at the store's public boundary. Each error names the argument and the fix."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import StoreConfig
from .errors import StoreMismatchError


def as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x.detach()


def memories(x: Any, cfg: StoreConfig) -> torch.Tensor:
    """[N, n_mem, H] in any float dtype/device -> CPU [N, n_mem*H] in the store dtype."""
    x = as_tensor(x, "memories")
    want = (cfg.n_mem, cfg.hidden_size)
    if x.dim() != 3 or tuple(x.shape[1:]) != want:
        raise ValueError(
            f"memories must have shape [N, n_mem={cfg.n_mem}, hidden_size={cfg.hidden_size}], "
            f"got {list(x.shape)}"
        )
    out = x.to("cpu").to(cfg.torch_dtype).reshape(x.shape[0], cfg.dim)
    if out.numel() and not torch.isfinite(out).all():
        hint = "" if torch.isfinite(x).all() else " (the input has NaN/inf)"
        raise ValueError(
            f"memories contain values that are not finite in {cfg.dtype}{hint}; "
            "use dtype=torch.bfloat16 or torch.float32 for large magnitudes"
        )
    if out.numel():
        _refuse_unscorable_rows(x.reshape(x.shape[0], cfg.dim), out, cfg)
    return out.contiguous()


#: Norms whose cosines the store computes exactly in float32 (`_search`): past the upper
#: bound a dot product overflows to inf (and the hit is dropped); below the lower one the
#: norm is clamped (as torch's normalize does) and the row scores near 0 against itself.
NORM_RANGE = (1e-12, 1e37)


def _refuse_unscorable_rows(given: torch.Tensor, stored: torch.Tensor, cfg: StoreConfig) -> None:
    """Refuse rows, as stored, whose cosine the store cannot compute exactly, naming the
    cause: all zeros (no direction: never found; an all-zero input, or values too small
    for the store's dtype), or a norm outside `NORM_RANGE`. One float64 norm pass."""
    norms = torch.linalg.vector_norm(stored.double(), dim=1)
    low, high = NORM_RANGE
    zero = norms == 0
    if zero.any():
        i = int(zero.nonzero()[0])
        if given[i].ne(0).any():
            raise ValueError(
                f"memories[{i}] becomes all zeros in {cfg.dtype} (its largest value is "
                f"{given[i].abs().max().item():.3g}): use dtype=torch.float32 for such small "
                "magnitudes"
            )
        raise ValueError(
            f"memories[{i}] is all zeros ({int(zero.sum())} such rows): a zero memory has no "
            "cosine with any query, so that node could never be retrieved"
        )
    bad = (norms < low) | (norms > high)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"memories[{i}] has norm {norms[i].item():.3g}, outside the range the store scores "
            f"exactly ({low:g} to {high:g}; {int(bad.sum())} such rows): such a node would be "
            "dropped from, or misplaced in, search results. Check the model's output; cosine "
            "ignores scale, so a rescaled row ranks the same"
        )


def queries(x: Any, cfg: StoreConfig) -> torch.Tensor:
    """[B, D], [D] or [B, n_mem, H] -> unit-normalised float32 [B, D] on CPU."""
    x = as_tensor(x, "query_vectors")
    if x.dim() == 3 and tuple(x.shape[1:]) == (cfg.n_mem, cfg.hidden_size):
        x = x.reshape(x.shape[0], cfg.dim)
    elif x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[1] != cfg.dim:
        raise ValueError(
            f"query_vectors must have shape [B, n_mem*hidden_size={cfg.dim}] "
            f"({cfg.n_mem}x{cfg.hidden_size}), got {list(x.shape)}"
        )
    x = x.to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("query_vectors contain NaN or inf")
    return F.normalize(x, dim=1, eps=1e-12).contiguous()


def k_value(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def texts(values: Any, n: int, *, required: bool = False) -> list[str]:
    if values is None:
        if required:
            raise ValueError("texts is required")
        return [""] * n
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError("texts must be a list of strings")
    if len(values) != n:
        raise ValueError(f"texts has {len(values)} entries but there are {n} memories")
    for i, t in enumerate(values):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return list(values)


def metadata(values: Any, n: int) -> list[dict[str, Any]]:
    """A list of JSON-serialisable dicts (None -> empty dicts), as JSON reads them back.

    The round trip through JSON makes what is indexed for filters the same as what is
    read back: a tuple becomes a list (so ``{"tags": "x"}`` finds ``("x", "y")``).
    """
    if values is None:
        return [{} for _ in range(n)]
    if isinstance(values, Mapping) or not isinstance(values, Sequence):
        raise TypeError("metadata must be a list of dicts (one per node) or None")
    if len(values) != n:
        raise ValueError(f"metadata has {len(values)} entries but there are {n} nodes")
    out = []
    for i, m in enumerate(values):
        m = {} if m is None else m
        if not isinstance(m, Mapping) or not all(isinstance(k, str) for k in m):
            raise TypeError(f"metadata[{i}] must be a dict with str keys")
        _require_str_keys(m, f"metadata[{i}]")
        try:
            out.append(json.loads(json.dumps(m, allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata[{i}] is not JSON-serialisable: {exc}") from None
    return out


def _require_str_keys(value: Any, where: str) -> None:
    """JSON would turn a nested dict's 1, 2.5, True or None key into a string silently,
    and merge ``{1: "a", "1": "b"}`` into one key: refuse non-str keys at any depth."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has the key {key!r} ({type(key).__name__}); metadata keys "
                    "must be str at every level (JSON would change it to a string)"
                )
            _require_str_keys(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for j, item in enumerate(value):
            _require_str_keys(item, f"{where}[{j}]")


def new_ids(values: Any, n: int) -> tuple[list[str], bool]:
    """Caller ids (checked) or fresh uuid4 ids; returns (ids, caller_supplied)."""
    if values is None:
        return [str(uuid.uuid4()) for _ in range(n)], False
    ids = node_ids(values)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but there are {n} nodes")
    if len(set(ids)) != n:
        raise ValueError("ids contains duplicates")
    return ids, True


def node_ids(values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError("ids must be a list of strings")
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise TypeError(f"ids[{i}] must be a non-empty str, got {v!r}")
    return list(values)


def model_shape(model: Any, cfg: StoreConfig) -> str | None:
    """Check ``model`` against the store; returns its identity.

    Raises:
        StoreMismatchError: n_mem, hidden size or identity differ.
    """
    for attr in ("n_mem", "hidden_size", "compress_documents"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a ClaraModel (missing attribute {attr!r})")
    identity = getattr(model, "model_identity", None)
    if (model.n_mem, model.hidden_size) != (cfg.n_mem, cfg.hidden_size):
        raise StoreMismatchError(
            f"store holds memories of n_mem={cfg.n_mem}, H={cfg.hidden_size} "
            f"(fingerprint {cfg.fingerprint}) but model {identity!r} has "
            f"n_mem={model.n_mem}, H={model.hidden_size}"
        )
    if cfg.model_identity is not None and identity is not None and identity != cfg.model_identity:
        raise StoreMismatchError(
            f"store was built by model {cfg.model_identity!r} (fingerprint {cfg.fingerprint}) "
            f"but got model {identity!r}; its memories live in another space. Use a new store "
            "or the original model"
        )
    return identity
