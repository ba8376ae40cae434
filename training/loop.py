"""The training loop of one stage, on Hugging Face Accelerate.

Accelerate does the device placement, mixed precision, data sharding, gradient
accumulation and gradient synchronisation (CPU, one GPU, DDP, FSDP or DeepSpeed from an
`accelerate config`); this module only decides what happens in which order:

* data order: one permutation per epoch from the seed; the stage's schedule is the first
  ``steps * train_batch_size`` positions, so a resumed run skips exactly the batches it
  has seen, and N processes see the same global batches as one;
* dropout: the RNG is re-seeded before every micro-batch from the micro-batch's first
  position in that schedule, so the random stream does not depend on the process count
  or on where a run was resumed;
* the step: the fast one (`plan.fast_step`, see fastpath.py: memory cache, length-sorted
  global batches, losses scaled by the global batch, bf16 where native) or the legacy one;
* optimiser AdamW (betas 0.9/0.95, no weight decay), clipping at 1.0, warm-up of
  ``ceil(0.03 * steps)`` then cosine to 10% (`cosine_with_min_lr`), linear or constant;
* a non-finite loss (checked per micro-batch, before backward) or gradient norm (checked
  after clipping, before the optimiser step) stops the run before it touches the weights,
  so the checkpoint `LATEST` names is never poisoned; the error names that checkpoint.
  Stopping, not skipping the step, is the policy: a NaN gradient with a finite loss means
  an overflow the next steps would most likely repeat. With fp16 loss scaling the scaler
  skips such steps itself (that is how it finds its scale), so the check leaves them to it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import get_scheduler

from clara_integrations import ClaraModel

from .checkpoint import CheckpointManager, NonFiniteError
from .collate import Collator, ScheduledDataset
from .data import Example
from .fastpath import (
    MemoryRows,
    ScaledCollate,
    StepScales,
    bucket_order,
    cast_frozen_weights,
    fast_lora_dropout,
)
from .losses import objective_for_stage
from .memory_cache import MemoryCache
from .query_bank import QueryBank
from .schedule_fit import SqueezedSchedule, refit_scheduler, steps_that_fit
from .stages import prepare_model_for_stage

__all__ = [
    "NonFiniteError",
    "NonFiniteGradientError",
    "NonFiniteLossError",
    "StagePlan",
    "plan_stage",
    "schedule_order",
    "train_stage",
]

logger = logging.getLogger(__name__)

WARMUP_RATIO = 0.03
MIN_LR_RATE = 0.1  # cosine_with_min_lr ends at 10% of the peak (reference)
REFIT_AFTER_STEPS = 10  # `--max-minutes`: steps timed before the schedule is fitted to it
ADAM_BETAS = (0.9, 0.95)
MAX_GRAD_NORM = 1.0


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or infinite; the message names the stage, step and batch."""


class NonFiniteGradientError(NonFiniteError):
    """The gradient norm became NaN or infinite (with a finite loss); the message names the
    stage, step and the examples of the global batch."""


@dataclass
class StagePlan:
    """Everything that decides one stage's run; saved in checkpoints to check resumes."""

    stage: str
    index: int  # position of the stage in this run
    n_examples: int
    k: int
    learning_rate: float
    lr_scheduler: str
    micro_batch_size: int
    train_batch_size: int
    grad_accum: int
    epochs: float
    steps: int
    warmup_steps: int
    max_len: int
    mse_weight: float
    seed: int
    tokens_per_epoch: int = 0
    fast_step: bool = False  # the fast step (fastpath.py); False: `--legacy-step`
    negatives: str = "candidates"  # retrieval: `--retrieval-negatives` (RETRIEVAL_NEGATIVES)
    frozen_compressor: bool = False  # instruct: `--instruct-compressor frozen`

    @property
    def trains_compressor(self) -> bool:
        """A retrieval stage that trains the compressor (`--retrieval-negatives queries`)."""
        return self.stage == "retrieval" and self.negatives == "queries"

    def fingerprint(self) -> dict[str, Any]:
        """The plan as JSON-able dict (checkpoints compare it on resume)."""
        return asdict(self)


