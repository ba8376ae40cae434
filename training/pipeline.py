"""The steps `training.finetune` runs, one function each: configure, tokenise, synthesise,
plan, load the model, train every stage with evaluations and checkpoints, write the output.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from clara_integrations import ClaraConfig, ClaraModel
from clara_integrations.modeling.adapters import ENCODER_ADAPTER
from clara_integrations.modeling.hub import (
    DEFAULT_BASE_MODEL,
    resolve_base_model,
    resolve_checkpoint,
)
from clara_integrations.modeling.loading import default_device
from clara_integrations.modeling.tokens import SpecialTokens, prepare_tokenizer

from . import estimate
from .checkpoint import CheckpointManager, NonFiniteError
from .collate import Collator
from .config import FinetuneConfig
from .data import REFERENCE_STAGE, DataError, Example, load_examples, summarize_issues, write_jsonl
from .evaluate import evaluate_model, format_metrics, results_logger
from .fastpath import (
    auto_micro_batch,
    fast_autocast_dtype,
    mean_example_tokens,
    micro_batch_token_budget,
)
from .loop import NonFiniteLossError, StageContext, StagePlan, plan_stage, train_stage
from .report import write_report
from .stages import STAGE_DEFAULTS, ensure_adapters, equalize_candidates, fit_example
from .synthesize import SynthesisConfig, synthesize
from .teachers import make_teacher

__all__ = [
    "NonFiniteError",
    "NonFiniteLossError",
    "Trainer",
    "load_tokenizer",
    "model_config",
    "plan_for",
    "prepare_stage_data",
    "synthesize_if_needed",
]

logger = logging.getLogger(__name__)

DEFAULT_DOC_MAX_LENGTH = 256
DEFAULT_COMPRESS_RATE = 32


def _base_name(name: str | None) -> str:
    name = name or DEFAULT_BASE_MODEL
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def model_config(args: FinetuneConfig, stages: list[str]) -> ClaraConfig:
    """The CLaRa config of the run: from the checkpoint being continued, or fresh with the
    reference training CLI's settings.

    Raises:
        SystemExit: a shape flag contradicts the checkpoint (its weights would not fit).
    """
    latest = (
        CheckpointManager(Path(args.output) / "checkpoints", None).latest() if args.resume else None
    )
    if latest is not None or args.init_from:
        folder = (
            latest / "model"
            if latest is not None
            else resolve_checkpoint(args.init_from, args.init_subfolder)
        )
        config = ClaraConfig.from_json_file(folder / "config.json")
        for flag, key in (("doc_max_length", "doc_max_length"), ("compress_rate", "compr_rate")):
            given = getattr(args, flag)
            if given is not None and given != getattr(config, key):
                raise SystemExit(
                    f"--{flag.replace('_', '-')} {given} does not match the checkpoint's "
                    f"{key} {getattr(config, key)}; leave it out"
                )
        if args.base:
            config = config.model_copy(update={"decoder_model_name": _base_name(args.base)})
        return config
    return ClaraConfig.for_training(
        _base_name(args.base),
        doc_max_length=args.doc_max_length or DEFAULT_DOC_MAX_LENGTH,
        compr_rate=args.compress_rate or DEFAULT_COMPRESS_RATE,
        lora_r=args.lora_r,
        generation_top_k=args.generation_top_k,
        training_stage=REFERENCE_STAGE[stages[0]],
    )


def load_tokenizer(config: ClaraConfig) -> tuple[PreTrainedTokenizerBase, SpecialTokens]:
    """The tokenizer CLaRa builds for `config` (same ids), without loading weights."""
    path = resolve_base_model(config.decoder_model_name)
    # As ClaraModel does: never run or prompt about the folder's own code (`auto_map`).
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False)
    return tokenizer, prepare_tokenizer(tokenizer, config.n_mem, config.different_mem_tokens)


def _teacher_model(args: FinetuneConfig, config: ClaraConfig) -> str | None:
    """`--teacher-model`; for `--teacher self` by default the run's base model."""
    if args.teacher == "self" and not args.teacher_model:
        return config.decoder_model_name
    return args.teacher_model


