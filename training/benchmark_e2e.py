"""Benchmark (not CI): stage 3 (`e2e`) on a real base, recall@k and EM before and after.

Splits a QA file of ``../shared/data`` (default ``clara_qa_dev.jsonl``) by ``sha256(id)``
into held-out questions and training questions, runs ``training.finetune --stages e2e``
(query reasoner + generator through the differentiable top-k; no relevance labels are
used for training) and prints the held-out metrics before and after, also written to
``<output>/benchmark.json``.

    python -m training.benchmark_e2e --output ./bench-e2e                 # SmolLM2-135M, CPU: ~30 min
    python -m training.benchmark_e2e --output ./bench-e2e --init-from ./my-clara --max-steps 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from .checkpoint import CheckpointManager
from .evaluate import format_metrics, results_logger
from .finetune import main as finetune_main

__all__ = ["main"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _split(source: Path, out: Path, n_eval: int, n_train: int) -> tuple[Path, Path]:
    rows = [
        json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    rows.sort(key=lambda r: hashlib.sha256(str(r.get("id", r["question"])).encode()).hexdigest())
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "eval.jsonl", out / "train.jsonl"
    for path, part in zip(paths, (rows[:n_eval], rows[n_eval : n_eval + n_train])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.benchmark_e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True)
    p.add_argument("--data", default=str(SHARED_DATA / "clara_qa_dev.jsonl"))
    p.add_argument("--base", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--init-from", default=None, help="a CLaRa checkpoint to start stage 3 from")
    p.add_argument("--eval-examples", type=int, default=20)
    p.add_argument("--train-examples", type=int, default=400)
    p.add_argument("--max-steps", default="12")
    p.add_argument(
        "--learning-rate", default="1e-4", help="the reference's 5e-6 barely moves in a few steps"
    )
    p.add_argument("--train-batch-size", default="4")
    p.add_argument("--micro-train-batch-size", default="2")
    p.add_argument("--doc-max-length", default="128")
    p.add_argument("--compress-rate", default="32")
    p.add_argument("--generation-top-k", default="2")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.output)
    eval_path, train_path = _split(
        Path(args.data), out / "bench-data", args.eval_examples, args.train_examples
    )
    flags = [
        "--data",
        f"e2e={train_path}",
        "--eval-data",
        str(eval_path),
        "--stages",
        "e2e",
        "--output",
        str(out),
        "--max-steps",
        args.max_steps,
        "--learning-rate",
        args.learning_rate,
        "--train-batch-size",
        args.train_batch_size,
        "--micro-train-batch-size",
        args.micro_train_batch_size,
        "--generation-top-k",
        args.generation_top_k,
        "--eval-max-examples",
        str(args.eval_examples),
        "--eval-max-new-tokens",
        "16",
    ]
    if args.init_from:
        flags += ["--init-from", args.init_from]
    else:
        flags += ["--doc-max-length", args.doc_max_length, "--compress-rate", args.compress_rate]
    if args.base:
        flags += ["--base", args.base]
    if args.quiet:
        flags.append("--quiet")
    code = finetune_main(flags)
    if code:
        return code
    latest = CheckpointManager(out / "checkpoints", None).latest()
    metrics = CheckpointManager.read_state(latest)["metrics"]
    (out / "benchmark.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    log = results_logger()
    for m in metrics:
        log.info("%-6s %s", m["after"], format_metrics(m))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    raise SystemExit(main())
