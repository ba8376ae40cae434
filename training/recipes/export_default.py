"""Copy a trained checkpoint into the package as the shipped default: the model files only
(config, adapters, new-token rows, base-row patches), floating tensors cast to float16.

    python -m training.recipes.export_default build/default-run clara_integrations/assets/default
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clara_integrations.modeling.checkpoint import CONFIG_JSON

#: Whole-package budget for the shipped weights (the default-checkpoint issue).
MAX_BYTES = 40 * 1024 * 1024


def export(run_dir: Path, dest: Path) -> int:
    """Write `dest` from the native checkpoint in `run_dir`; returns the bytes written."""
    tensors_files = sorted(run_dir.glob("*.safetensors"))
    if not (run_dir / CONFIG_JSON).is_file() or not tensors_files:
        raise FileNotFoundError(
            f"{run_dir} holds no native CLaRa checkpoint (config.json + *.safetensors)"
        )
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = json.loads((run_dir / CONFIG_JSON).read_text())
    (staging / CONFIG_JSON).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in tensors_files:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors = {
            k: t.to(torch.float16) if t.is_floating_point() else t for k, t in tensors.items()
        }
        save_file(tensors, str(staging / path.name), metadata=metadata)
    for path in staging.iterdir():
        path.chmod(0o644)  # package data: readable by every user of an installed copy
    size = sum(p.stat().st_size for p in staging.iterdir())
    if size > MAX_BYTES:
        raise ValueError(f"exported checkpoint is {size / 2**20:.1f} MiB, over the 40 MiB budget")
    # Never a moment without a checkpoint at `dest`: the old one moves aside first and is
    # removed only once the new one is in place.
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    size = export(args.run_dir, args.dest)
    print(f"wrote {args.dest} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
