"""Checkpoint files: our native format (safetensors) and the released format (.pth).

Released format (reference `save_pretrained`): `config.json`, `adapters.pth` (a dict
adapter name -> LoRA state dict, keys without adapter name) and
`decoder_first_last_layers.pth` (the resized `model.embed_tokens.weight`, plus
`lm_head.weight` for untied models). Both `.pth` files are read with
`torch.load(weights_only=True)`: never unpickle arbitrary objects.

Native format: `config.json` (the same keys plus `clara_format` and `clara_adapters`),
one `<adapter>.safetensors` per adapter, and `new_token_embeddings.safetensors` holding
only the rows of the tokens CLaRa added (the rest comes from the base model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._atomic import atomic_write
from ..config import NATIVE_FORMAT_VERSION, ClaraConfig
from ..errors import ClaraError

__all__ = [
    "ADAPTERS_PTH",
    "CONFIG_JSON",
    "FIRST_LAST_PTH",
    "NEW_ROWS_FILE",
    "CheckpointCorruptError",
    "CheckpointFiles",
    "read_checkpoint",
    "write_native",
    "write_released",
]

CONFIG_JSON = "config.json"
ADAPTERS_PTH = "adapters.pth"
FIRST_LAST_PTH = "decoder_first_last_layers.pth"
NEW_ROWS_FILE = "new_token_embeddings.safetensors"


class CheckpointCorruptError(ClaraError, ValueError):
    """A checkpoint file is missing, truncated or holds unexpected content."""


@dataclass
class CheckpointFiles:
    """What a checkpoint folder holds, format-independent."""

    config: ClaraConfig
    adapters: dict[str, dict[str, torch.Tensor]]  # stored order preserved
    # Released format: full matrices {"model.embed_tokens.weight", "lm_head.weight"}.
    full_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    # Native format: rows of the added tokens {"embed_tokens", "lm_head"}.
    new_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    released: bool = False


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointCorruptError(f"checkpoint file {path} is missing")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of forbidden objects, ...
        raise CheckpointCorruptError(f"cannot read checkpoint file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointCorruptError(f"{path} should hold a dict, found {type(data).__name__}")
    return data


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointCorruptError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointCorruptError(f"cannot read checkpoint file {path}: {exc}") from exc


def read_checkpoint(folder: Path) -> CheckpointFiles:
    """Read either format from `folder`; errors name the offending file."""
    config_path = folder / CONFIG_JSON
    if not config_path.is_file():
        raise CheckpointCorruptError(f"{folder} is not a CLaRa checkpoint: {CONFIG_JSON} missing")
    try:
        config = ClaraConfig.from_json_file(config_path)
    except ValueError as exc:
        raise CheckpointCorruptError(str(exc)) from exc
    extra = config.model_extra or {}
    if "clara_format" in extra:
        version = int(extra["clara_format"])
        if version > NATIVE_FORMAT_VERSION:
            raise CheckpointCorruptError(
                f"{config_path}: format {version} is newer than this library understands "
                f"({NATIVE_FORMAT_VERSION}); upgrade clara-integrations"
            )
        adapters = {
            name: _safetensors_load(folder / f"{name}.safetensors")
            for name in extra.get("clara_adapters", [])
        }
        new_rows = _safetensors_load(folder / NEW_ROWS_FILE)
        return CheckpointFiles(config, adapters, new_rows=new_rows)
    adapters = _torch_load(folder / ADAPTERS_PTH)
    for name, sd in adapters.items():
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointCorruptError(
                f"{folder / ADAPTERS_PTH}: entry {name!r} is not a state dict"
            )
    full = _torch_load(folder / FIRST_LAST_PTH)
    return CheckpointFiles(config, adapters, full_embeddings=full, released=True)


def write_native(
    folder: Path,
    config: ClaraConfig,
    adapters: Mapping[str, Mapping[str, torch.Tensor]],
    new_rows: Mapping[str, torch.Tensor],
) -> None:
    """Native format; each file is replaced atomically, config.json last."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, sd in adapters.items():
        atomic_write(folder / f"{name}.safetensors", lambda p, sd=sd: save_file(dict(sd), p))
    atomic_write(folder / NEW_ROWS_FILE, lambda p: save_file(dict(new_rows), p))
    config = config.model_copy()
    data = config.model_dump(mode="json")
    data["clara_format"] = NATIVE_FORMAT_VERSION
    data["clara_adapters"] = list(adapters)
    atomic_write(folder / CONFIG_JSON, lambda p: ClaraConfig.model_validate(data).to_json_file(p))


def write_released(
    folder: Path,
    config: ClaraConfig,
    adapters: Mapping[str, Mapping[str, torch.Tensor]],
    full_embeddings: Mapping[str, torch.Tensor],
) -> None:
    """Released format, loadable by the reference code (torch.save of tensor dicts)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / ADAPTERS_PTH, lambda p: torch.save({k: dict(v) for k, v in adapters.items()}, p)
    )
    atomic_write(folder / FIRST_LAST_PTH, lambda p: torch.save(dict(full_embeddings), p))
    data = config.model_dump(mode="json")
    data.pop("clara_format", None)
    data.pop("clara_adapters", None)
    data.pop("clara_base_rounding", None)
    atomic_write(folder / CONFIG_JSON, lambda p: ClaraConfig.model_validate(data).to_json_file(p))
