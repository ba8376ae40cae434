"""The CLaRa model, framework-free (torch + transformers + peft only)."""

from .adapters import MissingAdapterError
from .checkpoint import CheckpointCorruptError
from .clara import ClaraModel
from .topk import differentiable_topk

__all__ = ["CheckpointCorruptError", "ClaraModel", "MissingAdapterError", "differentiable_topk"]
