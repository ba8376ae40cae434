"""Atomic training checkpoints: model, optimiser, scheduler, RNG and data position.

A checkpoint is a folder ``checkpoints/<NN>-<stage>-step<NNNNNN>/``:

* ``model/`` — a CLaRa checkpoint in the native format (`ClaraModel.from_pretrained`);
* ``optimizer.safetensors`` + ``optimizer.json`` — AdamW state tensors and param groups;
* ``scheduler.json`` — the LR scheduler's state;
* ``rng-<rank>.json`` + ``rng-<rank>.safetensors`` — Python, NumPy and torch RNG states;
* ``trainer_state.json`` — stage, optimiser step, loss history, metrics, plan fingerprint.

Everything is written into a hidden ``.tmp-…`` folder and renamed into place by the main
process; ``LATEST`` (itself replaced atomically) names the newest complete checkpoint, so a
`kill -9` at any moment leaves the previous checkpoint usable. No pickle is involved.

Sharded optimisers (FSDP, DeepSpeed ZeRO) keep one shard per rank; for those the
optimiser state is saved with `Accelerator.save_state` inside the same folder instead.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from clara_integrations import ClaraModel

__all__ = ["CheckpointManager", "NonFiniteError"]

logger = logging.getLogger(__name__)

LATEST = "LATEST"
_SHARDED = (DistributedType.DEEPSPEED, DistributedType.FSDP)


class NonFiniteError(RuntimeError):
    """A loss, gradient or weight became NaN or infinite; the run stopped without saving it.
    The message names where, and which checkpoint (if any) `LATEST` still points to."""


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [
        tensors[k]
        for k in sorted(
            (k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1])
        )
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


class CheckpointManager:
    """Save and find training checkpoints under `root` (``<output>/checkpoints``).

    Example (inside a training loop, so not a doctest)::

        ckpts = CheckpointManager(Path("out/checkpoints"), accelerator)
        path = ckpts.save("00-compress-step000010", model, optimizer, scheduler, state)
    """

    def __init__(self, root: Path, accelerator: Accelerator, keep: int = 2) -> None:
        self.root = Path(root)
        self.accelerator = accelerator
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text(encoding="utf-8").strip()
        return path if (path / "trainer_state.json").is_file() else None

    def save(
        self, name: str, model: ClaraModel, optimizer: Any, scheduler: Any, state: dict[str, Any]
    ) -> Path:
        """Write checkpoint `name` atomically; every process must call this. Without an
        optimizer (the end of a stage) only the model, RNG and trainer state are saved."""
        acc = self.accelerator
        self._check_finite_weights(name, model)
        tmp = self.root / f".tmp-{name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if acc.distributed_type in _SHARDED and optimizer is not None:
            acc.save_state(str(tmp / "accelerate"))
        elif acc.is_main_process and optimizer is not None:
            tensors, meta = _optimizer_to_files(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            _write_json(tmp / "optimizer.json", meta)
            _write_json(tmp / "scheduler.json", scheduler.state_dict())
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, str(tmp / f"rng-{acc.process_index}.safetensors"))
        _write_json(tmp / f"rng-{acc.process_index}.json", rng_meta)
        if acc.is_main_process:
            model.save_pretrained(tmp / "model")
            _write_json(tmp / "trainer_state.json", state)
        acc.wait_for_everyone()
        final = self.root / name
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = self.root / f".{LATEST}.tmp"
            pointer.write_text(name, encoding="utf-8")
            os.replace(pointer, self.root / LATEST)
            self._prune(keep_name=name)
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def describe_latest(self) -> str:
        """What a stopped run leaves behind, for error messages."""
        latest = self.latest()
        if latest is None:
            return "no checkpoint was saved yet (--save-steps N saves every N optimiser steps)"
        return f"{latest} (named by {self.root / LATEST}) is kept unchanged"

    def _check_finite_weights(self, name: str, model: ClaraModel) -> None:
        # The last line of defence: whatever went wrong upstream, LATEST must only ever name
        # finite weights. Only trainable tensors can have changed since the model was loaded.
        bad = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad and not torch.isfinite(p).all()
        ]
        flag = torch.tensor(float(bool(bad)), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "sum")  # every rank stops, none waits forever
        if flag.item() > 0:
            raise NonFiniteError(
                f"refusing to save checkpoint {name}: trainable weights hold NaN/inf "
                f"({', '.join(bad[:3]) or 'on another process'}); {self.describe_latest()}"
            )

    def _prune(self, keep_name: str) -> None:
        done = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in [p for p in done if p.name != keep_name][: -(self.keep - 1) or None]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        """The `trainer_state.json` of checkpoint `path`."""
        return json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))

    def restore(self, path: Path, optimizer: Any, scheduler: Any) -> None:
        """Load optimiser, scheduler and this process's RNG state from `path`."""
        acc = self.accelerator
        if acc.distributed_type in _SHARDED:
            acc.load_state(str(path / "accelerate"))
        else:
            meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
            optimizer.load_state_dict(
                _optimizer_from_files(load_file(str(path / "optimizer.safetensors")), meta)
            )
            scheduler.load_state_dict(
                json.loads((path / "scheduler.json").read_text(encoding="utf-8"))
            )
        rank_file = path / f"rng-{acc.process_index}.safetensors"
        if not rank_file.is_file():  # resumed on more processes than were saved
            rank_file = path / "rng-0.safetensors"
        meta = json.loads(rank_file.with_suffix(".json").read_text(encoding="utf-8"))
        _set_rng_state(load_file(str(rank_file)), meta)
