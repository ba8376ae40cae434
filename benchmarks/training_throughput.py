"""Training throughput on this machine: the fast step against the legacy one, per stage,
for the tiny fixture base and SmolLM2-135M-Instruct, in one process and interleaved.

    python -m benchmarks.training_throughput                  # 2 rounds x 2 steps, batch 8
    python -m benchmarks.training_throughput --quick          # 1 round x 1 step, batch 4
    python -m benchmarks.training_throughput --bases smollm2-135m --rounds 2 --steps 1 --batch 8

Every stage (compress, instruct, retrieval, e2e) trains `--steps` optimiser steps of the
same global batch with `training.loop.train_stage`, once with `--legacy-step` (micro batch
2, float32, candidates compressed per question, full-vocabulary logits) and once with the
fast step (automatic micro-batch, bf16 autocast where the CPU has native bf16, memory
cache, ...), alternating which goes first, `--rounds` times. On a shared machine absolute
numbers move with the load; the ratios, measured side by side, are what to read.

Per stage and step it reports examples/s and tokens/s (tokens the examples represent:
documents, candidates, questions and decoder rows, the same count for both steps), both
from the wall time of the whole stage call (cache filling and set-up included) in its
least disturbed round (every round's time is kept in the JSON), and the
share of the machine's fwd+bwd ceiling: tokens with gradient per second divided by the
tokens/s of one plain LoRA (r 16, all linear layers) forward + backward + AdamW step of the
base at the same shape (micro-batch x tokens with gradient per example), in the fast
step's precision. Data: the shared QA / pretraining files (retrieval and e2e score all 10
candidates of a SQuAD question, instruct reads 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._paths import RESULTS, ROOT

DATA = ROOT.parent / "shared" / "data"
TINY_BASE = ROOT.parent / "shared" / "fixtures" / "clara-official-tiny" / "tiny-llama-base"
BASES = {"tiny": str(TINY_BASE), "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
STAGES = ("compress", "instruct", "retrieval", "e2e")
PATHS = ("legacy", "fast")


def _args(base: str, batch: int, steps: int, out: Path, legacy: bool) -> Any:
    from training.config import FinetuneConfig  # noqa: PLC0415 - keep `--help` light
    from training.finetune import build_parser  # noqa: PLC0415

    qa = str(DATA / "squad_dev.jsonl")
    argv = [
        "--base",
        base,
        "--data",
        f"compress={DATA / 'clara_pretrain_example.jsonl'}",
        "--data",
        f"instruct={qa}",
        "--data",
        f"retrieval={qa}",
        "--data",
        f"e2e={qa}",
        "--train-batch-size",
        str(batch),
        "--max-steps",
        str(steps),
        "--eval-max-examples",
        "0",
        "--quiet",
        "--output",
        str(out),
    ] + (["--legacy-step"] if legacy else [])
    if base == BASES["tiny"]:
        argv += ["--doc-max-length", "64", "--compress-rate", "16", "--lora-r", "4"]
    return FinetuneConfig.from_namespace(build_parser().parse_args(argv))


def _prepare(base: str, batch: int, steps: int, out: Path):
    """Config, tokenizer, and per stage: examples, collator and the two plans."""
    from training import pipeline  # noqa: PLC0415
    from training.stages import STAGE_DEFAULTS  # noqa: PLC0415

    args = {path: _args(base, batch, steps, out, path == "legacy") for path in PATHS}
    config = pipeline.model_config(args["fast"], list(STAGES))
    tokenizer, special = pipeline.load_tokenizer(config)
    stages = {}
    for index, stage in enumerate(STAGES):
        k = 1 if stage == "compress" else args["fast"].generation_top_k
        max_len = args["fast"].max_len.get(stage, STAGE_DEFAULTS[stage].max_len)
        collator = pipeline.make_collator(tokenizer, special, stage, k, config, max_len, 42)
        kept, _, tokens = pipeline.prepare_stage_data(
            stage,
            [
                str(
                    DATA
                    / ("clara_pretrain_example.jsonl" if stage == "compress" else "squad_dev.jsonl")
                )
            ],
            k,
            collator,
            args["fast"],
        )
        plans = {
            path: pipeline.plan_for(stage, index, kept, k, tokens, args[path], 1, collator)
            for path in PATHS
        }
        stages[stage] = {"examples": kept, "collator": collator, "plans": plans}
    return config, stages


def _ceiling(model, rows: int, length: int, dtype: torch.dtype | None, repeats: int = 2) -> float:
    """Tokens/s of a plain LoRA fwd + bwd + AdamW step of the base at (rows, length)."""
    from clara_integrations.modeling.adapters import ENCODER_ADAPTER  # noqa: PLC0415

    decoder = model.decoder
    for p in model.parameters():
        p.requires_grad_(False)
    model.adapters.set_trainable([ENCODER_ADAPTER])
    params = model.adapters.parameters(ENCODER_ADAPTER)
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    model.train()
    ids = torch.randint(
        0, model.base_vocab_size, (rows, length), generator=torch.Generator().manual_seed(0)
    )
    times = []
    for _ in range(repeats + 1):  # the first pays for warm-up
        started = time.perf_counter()
        with (
            model.adapters.using(ENCODER_ADAPTER),
            torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            loss = decoder(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    model.eval()
    return rows * length / min(times[1:])


def _time_stage(model, stage: dict, path: str, acc, autocast, out: Path) -> dict[str, float]:
    from training.checkpoint import CheckpointManager  # noqa: PLC0415
    from training.loop import StageContext, train_stage  # noqa: PLC0415

    plan = stage["plans"][path]
    ctx = StageContext(
        acc,
        CheckpointManager(out / "checkpoints", acc),
        quiet=True,
        autocast_dtype=autocast if path == "fast" else None,
    )
    started = time.perf_counter()
    train_stage(model, plan, stage["examples"], stage["collator"], ctx)
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "steps": len(ctx.history),
        "examples": plan.train_batch_size * len(ctx.history),
        "tokens": sum(r["tokens"] for r in ctx.history),
        "step_seconds": sum(r["seconds"] for r in ctx.history),
    }


def measure(
    base: str,
    batch: int,
    steps: int,
    rounds: int,
    workdir: Path,
    stage_names: tuple[str, ...] = STAGES,
) -> dict:
    from accelerate import Accelerator  # noqa: PLC0415

    from clara_integrations import ClaraModel  # noqa: PLC0415
    from clara_integrations.modeling.adapters import ENCODER_ADAPTER  # noqa: PLC0415
    from training.fastpath import native_bf16  # noqa: PLC0415

    config, stages = _prepare(base, batch, steps, workdir)
    # The compressor exists from the start (stage 1 would create the same fresh adapter),
    # so that the ceilings can be timed first: they also warm both precisions up.
    model = ClaraModel.from_base(
        config.decoder_model_name,
        config,
        adapters=[ENCODER_ADAPTER],
        dtype=torch.float32,
        device="cpu",
    )
    acc = Accelerator(mixed_precision="no", cpu=True)
    autocast = torch.bfloat16 if native_bf16("cpu") else None
    _ceiling(model, 2, 64, None, repeats=1)  # warm-up of the float32 kernels
    ceilings = {}
    for stage in stage_names:
        collator, examples = stages[stage]["collator"], stages[stage]["examples"]
        grad_tokens = statistics.mean(collator.grad_tokens(ex) for ex in examples[:64])
        shape = (stages[stage]["plans"]["fast"].micro_batch_size, max(8, round(grad_tokens)))
        ceilings[stage] = (grad_tokens, shape, _ceiling(model, *shape, autocast))
    runs: dict[str, dict[str, list[dict]]] = {s: {p: [] for p in PATHS} for s in stage_names}
    for r in range(rounds):
        for stage in stage_names:
            for path in PATHS if r % 2 == 0 else PATHS[::-1]:
                runs[stage][path].append(
                    _time_stage(model, stages[stage], path, acc, autocast, workdir)
                )
                sys.stderr.write(
                    f"  {Path(base).name} round {r + 1} {stage:9} {path:6} "
                    f"{runs[stage][path][-1]['wall']:.1f} s\n"
                )
    result = {}
    for stage in stage_names:
        grad_tokens, shape, ceiling = ceilings[stage]
        row: dict = {
            "grad_tokens_per_example": grad_tokens,
            "ceiling_tokens_per_s": ceiling,
            "ceiling_shape": list(shape),
        }
        for path in PATHS:
            done = runs[stage][path]
            best = min(done, key=lambda d: d["wall"])  # the least disturbed round
            wall, n_ex, tokens = best["wall"], best["examples"], best["tokens"]
            plan = stages[stage]["plans"][path]
            row[path] = {
                "examples_per_s": n_ex / wall,
                "tokens_per_s": tokens / wall,
                "s_per_step": wall / best["steps"],
                "micro_batch_size": plan.micro_batch_size,
                "grad_accum": plan.grad_accum,
                "ceiling_share": n_ex / wall * grad_tokens / ceiling,
                "wall_s": [round(d["wall"], 2) for d in done],
            }
        row["speedup"] = row["fast"]["examples_per_s"] / row["legacy"]["examples_per_s"]
        result[stage] = row
    return {
        "train_batch_size": batch,
        "steps": steps,
        "rounds": rounds,
        "fast_precision": "bf16" if autocast else "fp32",
        "stages": result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per stage call")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved legacy/fast rounds")
    parser.add_argument(
        "--batch", type=int, default=8, help="global batch (examples per step), both steps"
    )
    parser.add_argument("--quick", action="store_true", help="1 round x 1 step, batch 4")
    parser.add_argument("--bases", nargs="*", choices=tuple(BASES), default=list(BASES))
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--tiny-steps",
        type=int,
        default=None,
        help="steps per stage call for the tiny base (default 4 x --steps: its steps are short)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.batch = 1, 1, 4
    import transformers  # noqa: PLC0415

    transformers.utils.logging.set_verbosity_error()
    result = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bases": {},
        "command": "python -m benchmarks.training_throughput " + " ".join(argv or sys.argv[1:]),
    }
    for label in args.bases:
        with tempfile.TemporaryDirectory() as tmp:
            steps = (args.tiny_steps or 4 * args.steps) if label == "tiny" else args.steps
            result["bases"][label] = measure(
                BASES[label], args.batch, steps, args.rounds, Path(tmp), tuple(args.stages)
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(
        f"{'base':14}{'stage':11}{'legacy ex/s':>12}{'fast ex/s':>11}{'speedup':>9}"
        f"{'legacy tok/s':>13}{'fast tok/s':>12}{'ceiling':>9}\n"
    )
    for label, b in result["bases"].items():
        for stage, r in b["stages"].items():
            sys.stdout.write(
                f"{label:14}{stage:11}{r['legacy']['examples_per_s']:>12.3f}"
                f"{r['fast']['examples_per_s']:>11.3f}{r['speedup']:>8.1f}x"
                f"{r['legacy']['tokens_per_s']:>13.0f}{r['fast']['tokens_per_s']:>12.0f}"
                f"{r['fast']['ceiling_share']:>8.0%}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
