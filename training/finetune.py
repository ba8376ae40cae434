"""Fine-tune CLaRa on your own documents: compressor, query reasoner and generator.

One CPU or GPU:

    python -m training.finetune --docs ./my_docs --output ./my-clara
    python -m training.finetune --data train.jsonl --stages e2e --init-from ./my-clara --output ./my-clara-e2e
    python -m training.finetune --docs ./my_docs --output ./my-clara --dry-run   # the plan only

Many GPUs (DDP, FSDP or DeepSpeed ZeRO-2 as chosen in `accelerate config`), or torchrun:

    accelerate launch -m training.finetune --docs ./my_docs --output ./my-clara
    torchrun --nproc_per_node 8 -m training.finetune --docs ./my_docs --output ./my-clara

Stages (`--stages`, any ordered subset, default ``compress,instruct,e2e``):
``compress`` (stage 1: QA + paraphrase next-token loss + 0.1 MSE), ``instruct`` (stage 2:
compression instruction tuning), ``retrieval`` (optional: contrastive pretraining of the
query reasoner on ``pos_index``, or of the compressor with ``--retrieval-negatives queries``), ``e2e`` (stage 3: query reasoner + generator through the
differentiable top-k, next-token loss only). With ``--docs`` the training data is written
by a teacher into ``<output>/data/*.jsonl`` first; ``--data`` takes the reference's JSONL
formats (``--data FILE`` for every stage, or ``--data e2e=FILE``). The output folder is a
CLaRa checkpoint (`ClaraModel.from_pretrained("./my-clara")`) with ``report.md``, plots,
``training_log.jsonl`` and resumable ``checkpoints/`` (``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from . import pipeline
from .config import RETRIEVAL_NEGATIVES, FinetuneConfig
from .data import STAGES, DataError
from .stages import STAGE_DEFAULTS, enable_gradient_checkpointing

__all__ = ["build_parser", "main"]

logger = logging.getLogger("training.finetune")

PER_STAGE_HELP = (
    " (one value, or per stage: 'compress=V,e2e=W'; default: the reference's per stage)"
)


def _per_stage(kind):
    """argparse type: `V` for every stage or `stage=V,stage=V`."""

    def parse(text: str) -> dict[str, Any]:
        if "=" not in text:
            return {"*": kind(text)}
        out = {}
        for part in text.split(","):
            stage, _, value = part.partition("=")
            if stage not in STAGES:
                raise argparse.ArgumentTypeError(f"unknown stage {stage!r} in {text!r}")
            out[stage] = kind(value)
        return out

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m training.finetune` (see `--help`)."""
    p = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("data and model")
    src.add_argument(
        "--docs", help="folder (or file) of .txt/.md/.jsonl documents to synthesise data from"
    )
    src.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[STAGE=]FILE",
        help="reference-format JSONL; FILE for all stages or STAGE=FILE (repeatable)",
    )
    src.add_argument(
        "--eval-data",
        nargs="*",
        default=None,
        help="held-out QA JSONL for report.md (default with --docs: the synthesised eval.jsonl)",
    )
    src.add_argument("--output", required=True, help="output folder (checkpoint, report, data)")
    src.add_argument(
        "--base",
        default=None,
        help="base causal LM: local folder, hub id, or the embedded "
        "HuggingFaceTB/SmolLM2-135M-Instruct (default)",
    )
    src.add_argument(
        "--init-from", default=None, help="start from a CLaRa checkpoint (ours or released)"
    )
    src.add_argument(
        "--init-subfolder",
        default=None,
        help="subfolder of a hub --init-from, e.g. compression-16 for apple/CLaRa-7B-Instruct",
    )
    src.add_argument(
        "--adapter-policy",
        default="reference",
        choices=("reference", "all"),
        help="adapters taken from a released --init-from checkpoint",
    )
    src.add_argument(
        "--stages",
        default="compress,instruct,e2e",
        help=f"comma-separated, in order, from {', '.join(STAGES)}",
    )
    src.add_argument("--max-samples", type=int, default=None, help="first N examples per stage")
    src.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first malformed data or document "
        "line or empty file (default: skip them, with one warning per stage)",
    )
    src.add_argument(
        "--allow-network", action="store_true", help="allow hub downloads (base/teacher)"
    )
    m = p.add_argument_group("model shape (reference defaults)")
    m.add_argument("--doc-max-length", type=int, default=None, help="document tokens (256)")
    m.add_argument("--compress-rate", type=int, default=None, help="tokens per memory vector (32)")
    m.add_argument("--lora-r", type=int, default=16)
    m.add_argument(
        "--generation-top-k", type=int, default=5, help="documents read per question (stages 2-3)"
    )
    m.add_argument("--compress-top-k", type=int, default=1, help="documents per stage-1 example")
    m.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="weight dtype"
    )
    t = p.add_argument_group("optimisation")
    t.add_argument(
        "--learning-rate", type=_per_stage(float), default={}, help="peak LR" + PER_STAGE_HELP
    )
    t.add_argument(
        "--lr-scheduler",
        type=_per_stage(str),
        default={},
        help="cosine_with_min_lr, cosine, linear or constant" + PER_STAGE_HELP,
    )
    t.add_argument(
        "--train-batch-size", type=_per_stage(int), default={}, help="global batch" + PER_STAGE_HELP
    )
    t.add_argument(
        "--micro-train-batch-size",
        type=_per_stage(int),
        default={},
        help="examples per device and forward" + PER_STAGE_HELP,
    )
    t.add_argument("--epochs", type=_per_stage(float), default={"*": 1.0}, help="epochs (1)")
    t.add_argument(
        "--max-steps",
        type=_per_stage(int),
        default={},
        help="hard cap on optimiser steps per stage",
    )
    t.add_argument(
        "--max-minutes",
        type=_per_stage(float),
        default={},
        help="wall-time budget per stage, e.g. instruct=25,e2e=15: the rest of the stage's lr "
        "schedule is fitted to the steps that fit at the pace of its first steps, and the stage "
        "stops (with a warning) there or at the first optimiser step past the budget; the run "
        "goes on with the next stage",
    )
    t.add_argument(
        "--max-len", type=_per_stage(int), default={}, help="decoder tokens" + PER_STAGE_HELP
    )
    t.add_argument(
        "--mse-weight", type=_per_stage(float), default={}, help="MSE weight" + PER_STAGE_HELP
    )
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument(
        "--mixed-precision",
        default=None,
        choices=("no", "bf16", "fp16"),
        help="default: accelerate config, else bf16 on CUDA, no elsewhere; but unless given, the "
        "fast step autocasts to bf16 by itself on CPUs with native bf16 (AVX512-BF16, AMX)",
    )
    t.add_argument(
        "--legacy-step",
        action="store_true",
        help="the previous training step (full-vocabulary logits, candidates compressed per "
        "question, fp32 on CPU, micro batch 2), kept for comparisons",
    )
    t.add_argument(
        "--no-memory-cache",
        action="store_true",
        help="fast step: compress retrieval/e2e candidates per micro-batch instead of once per stage",
    )
    t.add_argument(
        "--memory-cache-dir",
        default=None,
        help="keep the memories a stage compresses with a frozen compressor in this folder, and "
        "load them in a later run that compresses exactly the same documents with the same "
        "compressor (skips e.g. the bank's compression when the query reasoner is trained again)",
    )
    t.add_argument(
        "--retrieval-negatives",
        default="candidates",
        choices=RETRIEVAL_NEGATIVES,
        help="retrieval stage: the query reasoner learns, a question's positives competing with "
        "its own candidates (reference) or with every document of the stage (bank; compressed "
        "once, fast step); or (queries) the compressor learns and the query reasoner is frozen: "
        "each positive document competes for its questions with every question of the stage "
        "(encoded once) and each question with the micro-batch's positive documents",
    )
    t.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=0,
        help="fast step without --micro-train-batch-size: the largest micro-batch with at most "
        "this many tokens with gradient (0: 4096 on CPU, 800 per GB on a GPU)",
    )
    t.add_argument(
        "--instruct-decoder",
        default="fresh",
        choices=("fresh", "continue"),
        help="instruct starts from a fresh generator (reference) or continues the current one",
    )
    t.add_argument(
        "--instruct-compressor",
        default="train",
        choices=("train", "frozen"),
        help="instruct trains the compressor with the generator (reference) or keeps it frozen "
        "and trains the generator alone on cached memory (stores built with the model stay valid)",
    )
    t.add_argument(
        "--no-train-mem-tokens",
        action="store_true",
        help="freeze the <MEM> embedding rows in stage 1",
    )
    t.add_argument(
        "--encode-batch-size", type=int, default=64, help="documents per compressor forward"
    )
    r = p.add_argument_group("run control")
    r.add_argument(
        "--save-steps",
        type=int,
        default=0,
        help="checkpoint every N optimiser steps (0: stage ends)",
    )
    r.add_argument(
        "--resume", action="store_true", help="continue from <output>/checkpoints/LATEST"
    )
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    r.add_argument("--log-every", type=int, default=1, help="log line every N optimiser steps")
    r.add_argument(
        "--official-format",
        action="store_true",
        help="also write <output>/official (released format)",
    )
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--eval-max-examples", type=int, default=100, help="held-out questions (0: no evaluation)"
    )
    e.add_argument("--eval-max-new-tokens", type=int, default=32)
    s = p.add_argument_group("synthesis (--docs)")
    s.add_argument(
        "--teacher",
        default="self",
        choices=("self", "offline", "hf", "openai"),
        help="self: the base model reading the text answers cloze questions (default); "
        "offline: cloze answers only, no model; hf / openai: an LLM writes questions too",
    )
    s.add_argument(
        "--teacher-model",
        default=None,
        help="HF model (hf, self: default the base) or model name (openai)",
    )
    s.add_argument(
        "--teacher-url",
        default=None,
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1",
    )
    s.add_argument("--teacher-api-key-env", default="OPENAI_API_KEY")
    s.add_argument("--qa-per-chunk", type=int, default=5)
    s.add_argument("--questions-per-chunk", type=int, default=2)
    s.add_argument("--num-candidates", type=int, default=10, help="candidates per e2e question")
    s.add_argument(
        "--crops-per-chunk",
        type=int,
        default=1,
        help="label-free retrieval rows per chunk: a cropped span as the query (0: none)",
    )
    s.add_argument("--eval-fraction", type=float, default=0.1)
    return p