def _synthesis_config(args: FinetuneConfig, config: ClaraConfig) -> SynthesisConfig:
    teacher = (
        args.teacher
        if args.teacher == "offline"
        else f"{args.teacher}:{_teacher_model(args, config)}"
    )
    return SynthesisConfig(
        doc_max_length=config.doc_max_length,
        qa_per_chunk=args.qa_per_chunk,
        questions_per_chunk=args.questions_per_chunk,
        instruct_k=args.generation_top_k,
        num_candidates=args.num_candidates,
        crops_per_chunk=args.crops_per_chunk,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        teacher=teacher,
    )


def synthesize_if_needed(
    args: FinetuneConfig,
    config: ClaraConfig,
    tokenizer: PreTrainedTokenizerBase,
    data_dir: Path,
    dry_run: bool,
) -> Path:
    """Write `data_dir/*.jsonl` from `--docs` unless it already holds the same synthesis
    (a resumed or repeated run reuses it, so an LLM teacher is not asked twice).

    Returns:
        The folder holding the data: `data_dir`, or for a dry run with an LLM teacher a
        temporary folder with an offline-teacher estimate (the LLM is not called).
    """
    synth = _synthesis_config(args, config)
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in asdict(synth)} == asdict(synth) and saved.get(
            "documents"
        ) == str(args.docs):
            logger.info("reusing synthesised data in %s", data_dir)
            return data_dir
    if dry_run and args.teacher != "offline":
        logger.info(
            "dry run: estimating the data with the offline teacher (%s is not called)", args.teacher
        )
        data_dir, teacher = Path(tempfile.mkdtemp(prefix="clara-dry-run-")), make_teacher("offline")
    else:
        teacher = make_teacher(
            args.teacher,
            _teacher_model(args, config),
            args.teacher_url,
            args.teacher_api_key_env,
            show_progress=not args.quiet,
        )
    rows = synthesize(
        args.docs,
        data_dir,
        tokenizer,
        teacher,
        synth,
        show_progress=not args.quiet,
        strict=args.strict,
    )
    if dry_run and args.teacher == "self":
        n = max(args.qa_per_chunk, args.questions_per_chunk + 1)
        questions = sum(len(teacher.qa_pairs(c["text"], n)) for c in rows["chunks"])
        device = default_device().type
        minutes = estimate.teacher_minutes(questions, config.decoder_model_name, device)
        results_logger().info(
            "self teacher: %d questions to answer%s",
            questions,
            f", ~{minutes:.0f} min" if minutes is not None else " (no rate measured here)",
        )
    return data_dir


def make_collator(
    tokenizer: PreTrainedTokenizerBase,
    special: SpecialTokens,
    stage: str,
    k: int,
    config: ClaraConfig,
    max_len: int,
    seed: int,
    frozen_compressor: bool = False,
    trains_compressor: bool = False,
) -> Collator:
    """The batch builder of one stage (`frozen_compressor`: instruct reads cached memory;
    `trains_compressor`: retrieval compresses its positives with gradient)."""
    return Collator(
        tokenizer,
        special,
        stage,
        k,
        max_len,
        config.doc_max_length,
        seed,
        frozen_compressor,
        trains_compressor,
    )


def retrieval_trains_compressor(stage: str, args: FinetuneConfig) -> bool:
    """Whether `stage` is a retrieval stage that trains the compressor
    (`--retrieval-negatives queries`)."""
    return stage == "retrieval" and args.retrieval_negatives == "queries"


def compressor_frozen(stage: str, args: FinetuneConfig) -> bool:
    """Whether `stage` reads its documents through a frozen compressor by request
    (`--instruct-compressor frozen`; e2e always does, and so does retrieval unless it
    trains the compressor: `retrieval_trains_compressor`)."""
    return stage == "instruct" and args.instruct_compressor == "frozen"


