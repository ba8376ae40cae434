"""Putting a checkpoint's weights into a freshly built model, with the reference's rules.

The reference loader decides per `training_stage` which adapters of the file it uses
(spec §6.2): those rules decide which weights produce the output, so `adapter_policy=
"reference"` reproduces them, and `"all"` loads everything (its evaluation script's mode).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from .adapters import DECODER_ADAPTER, EMBEDDING_KEYS, ENCODER_ADAPTER, QUERY_ADAPTER
from .checkpoint import FIRST_LAST_PTH, NEW_ROWS_FILE, CheckpointCorruptError, CheckpointFiles

if TYPE_CHECKING:
    from .clara import ClaraModel

__all__ = ["apply_checkpoint", "default_device", "default_dtype"]

logger = logging.getLogger(__name__)

ADAPTER_POLICIES = ("reference", "all")


def default_device() -> torch.device:
    """`$CLARA_DEVICE` if set (e.g. "cpu" on a GPU machine), else CUDA, else MPS, else CPU."""
    if os.environ.get("CLARA_DEVICE"):
        return torch.device(os.environ["CLARA_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA cards that support it (as the reference), float32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _check_shape(target: torch.Tensor, source: torch.Tensor, what: str, start: int = 0) -> None:
    expected = (target.shape[0] - start, target.shape[1])
    if tuple(source.shape) != expected:
        raise CheckpointCorruptError(
            f"{what} has shape {tuple(source.shape)}, the model expects {expected}: the "
            "checkpoint was made for another base model, doc_max_length or compr_rate"
        )


def _copy_rows(target: torch.Tensor, source: torch.Tensor, what: str, start: int = 0) -> None:
    _check_shape(target, source, what, start)
    with torch.no_grad():
        target[start:].copy_(source.to(target.dtype))


def _embedding_targets(model: ClaraModel) -> dict[str, torch.Tensor]:
    """{"embed_tokens": input matrix, "lm_head": output matrix if untied}."""
    embed = model.decoder.get_input_embeddings().weight
    head_module = model.decoder.get_output_embeddings()
    targets = {"embed_tokens": embed}
    if head_module is not None and head_module.weight.data_ptr() != embed.data_ptr():
        targets["lm_head"] = head_module.weight
    return targets


def _record_changed_base_rows(
    model: ClaraModel, name: str, target: torch.Tensor, source: torch.Tensor
) -> None:
    """Remember base-vocabulary rows a released checkpoint changed, so that our native
    format (which stores only new-token rows) can store these few rows as a patch."""
    n = model.base_vocab_size
    changed = (
        (target[:n] != source[:n].to(target.device, target.dtype)).any(dim=1).nonzero().flatten()
    )
    if changed.numel():
        model.base_row_patches[name] = changed.cpu()


def _load_embeddings(model: ClaraModel, files: CheckpointFiles) -> None:
    targets = _embedding_targets(model)
    if files.released:
        full = files.full_embeddings
        keys = {"embed_tokens": "model.embed_tokens.weight", "lm_head": "lm_head.weight"}
        if keys["embed_tokens"] not in full:
            raise CheckpointCorruptError(f"{FIRST_LAST_PTH} lacks 'model.embed_tokens.weight'")
        for name, target in targets.items():
            if keys[name] in full:
                what = f"{FIRST_LAST_PTH}:{keys[name]}"
                source = full[keys[name]]
                _check_shape(target, source, what)
                _record_changed_base_rows(model, name, target, source)
                _copy_rows(target, source, what)
        return
    start = model.base_vocab_size
    for name, target in targets.items():
        if name not in files.new_rows:
            continue
        _copy_rows(target, files.new_rows[name], f"{NEW_ROWS_FILE}:{name}", start)
        if f"{name}.patch_ids" in files.new_rows:
            ids = files.new_rows[f"{name}.patch_ids"].long()
            with torch.no_grad():
                target[ids] = (
                    files.new_rows[f"{name}.patch_rows"].to(target.dtype).to(target.device)
                )
            model.base_row_patches[name] = ids


def _kept_adapters(stage: str, stored: list[str], policy: str) -> tuple[list[str], list[str]]:
    """(adapters to load from the file, fresh adapters created before them)."""
    if policy == "all":
        return stored, []
    skip = {
        "stage1": {QUERY_ADAPTER},
        "stage1_2": {QUERY_ADAPTER, DECODER_ADAPTER},
        "stage2_reasoning": {DECODER_ADAPTER},
    }.get(stage, set())
    fresh = [DECODER_ADAPTER] if stage in ("stage1_2", "stage2_reasoning") else []
    return [name for name in stored if name not in skip], fresh


def apply_checkpoint(model: ClaraModel, files: CheckpointFiles, adapter_policy: str) -> None:
    """Restore embedding rows and adapters of `files` into `model` (built from its config)."""
    if adapter_policy not in ADAPTER_POLICIES:
        raise ValueError(
            f"adapter_policy must be one of {ADAPTER_POLICIES}, got {adapter_policy!r}"
        )
    config = model.config  # the file's config with the caller's overrides
    if (config.model_extra or {}).get("pure_inference"):
        adapter_policy = "all"
    _load_embeddings(model, files)
    stored = list(files.adapters)
    if not files.released:
        keep, fresh = stored, []
    else:
        keep, fresh = _kept_adapters(config.training_stage, stored, adapter_policy)
    for name in fresh:
        model.adapters.add(name)
    skipped = [n for n in stored if n not in keep]
    if skipped:
        logger.warning(
            "training_stage %r: the reference loader ignores %s in this checkpoint (%s); "
            "pass adapter_policy='all' to use them",
            config.training_stage,
            skipped,
            "a fresh generator is used instead" if DECODER_ADAPTER in fresh else "not used",
        )
    for name in keep:
        state = files.adapters[name]
        try:
            model.adapters.add(name, state)
        except ValueError as exc:
            raise CheckpointCorruptError(f"adapters file, entry {name!r}: {exc}") from exc
        # Embedding copies inside an adapter dict are written too, last one wins (spec §6.2).
        for key in (k for k in state if k in EMBEDDING_KEYS):
            target = (
                model.decoder.get_input_embeddings().weight
                if key.startswith("model.")
                else model.decoder.get_output_embeddings().weight
            )
            _copy_rows(target, state[key], f"adapters file, {name}:{key}")
    if config.training_stage == "stage2" and QUERY_ADAPTER not in model.adapters:
        if ENCODER_ADAPTER in model.adapters:
            model.adapters.copy(ENCODER_ADAPTER, QUERY_ADAPTER)
        else:
            model.adapters.add(QUERY_ADAPTER)
    extra = {"clara_base_rounding": "bfloat16"} if files.released else {}
    model.config = config.model_copy(update=extra) if extra else config