def _parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise SystemExit(f"--stages: unknown {bad or text!r}; choose from {', '.join(STAGES)}")
    if len(set(stages)) != len(stages):
        raise SystemExit("--stages: a stage is listed twice")
    return stages


def _setup_logging(quiet: bool, is_main: bool) -> None:
    level = logging.INFO if is_main and not quiet else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    import transformers  # noqa: PLC0415

    transformers.utils.logging.set_verbosity_error()
    if quiet:
        transformers.utils.logging.disable_progress_bar()


def _stage_files(args: FinetuneConfig, stages: list[str], data_dir: Path) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for item in args.data:
        stage, sep, path = item.partition("=")
        if sep and stage in STAGES:
            files.setdefault(stage, []).extend(path.split(","))
        else:
            for s in stages:
                files.setdefault(s, []).extend(item.split(","))
    for s in stages:
        if s not in files:
            if not args.docs:
                raise SystemExit(
                    f"no data for stage {s!r}: pass --docs DIR, --data FILE or --data {s}=FILE"
                )
            files[s] = [str(data_dir / f"{s}.jsonl")]
    return files


def _synthesize(
    args: FinetuneConfig, accelerator: Accelerator, config: Any, tokenizer: Any, data_dir: Path
) -> Path | None:
    """`--docs` -> `data_dir/*.jsonl` on the main process; None (logged) if the documents
    give no data. Every process learns of a failure, so none waits for the others forever."""
    failed = False
    if args.docs and accelerator.is_main_process:
        try:
            data_dir = pipeline.synthesize_if_needed(
                args, config, tokenizer, data_dir, dry_run=args.dry_run
            )
        except (DataError, FileNotFoundError, ValueError) as exc:  # DataError: --strict
            logger.error("%s", exc)
            failed = True
    flag = torch.tensor(float(failed), device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, "sum")  # also the barrier the others waited at
    return None if flag.item() > 0 else data_dir


