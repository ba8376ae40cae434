"""The fast training step (default; `--legacy-step` turns it off), piece by piece.

Measured on a 2-core AVX512-BF16 CPU with SmolLM2-135M (see BENCHMARKS.md); each piece is
a pure cost saving, none changes what a step optimises:

* `fast_autocast_dtype`: bf16 autocast where the hardware has native bf16 (CUDA cards
  that support it, through Accelerate; CPUs with AVX512-BF16 or AMX), float32 elsewhere
  (MPS included; bf16 on this 2-core AVX512-BF16 CPU: 1.3-2x per fwd+bwd);
* `MemoryCache` (memory_cache.py): candidates compressed once per stage, not per question;
* the next-token loss takes the LM head and the cross-entropy at label positions only
  (losses.py), and repeated documents of a micro-batch are compressed once;
* `bucket_order`: each global batch sorted by length, so micro-batches pad little;
  `StepScales` normalises every loss by the whole global batch (target tokens, rows,
  examples), so how a global batch is cut into micro-batches does not change the
  gradient, and `auto_micro_batch` can pick the largest micro-batch that fits;
* `cast_frozen_weights`: the frozen base weights are kept in bf16 during a bf16 stage
  (autocast would cast them at every matmul; same numbers, no copy);
* `fast_lora_dropout`: LoRA dropout masks from 16-bit random integers (CPU only: torch's
  `bernoulli_` took 17% of a bf16 step there);
* `MemoryRows`: stage 1 trains the `<MEM…>` embedding rows as a small parameter instead
  of back-propagating into (and running AdamW over) the whole 49K-row embedding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clara_integrations import ClaraModel

__all__ = [
    "MemoryRows",
    "ScaledCollate",
    "StepScales",
    "auto_micro_batch",
    "bucket_order",
    "cast_frozen_weights",
    "fast_autocast_dtype",
    "fast_lora_dropout",
    "mean_example_tokens",
    "micro_batch_token_budget",
    "native_bf16",
]

logger = logging.getLogger(__name__)

# Tokens (with gradient) per forward that the automatic micro-batch aims at on a CPU: on
# SmolLM2-135M (2 cores, bf16) stage-1 steps of 8 examples took 14 s as micro-batches of
# 2 or 4 (~1.1K-2.2K tokens) and 24 s as one of 8 (~4.5K). GPUs scale it with their memory.
CPU_MICRO_BATCH_TOKENS = 2048
GPU_TOKENS_PER_GB = 800


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bf16 matmuls natively (autocast to bf16 is then faster)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False  # MPS: float32 (fp16 on request)
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if cpu is not None and hasattr(cpu, probe) and getattr(cpu, probe)():
            return True
    try:  # aarch64 (e.g. Graviton 3, Apple M2+ under Linux) reports "bf16"
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
        return " bf16" in flags and os.uname().machine in ("aarch64", "arm64")
    except OSError:
        return False


def fast_autocast_dtype(
    device: torch.device | str, requested: str | None, accelerate_mixed: str, legacy: bool = False
) -> torch.dtype | None:
    """The fast step's own autocast: bf16 on a CPU with native bf16 when no precision was
    asked for (`requested`: `--mixed-precision`, or an accelerate config) and Accelerate
    runs none. CUDA gets bf16 from Accelerate already; MPS and other CPUs stay float32.
    (Done here rather than through Accelerate, whose precision is fixed per process: a
    legacy and a fast run can then share one.)"""
    if legacy or requested or str(accelerate_mixed) != "no":
        return None
    device = torch.device(device)
    return torch.bfloat16 if device.type == "cpu" and native_bf16(device) else None


def bucket_order(order: Sequence[int], batch_size: int, lengths: Sequence[int]) -> list[int]:
    """`order` with each consecutive global batch of `batch_size` positions sorted by
    decreasing `lengths[example]` (ties keep schedule order): the same examples per
    optimiser step, cut into micro-batches of similar length."""
    out: list[int] = []
    for start in range(0, len(order), batch_size):
        block = list(order[start : start + batch_size])
        out.extend(sorted(block, key=lambda i: -lengths[i]))
    return out


@dataclass
class StepScales:
    """Per optimiser step, the factors that turn a micro-batch's loss *sum* into its share
    of the global batch's mean: ``accum * processes / total``, with totals over the whole
    global batch (Accelerate divides by `accum` and DDP averages over processes).

    Keys: ``ntp`` (per target token), ``rows`` (per encoded document row), ``examples``.
    """

    batch_size: int  # global batch
    per_step: list[dict[str, float]]

    @classmethod
    def build(
        cls,
        label_tokens: Sequence[int],
        batch_size: int,
        rows_per_example: int,
        accum: int,
        processes: int,
    ) -> StepScales:
        """`label_tokens[p]`: target tokens at schedule position `p`."""
        factor = accum * processes
        per_step = []
        for start in range(0, len(label_tokens), batch_size):
            tokens = sum(label_tokens[start : start + batch_size])
            per_step.append(
                {
                    "ntp": factor / max(tokens, 1),
                    "rows": factor / (batch_size * max(rows_per_example, 1)),
                    "examples": factor / batch_size,
                }
            )
        return cls(batch_size, per_step)

    def __call__(self, positions: Sequence[int]) -> dict[str, float]:
        return self.per_step[positions[0] // self.batch_size]


class ScaledCollate:
    """A collator that also puts the step's `StepScales` into the batch (``scale``)."""

    def __init__(
        self, collator: Callable[[Sequence[Any]], dict[str, Any]], scales: StepScales
    ) -> None:
        self.collator = collator
        self.scales = scales

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        batch = self.collator(items)
        batch["scale"] = self.scales(batch["positions"])
        return batch


