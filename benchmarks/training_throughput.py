"""Training throughput on this machine: seconds per optimiser step and tokens/s of each
stage, for the tiny fixture base and SmolLM2-135M-Instruct.

    python -m benchmarks.training_throughput            # 4 steps per stage, both bases
    python -m benchmarks.training_throughput --quick    # 2 steps per stage

Each base runs `python -m training.finetune` once through all four stages (compress,
instruct, retrieval, e2e) on the shared QA / pretraining data with 2 examples per step
(micro batch 2), float32, and the step times of `training_log.jsonl` are summarised: the
median over steps after the first (which pays for warm-up). Stages 2-4 read 5 documents
per question (retrieval and e2e score all 9-10 candidates).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks._paths import RESULTS, ROOT

DATA = ROOT.parent / "shared" / "data"
TINY_BASE = ROOT.parent / "shared" / "fixtures" / "clara-official-tiny" / "tiny-llama-base"
BASES = {"tiny": str(TINY_BASE), "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
STAGES = ("compress", "instruct", "retrieval", "e2e")


def measure(base: str, steps: int, workdir: Path) -> dict[str, dict[str, float]]:
    qa = str(DATA / "squad_dev.jsonl")
    command = [sys.executable, "-m", "training.finetune", "--base", base,
               "--data", f"compress={DATA / 'clara_pretrain_example.jsonl'}",
               "--data", f"instruct={qa}", "--data", f"retrieval={qa}", "--data", f"e2e={qa}",
               "--stages", ",".join(STAGES), "--train-batch-size", "2", "--micro-train-batch-size", "2",
               "--max-steps", str(steps), "--eval-max-examples", "0", "--quiet", "--output", str(workdir)]
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    records = [json.loads(line) for line in (workdir / "training_log.jsonl").read_text().splitlines()]
    out = {}
    for stage in STAGES:
        rows = [r for r in records if r["stage"] == stage]
        timed = rows[1:] or rows  # the first step pays for warm-up
        out[stage] = {"s_per_step": statistics.median(r["seconds"] for r in timed),
                      "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
                      "steps": len(rows), "examples_per_step": 2}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 steps per stage")
    parser.add_argument("--bases", nargs="*", choices=tuple(BASES), default=list(BASES))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 2
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "bases": {}}
    for label in args.bases:
        with tempfile.TemporaryDirectory() as tmp:
            result["bases"][label] = measure(BASES[label], args.steps, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"{'base':14}{'stage':11}{'s/step':>9}{'tokens/s':>10}\n")
    for label, stages in result["bases"].items():
        for stage, r in stages.items():
            sys.stdout.write(f"{label:14}{stage:11}{r['s_per_step']:>9.2f}{r['tokens_per_s']:>10.0f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