def _plan_stages(
    args: FinetuneConfig,
    stages: list[str],
    files: dict[str, list[str]],
    config: Any,
    tokenizer: Any,
    special: Any,
    world_size: int,
) -> tuple[list[Any], dict[str, list[Any]]]:
    """Read every stage's data and plan its steps: ([StagePlan], {stage: [Example]})."""
    plans, examples = [], {}
    for index, stage in enumerate(stages):
        k = args.compress_top_k if stage == "compress" else args.generation_top_k
        max_len = args.max_len.get(stage, STAGE_DEFAULTS[stage].max_len)
        collator = pipeline.make_collator(
            tokenizer,
            special,
            stage,
            k,
            config,
            max_len,
            args.seed,
            frozen_compressor=pipeline.compressor_frozen(stage, args),
            trains_compressor=pipeline.retrieval_trains_compressor(stage, args),
        )
        kept, issues, tokens = pipeline.prepare_stage_data(stage, files[stage], k, collator, args)
        pipeline.report_issues(stage, files[stage], issues)
        examples[stage] = kept
        plans.append(pipeline.plan_for(stage, index, kept, k, tokens, args, world_size, collator))
    return plans, examples


def _warn_if_engine_ignored(accelerator: Accelerator) -> None:
    """Accelerate (1.15) runs a CPU-only multi-process launch as DDP (MULTI_CPU) even when
    `accelerate config` asked for FSDP or DeepSpeed: say so, since every process then
    holds the whole model, which is what FSDP/ZeRO were chosen to avoid."""
    from accelerate.utils import parse_flag_from_env  # noqa: PLC0415

    asked = [
        name
        for name, key in (
            ("FSDP", "ACCELERATE_USE_FSDP"),
            ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"),
        )
        if parse_flag_from_env(key)
    ]
    running = accelerator.distributed_type.value
    if asked and accelerator.is_main_process and asked[0].upper() not in running.upper():
        logger.warning(
            "%s was asked for (accelerate config) but Accelerate runs these %d process(es) as "
            "%s on %s: each process holds the whole model and optimiser state. FSDP and "
            "DeepSpeed need GPUs here.",
            asked[0],
            accelerator.num_processes,
            running,
            accelerator.device.type,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad data, 3 non-finite loss,
    gradient or weights)."""
    try:
        args = FinetuneConfig.from_namespace(build_parser().parse_args(argv))
    except ValueError as exc:  # flags that contradict each other
        raise SystemExit(f"python -m training.finetune: {exc}") from None
    stages = _parse_stages(args.stages)
    if args.instruct_compressor != "train" and "instruct" not in stages:
        logger.warning("--instruct-compressor applies to the instruct stage, which is not run")
    if args.retrieval_negatives != "candidates" and "retrieval" not in stages:
        logger.warning("--retrieval-negatives applies to the retrieval stage, which is not run")
    if args.allow_network:
        os.environ["CLARA_ALLOW_NETWORK"] = "1"
    mixed = args.mixed_precision or (
        None
        if os.environ.get("ACCELERATE_MIXED_PRECISION")
        else ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no")
    )
    # Without CUDA, Accelerate distributes over processes (gloo) only when told `cpu=True`;
    # otherwise every torchrun worker would train alone.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=mixed, cpu=multi_cpu)
    _setup_logging(args.quiet, accelerator.is_main_process)
    _warn_if_engine_ignored(accelerator)
    set_seed(args.seed)
    output = Path(args.output)
    data_dir = output / "data"

    # 1. Shape of the model and its tokenizer (no weights yet: enough to prepare data).
    config = pipeline.model_config(args, stages)
    tokenizer, special = pipeline.load_tokenizer(config)

    # 2. Synthesise training data from raw documents (main process; others wait).
    data_dir = _synthesize(args, accelerator, config, tokenizer, data_dir)
    if data_dir is None:
        return 2
    files = _stage_files(args, stages, data_dir)
    if args.docs and args.eval_data is None:
        args.eval_data = [str(data_dir / "eval.jsonl")]

    # 3. Data and plan of every stage.
    try:
        plans, examples = _plan_stages(
            args, stages, files, config, tokenizer, special, accelerator.num_processes
        )
    except (DataError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    if args.dry_run:
        pipeline.log_plan(plans, args, config)
        return 0
    empty = [p.stage for p in plans if p.steps == 0]
    if empty:
        raise SystemExit(
            f"stage(s) {empty} have no full global batch of examples: add data, or lower "
            "--train-batch-size / --micro-train-batch-size"
        )

    # 4. Model: from the last checkpoint (--resume), a CLaRa checkpoint, or a fresh base.
    trainer = pipeline.Trainer(args, accelerator, config, plans, examples, tokenizer, special)
    trainer.load_model()
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(trainer.model)

    # 5. Train every stage, evaluating on held-out questions before and after each.
    try:
        trainer.run()
    except pipeline.NonFiniteError as exc:
        logger.error("%s", exc)
        return 3

    # 6. The final checkpoint, report.md and plots.
    trainer.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