def prepare_stage_data(
    stage: str, paths: list[str], k: int, collator: Collator, args: FinetuneConfig
) -> tuple[list[Example], list[str], int]:
    """Read, shape and length-check one stage's examples.

    Returns:
        (examples kept, problems as ``file:line: why``, tokens of one epoch).

    Raises:
        DataError: no usable example (the message names the stage, files and first
            reasons), or with ``--strict`` the first malformed line.
    """
    loaded = load_examples(paths, strict=args.strict, max_examples=args.max_samples)
    kept, issues, tokens = [], list(loaded.issues), 0
    for ex in loaded.examples:
        try:
            ex = fit_example(ex, stage, k)
            tokens += collator.check(ex)
            kept.append(ex)
        except DataError as exc:
            if args.strict:
                raise
            issues.append(str(exc))
    if not kept:  # nothing to train on: say why here, not with a tokenizer IndexError later
        raise DataError(
            f"stage {stage!r}: no usable example in {', '.join(map(str, paths))}; "
            f"{summarize_issues(issues) if issues else 'no line was read'}\n"
            f"fix those lines, or pass another file with --data {stage}=FILE"
        )
    if stage in ("e2e", "retrieval"):
        kept = equalize_candidates(kept)
        tokens += collator.encoder_tokens([ex.question for ex in kept])
    tokens += collator.encoder_tokens([d for ex in kept for d in ex.docs])
    return kept, issues, tokens


def report_issues(stage: str, paths: list[str], issues: list[str]) -> None:
    """Log the skipped examples of a stage as one warning: counts per reason, then the
    first ten with ``file:line``."""
    if not issues:
        return
    logger.warning(
        "stage %s, %s (--strict stops at the first): %s",
        stage,
        ", ".join(map(str, paths)),
        summarize_issues(issues, first=10),
    )


