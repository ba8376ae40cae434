"""Typed configuration of a :class:`~clara_integrations.store.MemoryStore`.

The config is saved (as JSON) inside every manifest, so a store directory is
self-describing. Structural fields (shapes, dtype, index kind) are fixed when the store is
created; the *runtime* fields listed in :data:`RUNTIME_FIELDS` only steer search and may
be overridden at :meth:`MemoryStore.load`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["NAMED_INDEXES", "RUNTIME_FIELDS", "StoreConfig", "canonical_dtype"]

StorageDtype = Literal["float16", "bfloat16", "float32"]

#: Index kinds with a name; any other string is taken as a FAISS factory string.
NAMED_INDEXES = ("flat", "hnsw", "ivfpq")

#: Fields that only steer search / resources and may differ between sessions.
RUNTIME_FIELDS = frozenset(
    {
        "hnsw_ef_search",
        "ivf_nprobe",
        "rescore_factor",
        "min_candidates",
        "exact_filter_rows",
        "scan_block_bytes",
        "segment_bytes",
        "use_gpu",
        "max_unindexed_rows",
    }
)

_DTYPE_ALIASES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
# bfloat16 has no numpy dtype: its raw bits are stored as uint16.
_NUMPY_DTYPES = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}


def canonical_dtype(dtype: object) -> str:
    """Map ``torch.float16`` / ``"fp16"`` / ``"bfloat16"`` ... to a canonical name.

    Raises:
        ValueError: for anything other than float16, bfloat16 or float32.
    """
    if isinstance(dtype, torch.dtype):
        for name, td in _TORCH_DTYPES.items():
            if td == dtype:
                return name
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[dtype.lower().removeprefix("torch.")]
    raise ValueError(
        f"dtype={dtype!r} is not supported; use torch.float16 (default), "
        "torch.bfloat16 or torch.float32"
    )


class StoreConfig(BaseModel):
    """Everything that defines a store, validated on construction.

    Example:
        >>> cfg = StoreConfig(n_mem=8, hidden_size=576, index="hnsw")
        >>> cfg.dim, cfg.dtype
        (4608, 'float16')
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    n_mem: int = Field(gt=0)
    """Memory tokens per document."""
    hidden_size: int = Field(gt=0)
    """Hidden size H of the base language model."""
    dtype: StorageDtype = "float16"
    """On-disk dtype of memory rows (bfloat16 is stored as raw uint16 bits)."""
    index: str = "flat"
    """"flat" (exact, default), "hnsw", "ivfpq", or a FAISS factory string."""
    model_identity: str | None = None
    """Identity of the compressor that produced the memory; None until first bound."""
    reduce_dim: int | None = Field(default=128, ge=3)
    """ANN indexes are built over a PCA projection to this many dims (None: full dim)."""
    hnsw_m: int = Field(default=32, gt=1)
    """HNSW graph degree."""
    hnsw_ef_construction: int = Field(default=80, gt=0)
    """HNSW build-time beam width."""
    hnsw_ef_search: int = Field(default=128, gt=0)
    """HNSW search beam width (raised to the candidate pool size when smaller)."""
    ivf_nlist: int | None = Field(default=None, gt=0)
    """IVF lists; None picks min(sqrt(N), train rows / 39)."""
    ivf_nprobe: int = Field(default=128, gt=0)
    """IVF lists visited per query."""
    pq_m: int = Field(default=64, gt=0)
    """PQ sub-quantizers (must divide the indexed dimension)."""
    pq_nbits: int = Field(default=8, ge=1, le=16)
    """Bits per PQ sub-quantizer code (2**nbits centroids each)."""
    rescore_factor: int = Field(default=20, gt=0)
    """ANN candidate pool is rescore_factor * k (at least min_candidates), re-scored exactly."""
    min_candidates: int = Field(default=100, gt=0)
    """Smallest ANN candidate pool."""
    train_size: int = Field(default=65536, gt=0)
    """Rows sampled to train the PCA / IVF / PQ."""
    min_index_rows: int = Field(default=20000, gt=0)
    """Below this many rows no ANN index is built: search is exact."""
    max_unindexed_rows: int = Field(default=50000, ge=0)
    """Rows added since the index was built are searched exactly; persist() folds them
    into the index once there are more than this (the index file is then rewritten)."""
    exact_filter_rows: int = Field(default=50000, gt=0)
    """Filters allowing at most this many rows are answered by exact scoring of them."""
    segment_bytes: int = Field(default=256 << 20, gt=0)
    """Unpersisted rows are spilled from RAM into a new segment file beyond this size."""
    scan_block_bytes: int = Field(default=64 << 20, gt=0)
    """Float32 working-buffer size of one exact-scan block (per search call)."""
    use_gpu: bool = False
    """Allow faiss-gpu for IVF / factory indexes when faiss-gpu and CUDA are present."""

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: object) -> str:
        return canonical_dtype(value)

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("index must be 'flat', 'hnsw', 'ivfpq' or a FAISS factory string")
        return value.lower() if value.lower() in NAMED_INDEXES else value

    @model_validator(mode="after")
    def _check_pq(self) -> StoreConfig:
        if self.index == "ivfpq" and self.index_dim % self.pq_m:
            raise ValueError(
                f"pq_m={self.pq_m} must divide the indexed dimension {self.index_dim} "
                "(reduce_dim, or n_mem*hidden_size when reduce_dim is None)"
            )
        return self

    @property
    def dim(self) -> int:
        """Width of a flattened memory / query vector: n_mem * hidden_size."""
        return self.n_mem * self.hidden_size

    @property
    def index_dim(self) -> int:
        """Width of the vectors the ANN index holds (after the optional PCA)."""
        return min(self.reduce_dim, self.dim) if self.reduce_dim else self.dim

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype memories are returned in."""
        return _TORCH_DTYPES[self.dtype]

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of a stored row element (uint16 bits for bfloat16)."""
        return _NUMPY_DTYPES[self.dtype]

    @property
    def fingerprint(self) -> str:
        """Model identity + n_mem + H + dtype, e.g. ``"my-model:n_mem=8:H=576:float16"``."""
        identity = self.model_identity or "unbound"
        return f"{identity}:n_mem={self.n_mem}:H={self.hidden_size}:{self.dtype}"