def plan_stage(
    stage: str,
    index: int,
    n_examples: int,
    *,
    world_size: int,
    k: int,
    learning_rate: float,
    lr_scheduler: str,
    micro_batch_size: int,
    train_batch_size: int,
    epochs: float,
    max_steps: int | None,
    max_len: int,
    mse_weight: float,
    seed: int,
    fast_step: bool = False,
    negatives: str = "candidates",
    frozen_compressor: bool = False,
) -> StagePlan:
    """Steps and accumulation of a stage (reference: ``ceil(epochs * (n // batch))``).

    A global batch larger than the data set is shrunk to fit (with a warning).

    Raises:
        ValueError: the global batch is not a multiple of micro batch x processes.
    """
    per_step = micro_batch_size * world_size
    if train_batch_size % per_step:
        raise ValueError(
            f"--train-batch-size {train_batch_size} must be a multiple of "
            f"--micro-train-batch-size {micro_batch_size} x {world_size} processes"
        )
    if 0 < n_examples < train_batch_size:
        shrunk = max(per_step, n_examples // per_step * per_step)
        logger.warning(
            "stage %s: %d examples < global batch %d; using a global batch of %d",
            stage,
            n_examples,
            train_batch_size,
            shrunk,
        )
        train_batch_size = shrunk
    steps = math.ceil(epochs * (n_examples // train_batch_size))
    if max_steps is not None:
        steps = min(steps, max_steps)
    return StagePlan(
        stage,
        index,
        n_examples,
        k,
        learning_rate,
        lr_scheduler,
        micro_batch_size,
        train_batch_size,
        train_batch_size // per_step,
        epochs,
        steps,
        math.ceil(steps * WARMUP_RATIO),
        max_len,
        mse_weight,
        seed,
        fast_step=fast_step,
        negatives=negatives,
        frozen_compressor=frozen_compressor,
    )


def schedule_order(n_examples: int, plan: StagePlan) -> list[int]:
    """Example indices in training order: one seeded permutation per epoch, each cut to a
    whole number of global batches (the reference drops the rest), ``steps`` batches."""
    need = plan.steps * plan.train_batch_size
    order: list[int] = []
    epoch = 0
    usable = n_examples // plan.train_batch_size * plan.train_batch_size
    while len(order) < need and usable:
        gen = torch.Generator().manual_seed(plan.seed * 1000 + plan.index * 100 + epoch)
        order.extend(torch.randperm(n_examples, generator=gen)[:usable].tolist())
        epoch += 1
    return order[:need]


def _param_groups(params: Sequence[torch.nn.Parameter]) -> list[dict[str, Any]]:
    return [{"params": list(params), "weight_decay": 0.0}]


def _scheduler(name: str, optimizer: torch.optim.Optimizer, plan: StagePlan):
    kwargs = {"min_lr_rate": MIN_LR_RATE} if name == "cosine_with_min_lr" else None
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=plan.warmup_steps,
        num_training_steps=max(plan.steps, 1),
        scheduler_specific_kwargs=kwargs,
    )
    # Wrapped so that `--max-minutes` can fit the rest of the schedule to the budget
    # (schedule_fit.py); unchanged rates until it does.
    scheduler.lr_lambdas = [SqueezedSchedule(fn, max(plan.steps, 1)) for fn in scheduler.lr_lambdas]
    return scheduler


def _seed_micro_batch(plan: StagePlan, first_position: int) -> None:
    torch.manual_seed((plan.seed * 1_000_003 + plan.index * 10_000_019 + first_position) % 2**63)


@dataclass
class StageContext:
    """What the loop needs besides the plan; `history` gets one dict per optimiser step."""

    accelerator: Accelerator
    checkpoints: CheckpointManager
    save_steps: int = 0  # 0: only at the end of the stage
    log_every: int = 1
    quiet: bool = False
    fresh_decoder: bool = True
    train_mem_tokens: bool = True
    encode_batch_size: int = 64
    history: list[dict[str, Any]] = field(default_factory=list)
    state_for_checkpoint: Callable[[StagePlan, int], dict[str, Any]] | None = None
    memory_cache: bool = True  # fast step: frozen candidates compressed once per stage
    memory_cache_dir: str | None = None  # `--memory-cache-dir`: keep those memories on disk
    autocast_dtype: torch.dtype | None = None  # fast step: own autocast (None: Accelerate's)
    max_minutes: float | None = None  # `--max-minutes`: stop the stage after this wall time


def _any_rank(acc: Accelerator, bad: bool) -> bool:
    flag = torch.tensor(float(bad), device=acc.device)
    if acc.num_processes > 1:
        flag = acc.reduce(flag, "sum")  # every rank stops together
    return flag.item() > 0


def _check_finite(
    ctx: StageContext,
    loss: torch.Tensor,
    plan: StagePlan,
    step: int,
    micro: int,
    batch: dict[str, Any],
    examples: Sequence[Example],
    order: Sequence[int],
) -> None:
    if _any_rank(ctx.accelerator, not torch.isfinite(loss).item()):
        where = [examples[order[p]].origin for p in batch["positions"]]
        raise NonFiniteLossError(
            f"stage {plan.stage!r}: non-finite loss ({loss.item()}) at optimiser step {step + 1}, "
            f"micro-batch {micro} (schedule positions {batch['positions']}, examples {where}); "
            f"stopped before updating the weights; {ctx.checkpoints.describe_latest()}"
        )


def _check_finite_grad(
    ctx: StageContext,
    norm: torch.Tensor | None,
    params: Sequence[torch.nn.Parameter],
    plan: StagePlan,
    step: int,
    examples: Sequence[Example],
    order: Sequence[int],
) -> None:
    acc = ctx.accelerator
    if acc.scaler is not None:
        return  # fp16: GradScaler skips inf/NaN steps and lowers its scale (by design)
    if norm is None:  # DeepSpeed clips inside its engine and returns no norm
        bad = any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params)
    else:
        bad = not torch.isfinite(norm).item()
    if not _any_rank(acc, bad):
        return
    first = step * plan.train_batch_size  # this step's global batch in the schedule
    positions = range(first, min(first + plan.train_batch_size, len(order)))
    where = [examples[order[p]].origin for p in positions]
    shown = ", ".join(where[:8]) + (f", ... ({len(where)} in all)" if len(where) > 8 else "")
    raise NonFiniteGradientError(
        f"stage {plan.stage!r}: non-finite gradient norm ({None if norm is None else norm.item()}) "
        f"with a finite loss at optimiser step {step + 1} (schedule positions {first}-"
        f"{positions[-1] if positions else first}, examples {shown}); stopped before the optimiser "
        f"step, so the weights were not updated; {ctx.checkpoints.describe_latest()}. Try a lower "
        "--learning-rate, --mixed-precision no, or check those examples"
    )


def train_stage(
    model: ClaraModel,
    plan: StagePlan,
    examples: Sequence[Example],
    collator: Collator,
    ctx: StageContext,
    start_step: int = 0,
    resume_from: Any = None,
) -> int:
    """Train `model` for one stage; appends one record per optimiser step to `ctx.history`.

    Args:
        start_step: optimiser steps already done (from `resume_from`, a checkpoint folder).

    Returns:
        The optimiser steps done: `plan.steps`, or fewer when `ctx.max_minutes` ran out.

    Raises:
        NonFiniteLossError: a micro-batch's loss is NaN or infinite.
        NonFiniteGradientError: a step's gradient norm is NaN or infinite.
    """
    acc = ctx.accelerator
    params, hook = prepare_model_for_stage(
        model,
        plan.stage,
        plan.k,
        fresh_decoder=ctx.fresh_decoder and start_step == 0,
        train_mem_tokens=ctx.train_mem_tokens,
        fast=plan.fast_step,
        frozen_compressor=plan.frozen_compressor,
        negatives=plan.negatives,
    )
    order, collate, cache = schedule_order(len(examples), plan), collator, None
    query_bank = None
    if plan.fast_step:
        order, collate, cache = _fast_schedule(model, plan, examples, order, collator, ctx)
    if plan.fast_step and plan.trains_compressor:
        query_bank = _query_bank(model, plan, examples, order, ctx)
    loader = torch.utils.data.DataLoader(
        ScheduledDataset(examples, order),
        batch_size=plan.micro_batch_size,
        shuffle=False,
        collate_fn=collate,
    )
    objective = objective_for_stage(
        model,
        plan.stage,
        plan.mse_weight,
        ctx.encode_batch_size,
        fast=plan.fast_step,
        cache=cache,
        negatives=plan.negatives,
        frozen_compressor=plan.frozen_compressor,
        query_bank=query_bank,
    )
    if plan.fast_step and ctx.autocast_dtype is not None:
        # Per forward, as Accelerate does: autocast caches its casts of trainable weights
        # until the outermost region exits, so one region over steps would keep stale ones.
        objective.forward = torch.autocast(acc.device.type, dtype=ctx.autocast_dtype)(
            objective.forward
        )
    optimizer = torch.optim.AdamW(
        _param_groups(params), lr=plan.learning_rate, betas=ADAM_BETAS, eps=1e-8, weight_decay=0.0
    )
    if isinstance(hook, MemoryRows):
        hook.attach(optimizer)
    scheduler = _scheduler(plan.lr_scheduler, optimizer, plan)
    acc.gradient_accumulation_steps = plan.grad_accum
    objective, optimizer, loader = acc.prepare(objective, optimizer, loader)
    if resume_from is not None and start_step > 0:
        ctx.checkpoints.restore(resume_from, optimizer, scheduler)
        loader = acc.skip_first_batches(loader, start_step * plan.grad_accum)
    try:
        with _fast_step_context(model, plan, ctx):
            return _run(
                model,
                plan,
                examples,
                order,
                objective,
                optimizer,
                scheduler,
                loader,
                params,
                ctx,
                start_step,
            )
    finally:
        if hook is not None:
            hook.remove()
        acc.free_memory()
        model.eval()


def _fast_schedule(
    model: ClaraModel,
    plan: StagePlan,
    examples: Sequence[Example],
    order: list[int],
    collator: Collator,
    ctx: StageContext,
):
    """The fast step's data side: (each global batch sorted by length, a collator adding
    the global-batch loss scales, the stage's memory cache or None)."""
    used = sorted(set(order))
    lengths = dict(zip(used, (collator.grad_tokens(examples[i]) for i in used)))
    order = bucket_order(order, plan.train_batch_size, lengths)
    labels = [collator.label_tokens(examples[i], pos) for pos, i in enumerate(order)]
    rows = plan.k if plan.stage in ("compress", "instruct") else len(examples[order[0]].docs)
    scales = StepScales.build(
        labels, plan.train_batch_size, rows, plan.grad_accum, ctx.accelerator.num_processes
    )
    cache = None
    frozen_docs = plan.stage in ("retrieval", "e2e") or plan.frozen_compressor
    if ctx.memory_cache and frozen_docs and not plan.trains_compressor:
        # Every candidate of the whole schedule (not only from a resumed step on): the same
        # set gives the same batches, so a resumed run gets bit-identical memory.
        cache = MemoryCache(model, ctx.encode_batch_size, ctx.memory_cache_dir)
        cache.expect([d for i in used for d in examples[i].docs])
    return order, ScaledCollate(collator, scales), cache


def _query_bank(
    model: ClaraModel,
    plan: StagePlan,
    examples: Sequence[Example],
    order: list[int],
    ctx: StageContext,
) -> QueryBank:
    """Every question of the whole schedule with its positive documents (as the memory
    cache, the whole schedule: a resumed run encodes the same set)."""
    if plan.micro_batch_size < 2:
        logger.warning(
            "stage retrieval (--retrieval-negatives queries): a micro-batch of %d example "
            "leaves the question -> documents term no negative (it is 0); give "
            "--micro-train-batch-size equal to --train-batch-size (e.g. 16)",
            plan.micro_batch_size,
        )
    if ctx.memory_cache_dir:
        logger.warning(
            "stage retrieval (--retrieval-negatives queries) compresses its documents with "
            "gradient: nothing is kept in --memory-cache-dir %s for this stage",
            ctx.memory_cache_dir,
        )
    bank = QueryBank(model, ctx.encode_batch_size)
    bank.expect(
        (examples[i].question, [examples[i].docs[p] for p in examples[i].pos_index])
        for i in sorted(set(order))
    )
    return bank


@contextlib.contextmanager
def _fast_step_context(model: ClaraModel, plan: StagePlan, ctx: StageContext) -> Iterator[None]:
    """Frozen weights kept in the autocast dtype and the fast LoRA dropout, for the fast
    step's stage; nothing for legacy."""
    if not plan.fast_step:
        yield
        return
    acc = ctx.accelerator
    dtype = ctx.autocast_dtype or {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(acc.mixed_precision)
    )
    sharded = acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    with contextlib.ExitStack() as stack:
        cast = stack.enter_context(cast_frozen_weights(model, None if sharded else dtype))
        swapped = stack.enter_context(fast_lora_dropout(model))
        logger.debug(
            "fast step: autocast %s, %d frozen weights cast, %d dropouts swapped",
            dtype,
            cast,
            swapped,
        )
        yield


def _run(
    model,
    plan,
    examples,
    order,
    objective,
    optimizer,
    scheduler,
    loader,
    params,
    ctx: StageContext,
    step: int,
) -> int:
    acc = ctx.accelerator
    model.train()
    window = {"loss": 0.0, "ntp": 0.0, "mse": 0.0, "tokens": 0, "micro": 0}
    started = stage_started = time.perf_counter()
    first_step, paced_from = step, None  # pace measured after this run's first step
    fit = scheduler.lr_lambdas[0].fit
    if fit is not None and step >= fit:  # resumed after it stopped at the steps that fit
        logger.info(
            "stage %s already ended at optimiser step %d, the steps of its %d that fit the "
            "--max-minutes budget of the run that saved it (refit kept in its checkpoint)",
            plan.stage,
            step,
            plan.steps,
        )
        return step
    bar = tqdm(
        total=plan.steps,
        initial=step,
        desc=f"{plan.stage}",
        unit="step",
        disable=ctx.quiet or not acc.is_local_main_process,
    )
    for micro, batch in enumerate(loader, start=step * plan.grad_accum):
        _seed_micro_batch(plan, batch["positions"][0])
        with acc.accumulate(objective):
            out = objective(batch)
            _check_finite(ctx, out["loss"], plan, step, micro, batch, examples, order)
            acc.backward(out["loss"])
            if acc.sync_gradients:
                norm = acc.clip_grad_norm_(params, MAX_GRAD_NORM)  # total norm before clipping
                _check_finite_grad(ctx, norm, params, plan, step, examples, order)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for key in ("loss", "ntp", "mse"):
            window[key] += float(out[key].detach())
        window["tokens"] += int(batch["n_tokens"])
        window["micro"] += 1
        if not acc.sync_gradients:
            continue
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()
        step += 1
        record = _step_record(acc, plan, step, window, lr, started)
        ctx.history.append(record)
        window = {"loss": 0.0, "ntp": 0.0, "mse": 0.0, "tokens": 0, "micro": 0}
        started = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if (
            not ctx.quiet
            and acc.is_main_process
            and (step % ctx.log_every == 0 or step == plan.steps)
        ):
            logger.info(
                "%s step %d/%d loss %.4f ntp %.4f mse %.4f lr %.3g tokens/s %.0f",
                plan.stage,
                step,
                plan.steps,
                record["loss"],
                record["ntp"],
                record["mse"],
                record["lr"],
                record["tokens_per_s"],
            )
        if step == first_step + 1:
            paced_from = time.perf_counter()  # the first step also filled the memory cache
        elif step == first_step + 1 + REFIT_AFTER_STEPS and paced_from is not None:
            _fit_schedule_to_budget(
                ctx, plan, step, scheduler, optimizer, paced_from, stage_started
            )
        fit = scheduler.lr_lambdas[0].fit
        if fit is not None and step >= fit and step < plan.steps:
            logger.warning(
                "stage %s stopped after optimiser step %d of %d: the steps that fit --max-minutes "
                "%s=%s (refit kept in the checkpoint state), with the learning-rate schedule "
                "completed in them",
                plan.stage,
                step,
                plan.steps,
                plan.stage,
                ctx.max_minutes,
            )
            break
        if ctx.save_steps and step % ctx.save_steps == 0 and step < plan.steps:
            save_checkpoint(ctx, model, plan, step, optimizer, scheduler)
        if step < plan.steps and _out_of_time(acc, ctx.max_minutes, stage_started):
            planned = plan.steps if fit is None else fit
            logger.warning(
                "stage %s stopped after optimiser step %d of %d: --max-minutes %s=%s reached; "
                "the learning-rate schedule was %s %d steps, so it ended at lr %.3g, "
                "not its final rate. For a schedule that completes in this budget on this "
                "machine, plan the steps that fit: --max-steps %s=%d",
                plan.stage,
                step,
                plan.steps,
                plan.stage,
                ctx.max_minutes,
                "planned for" if fit is None else "refit (steps got slower after it) to",
                planned,
                scheduler.get_last_lr()[0],
                plan.stage,
                step,
            )
            break
    bar.close()
    return step


def _fit_schedule_to_budget(
    ctx: StageContext,
    plan: StagePlan,
    step: int,
    scheduler: Any,
    optimizer: Any,
    paced_from: float,
    stage_started: float,
) -> None:
    """`--max-minutes`: when the planned steps will not fit at the measured pace, squeeze
    the rest of the learning-rate schedule into those that will (once per stage; a
    resumed run keeps the refit saved in its checkpoint)."""
    if ctx.max_minutes is None or scheduler.lr_lambdas[0].refit_at is not None:
        return
    now = time.perf_counter()
    pace = (now - paced_from) / REFIT_AFTER_STEPS
    left = 60 * ctx.max_minutes - (now - stage_started)
    fit = steps_that_fit(step, plan.steps, pace, left)
    acc = ctx.accelerator
    fit = int(acc.gather(torch.tensor([fit], device=acc.device)).min())  # every rank alike
    if fit >= plan.steps:
        return
    refit_scheduler(scheduler, optimizer, step, fit)
    logger.warning(
        "stage %s: at %.2f s/step only %d of its %d planned steps fit --max-minutes %s=%g; the "
        "rest of the learning-rate schedule now runs in steps %d-%d (lr %.3g now), and the "
        "stage stops there",
        plan.stage,
        pace,
        fit,
        plan.steps,
        plan.stage,
        ctx.max_minutes,
        step,
        fit,
        scheduler.get_last_lr()[0],
    )


def _out_of_time(acc: Accelerator, max_minutes: float | None, started: float) -> bool:
    """Whether the stage's wall-time budget is spent (every process decides alike)."""
    if max_minutes is None:
        return False
    return _any_rank(acc, time.perf_counter() - started >= 60 * max_minutes)


def save_checkpoint(
    ctx: StageContext, model: ClaraModel, plan: StagePlan, step: int, optimizer: Any, scheduler: Any
) -> None:
    """Atomic checkpoint after optimiser step `step` of `plan`'s stage."""
    state = ctx.state_for_checkpoint(plan, step) if ctx.state_for_checkpoint else {}
    name = f"{plan.index:02d}-{plan.stage}-step{step:06d}"
    ctx.checkpoints.save(name, model, optimizer, scheduler, state)


def _step_record(
    acc: Accelerator,
    plan: StagePlan,
    step: int,
    window: dict[str, float],
    lr: float,
    started: float,
) -> dict[str, Any]:
    values = (
        torch.tensor(
            [window["loss"], window["ntp"], window["mse"]], dtype=torch.float64, device=acc.device
        )
        / window["micro"]
    )
    tokens = torch.tensor([float(window["tokens"])], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        values = acc.reduce(values, "mean")
        tokens = acc.reduce(tokens, "sum")
    seconds = max(time.perf_counter() - started, 1e-9)
    loss, ntp, mse = values.tolist()
    return {
        "stage": plan.stage,
        "step": step,
        "loss": loss,
        "ntp": ntp,
        "mse": mse,
        "lr": lr,
        "tokens": int(tokens.item()),
        "seconds": seconds,
        "tokens_per_s": tokens.item() / seconds,
    }