def _micro_batch(
    stage: str,
    examples: list[Example],
    args: FinetuneConfig,
    world_size: int,
    collator: Collator | None,
) -> int:
    """`--micro-train-batch-size` if given; else for the fast step the largest micro-batch
    within `--micro-batch-tokens` (tokens with gradient), else the reference's 2."""
    given = args.micro_train_batch_size.get(stage)
    if given is not None:
        return given
    default = STAGE_DEFAULTS[stage].micro_train_batch_size
    if args.legacy_step or collator is None or not examples:
        return default
    batch = min(
        args.train_batch_size.get(stage, STAGE_DEFAULTS[stage].train_batch_size), len(examples)
    )
    per_process = max(batch // world_size, 1)
    budget = args.micro_batch_tokens or micro_batch_token_budget(default_device())
    tokens = mean_example_tokens(examples, collator.grad_tokens)
    return auto_micro_batch(per_process, tokens, budget)


def plan_for(
    stage: str,
    index: int,
    examples: list[Example],
    k: int,
    tokens: int,
    args: FinetuneConfig,
    world_size: int,
    collator: Collator | None = None,
) -> StagePlan:
    """The stage's plan from the run's settings and its data (`collator` sizes the fast
    step's micro-batches)."""
    d = STAGE_DEFAULTS[stage]
    plan = plan_stage(
        stage,
        index,
        len(examples),
        world_size=world_size,
        k=k,
        learning_rate=args.learning_rate.get(stage, d.learning_rate),
        lr_scheduler=args.lr_scheduler.get(stage, d.lr_scheduler),
        micro_batch_size=_micro_batch(stage, examples, args, world_size, collator),
        train_batch_size=args.train_batch_size.get(stage, d.train_batch_size),
        epochs=args.epochs.get(stage, 1.0),
        max_steps=args.max_steps.get(stage),
        max_len=args.max_len.get(stage, d.max_len),
        mse_weight=args.mse_weight.get(stage, d.mse_weight),
        seed=args.seed,
        fast_step=not args.legacy_step,
        negatives=args.retrieval_negatives if stage == "retrieval" else "candidates",
        frozen_compressor=compressor_frozen(stage, args),
    )
    plan.tokens_per_epoch = tokens
    return plan


def log_plan(plans: list[StagePlan], args: FinetuneConfig, config: ClaraConfig) -> None:
    """The dry-run plan: one line per stage (logged on stdout)."""
    results = results_logger()
    lines = [
        f"base {config.decoder_model_name}; doc_max_length {config.doc_max_length}, "
        f"compr_rate {config.compr_rate} (n_mem {config.n_mem}), lora_r {config.lora_r}",
        f"{'stage':<10}{'examples':>9}{'k':>3}{'micro':>6}{'global':>7}{'accum':>6}{'epochs':>7}"
        f"{'steps':>7}{'warmup':>7}{'lr':>9}  {'schedule':<19}{'tokens':>12}{'est. min':>10}",
    ]
    device = default_device().type
    for p in plans:
        used = p.steps * p.train_batch_size
        tokens = int(p.tokens_per_epoch * used / max(p.n_examples, 1))
        minutes = estimate.stage_minutes(
            p.stage, used, config.decoder_model_name, device, p.negatives
        )
        cap = args.max_minutes.get(p.stage)
        if minutes is not None and cap is not None:
            minutes = min(minutes, cap)
        lines.append(
            f"{p.stage:<10}{p.n_examples:>9}{p.k:>3}{p.micro_batch_size:>6}{p.train_batch_size:>7}"
            f"{p.grad_accum:>6}{p.epochs:>7g}{p.steps:>7}{p.warmup_steps:>7}{p.learning_rate:>9.2g}"
            f"  {p.lr_scheduler:<19}{tokens:>12,}"
            + (f"{minutes:>10.1f}" if minutes is not None else f"{'-':>10}")
        )
    if estimate.measured(config.decoder_model_name, device):
        lines.append(
            "est. min: measured rates of SmolLM2-135M on 2 CPU threads "
            "(benchmarks/results/training_throughput.json); capped by --max-minutes"
        )
    else:
        lines.append(
            f"est. min: no rate measured for {config.decoder_model_name} on {device} "
            "(run python -m benchmarks.training_throughput)"
        )
    lines.append(f"output: {args.output}")
    for line in lines:
        results.info("%s", line)


class Trainer:
    """Runs the planned stages on a model, with evaluations, checkpoints and the report."""

    def __init__(
        self,
        args: FinetuneConfig,
        accelerator: Accelerator,
        config: ClaraConfig,
        plans: list[StagePlan],
        examples: dict[str, list[Example]],
        tokenizer: PreTrainedTokenizerBase,
        special: SpecialTokens,
    ) -> None:
        self.args, self.acc, self.config = args, accelerator, config
        self.plans, self.examples = plans, examples
        self.tokenizer, self.special = tokenizer, special
        self.output = Path(args.output)
        self.checkpoints = CheckpointManager(self.output / "checkpoints", accelerator)
        self.history: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.start_index, self.start_step, self.resume_from = 0, 0, None
        self.model: ClaraModel | None = None
        self.eval_examples: list[Example] = []

    def _dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.args.dtype == "bfloat16" else torch.float32

    def load_model(self) -> None:
        """Build the model: the last checkpoint (`--resume`), `--init-from`, or a fresh
        base; and read the held-out examples."""
        args, acc = self.args, self.acc
        latest = self.checkpoints.latest() if args.resume else None
        if args.resume and latest is None:
            logger.info(
                "--resume: no checkpoint in %s; starting from the beginning", self.checkpoints.root
            )
        if latest is not None:
            self._restore_state(latest)
            self.model = ClaraModel.from_pretrained(
                latest / "model",
                base_model=self.config.decoder_model_name,
                device=acc.device,
                dtype=self._dtype(),
            )
        elif args.init_from:
            self.model = ClaraModel.from_pretrained(
                args.init_from,
                subfolder=args.init_subfolder,
                base_model=self.config.decoder_model_name,
                device=acc.device,
                dtype=self._dtype(),
                adapter_policy=args.adapter_policy,
                training_stage=REFERENCE_STAGE[self.plans[0].stage],
            )
        else:
            self.model = ClaraModel.from_base(
                self.config.decoder_model_name,
                self.config,
                adapters=[],
                device=acc.device,
                dtype=self._dtype(),
            )
        if args.eval_data and args.eval_max_examples > 0:
            loaded = load_examples(args.eval_data, max_examples=args.eval_max_examples)
            self.eval_examples = [
                ex for ex in loaded.examples if ex.data_type == "qa" and len(ex.questions) == 1
            ]

    def _restore_state(self, latest: Path) -> None:
        state = CheckpointManager.read_state(latest)

        def key(plan: dict[str, Any]) -> dict[str, Any]:  # token counts are informative only
            # Checkpoints from before the fast step ran the legacy step.
            return {
                "fast_step": False,
                "negatives": "candidates",  # and before --retrieval-negatives, candidates
                "frozen_compressor": False,  # and before --instruct-compressor, trained
                **{k: v for k, v in plan.items() if k != "tokens_per_epoch"},
            }

        saved = [key(p) for p in state.get("plans", [])]
        if saved != [key(p.fingerprint()) for p in self.plans]:
            raise SystemExit(
                f"--resume: the plan differs from checkpoint {latest} (different data or "
                "flags?); resume with the same arguments, or use a new --output"
            )
        self.history, self.metrics = state["history"], state["metrics"]
        if state["complete"]:
            self.start_index = state["stage_index"] + 1
        else:
            self.start_index, self.start_step, self.resume_from = (
                state["stage_index"],
                state["step"],
                latest,
            )
        logger.info("resuming from %s (stage %s, step %d)", latest, state["stage"], state["step"])

    def _state(self, plan: StagePlan, step: int, complete: bool = False) -> dict[str, Any]:
        return {
            "stage_index": plan.index,
            "stage": plan.stage,
            "step": step,
            "complete": complete,
            "history": self.history,
            "metrics": self.metrics,
            "plans": [p.fingerprint() for p in self.plans],
        }

    def evaluate(self, label: str) -> None:
        """Held-out metrics of the current model, recorded for the report (main process)."""
        if not self.eval_examples or ENCODER_ADAPTER not in self.model.adapters:
            return  # nothing to measure before a compressor exists
        if self.acc.is_main_process:
            metrics, _ = evaluate_model(
                self.model,
                self.eval_examples,
                k=self.args.generation_top_k,
                max_new_tokens=self.args.eval_max_new_tokens,
                show_progress=not self.args.quiet,
            )
            metrics["after"] = label
            self.metrics.append(metrics)
            logger.info("eval after %s: %s", label, format_metrics(metrics))
        self.acc.wait_for_everyone()

    def run(self) -> None:
        """Train the remaining stages; evaluate and checkpoint after each.

        Raises:
            NonFiniteError: a loss or gradient (from the stage loop) or a weight about to be
                saved is NaN/inf; nothing non-finite was saved.
        """
        args = self.args
        if self.start_index == 0 and self.start_step == 0:
            if self.plans[0].stage in ("retrieval", "e2e"):
                # Measure what the stage starts from: the query reasoner it would create.
                ensure_adapters(self.model, self.plans[0].stage)
            self.evaluate("start")
        for plan in self.plans[self.start_index :]:
            collator = make_collator(
                self.tokenizer,
                self.special,
                plan.stage,
                plan.k,
                self.config,
                plan.max_len,
                args.seed,
                frozen_compressor=plan.frozen_compressor,
                trains_compressor=plan.trains_compressor,
            )
            ctx = StageContext(
                self.acc,
                self.checkpoints,
                save_steps=args.save_steps,
                log_every=args.log_every,
                quiet=args.quiet,
                fresh_decoder=args.instruct_decoder == "fresh",
                train_mem_tokens=not args.no_train_mem_tokens,
                encode_batch_size=args.encode_batch_size,
                history=self.history,
                state_for_checkpoint=self._state,
                memory_cache=not args.no_memory_cache,
                memory_cache_dir=args.memory_cache_dir,
                autocast_dtype=fast_autocast_dtype(
                    self.acc.device,
                    args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION"),
                    self.acc.mixed_precision,
                    legacy=args.legacy_step,
                ),
                max_minutes=args.max_minutes.get(plan.stage),
            )
            logger.info("stage %s: %d examples, %d steps", plan.stage, plan.n_examples, plan.steps)
            done = train_stage(
                self.model,
                plan,
                self.examples[plan.stage],
                collator,
                ctx,
                start_step=self.start_step,
                resume_from=self.resume_from,
            )
            self.start_step, self.resume_from = 0, None
            self.evaluate(plan.stage)
            self.checkpoints.save(
                f"{plan.index:02d}-{plan.stage}-step{done:06d}",
                self.model,
                None,
                None,
                self._state(plan, done, complete=True),
            )

    def finish(self) -> None:
        """Write the final checkpoint into the output folder, the log and the report."""
        if not self.acc.is_main_process:
            return
        self.model.save_pretrained(self.output)
        if self.args.official_format:
            self.model.save_pretrained(self.output / "official", official_format=True)
        write_jsonl(self.output / "training_log.jsonl", self.history)
        (self.output / "training_args.json").write_text(
            json.dumps(self.args.to_json(), indent=1, default=str), encoding="utf-8"
        )
        write_report(self.output, self.plans, self.history, self.metrics, self.model.config)
        logger.info(
            "done: %s (load with ClaraModel.from_pretrained(%r))", self.output, str(self.output)
        )