def micro_batch_token_budget(device: torch.device) -> int:
    """Default `--micro-batch-tokens`: fixed per device kind (and GPU memory size), so a
    resumed run plans the same micro-batches."""
    if device.type == "cuda":
        total_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
        return max(CPU_MICRO_BATCH_TOKENS, int(total_gb * GPU_TOKENS_PER_GB))
    return CPU_MICRO_BATCH_TOKENS


def auto_micro_batch(per_process_batch: int, tokens_per_example: float, budget: int) -> int:
    """The largest divisor of `per_process_batch` whose micro-batch stays within `budget`
    tokens with gradient (at least 1)."""
    best = 1
    for m in range(1, per_process_batch + 1):
        if per_process_batch % m == 0 and m * tokens_per_example <= budget:
            best = m
    return best


@contextlib.contextmanager
def cast_frozen_weights(model: ClaraModel, dtype: torch.dtype | None) -> Iterator[int]:
    """Keep the frozen base Linear weights in `dtype` (the bf16/fp16 autocast dtype) for
    the block.

    Autocast casts an fp32 weight that does not require grad at every matmul (it caches
    only trainable leaves); the cast gives exactly these values, so the numbers are the
    same. LoRA weights and the (tied) LM head are left alone, and the float32 weights are
    put back afterwards (evaluation and saving see them). Yields how many were cast.
    (Casting the norms and the residual stream too measured no faster: PEFT casts LoRA
    inputs back to the LoRA weights' float32.)
    """
    saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if dtype is not None:
        tied = model.decoder.get_input_embeddings().weight.data_ptr()
        for name, module in model.decoder.named_modules():
            weight = getattr(module, "weight", None)
            if (
                type(module) is torch.nn.Linear
                and "lora_" not in name
                and weight is not None
                and not weight.requires_grad
                and weight.dtype != dtype
                and weight.is_floating_point()
                and weight.data_ptr() != tied
            ):
                saved.append((weight, weight.data))
                weight.data = weight.data.to(dtype)
    try:
        yield len(saved)
    finally:
        for weight, data in saved:
            weight.data = data


class _FastDropout(torch.nn.Module):
    """Inverted dropout for CPUs: the mask compares 16-bit random integers (four per 64-bit
    draw) with a threshold, ~3x cheaper than `bernoulli_`; the drop probability is p
    rounded to a multiple of 2^-16 (0.1 -> 0.1000061). Under autocast the input is cast to
    the autocast dtype first: the LoRA matmul that reads the result would cast it anyway,
    and the mask then moves half the bytes. Draws use torch's global generator (seeded per
    micro-batch), so runs repeat exactly."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self._threshold = int(round(p * 2**16)) - 2**15  # int16 values below it are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
            x = x.to(torch.get_autocast_dtype(x.device.type))
        n = x.numel()
        bits = torch.randint(
            -(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device
        )
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self._threshold
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))


def fast_lora_dropout(model: ClaraModel) -> contextlib.AbstractContextManager[int]:
    """`_FastDropout` instead of the LoRA `nn.Dropout`s for the block, on CPU models only
    (CUDA's `bernoulli_` is fast). Yields how many were swapped."""
    if model.device.type != "cpu":
        return contextlib.nullcontext(0)
    return model.adapters.dropout_replaced(_FastDropout)


class MemoryRows:
    """Stage 1's trainable `<MEM…>` embedding rows as one small parameter (m, H).

    The legacy step makes the whole (V, H) embedding trainable and masks its gradient to
    the memory rows: a dense 49K x 576 gradient (twice, with the tied LM head), clipping
    and AdamW over all of it, every step. Here forward hooks put the parameter's rows
    where the embedding returns a memory token and, with a tied LM head, into the
    memory-token columns of the logits, so the rows get the same gradient; after every
    optimiser step they are copied into the embedding (checkpoints and evaluation read it).

    Example:
        >>> rows = MemoryRows(model)            # doctest: +SKIP
        >>> params.append(rows.param)           # doctest: +SKIP
        >>> rows.attach(optimizer); ...; rows.remove()  # doctest: +SKIP
    """

    PARAM_NAME = "training_mem_rows"

    def __init__(self, model: ClaraModel) -> None:
        embed = model.decoder.get_input_embeddings()
        self.weight = embed.weight
        self.ids = torch.as_tensor(sorted(model.special.unique_mem_ids), device=self.weight.device)
        self.param = torch.nn.Parameter(self.weight.detach()[self.ids].clone())
        # A parameter of the model for the stage, so that DDP (which wraps the objective
        # around the model) averages its gradient across processes like any other.
        self._model = model
        model.register_parameter(self.PARAM_NAME, self.param)
        self._slot = torch.full(
            (self.weight.shape[0],), -1, dtype=torch.long, device=self.weight.device
        )
        self._slot[self.ids] = torch.arange(len(self.ids), device=self.weight.device)
        self._handles = [embed.register_forward_hook(self._embed_hook)]
        head = model.decoder.get_output_embeddings()
        if head is not None and head.weight.data_ptr() == self.weight.data_ptr():
            self._handles.append(head.register_forward_hook(self._head_hook))

    def _embed_hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        slot = self._slot[args[0]]  # (B, T), -1 where not a memory token
        where = (slot >= 0).nonzero(as_tuple=True)
        if not where[0].numel():
            return output
        return output.index_put(where, self.param[slot[where]].to(output.dtype))

    def _head_hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        mem_logits = torch.nn.functional.linear(args[0], self.param.to(args[0].dtype))  # (..., m)
        return output.index_copy(-1, self.ids, mem_logits.to(output.dtype))

    @torch.no_grad()
    def sync(self, *_: Any) -> None:
        """Copy the trained rows into the embedding."""
        self.weight[self.ids] = self.param.to(self.weight.dtype)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Sync after every optimiser step of `optimizer` (the unwrapped torch one)."""
        self._handles.append(optimizer.register_step_post_hook(self.sync))

    def remove(self) -> None:
        """Sync, then remove the hooks (the embedding is plain again)."""
        self.sync()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if hasattr(self._model, self.PARAM_NAME):
            delattr(self._model, self.PARAM_NAME)


def mean_example_tokens(
    examples: Sequence[Any], cost: Callable[[Any], int], limit: int = 256
) -> float:
    """Mean of `cost` over the first `limit` examples (a fixed sample: plans must repeat)."""
    sample = list(examples[:limit])
    return sum(cost(ex) for ex in sample) / max(len(sample), 1) if sample else math.inf
