"""The four training stages: their reference defaults, their data, and what each trains.

| stage | reference `--stage` | trains (spec §5.5) |
|---|---|---|
| `compress` | `stage1` | compressor + generator adapters, `<MEM…>` embedding rows |
| `instruct` | `stage1_2` | compressor + a *fresh* generator (reference) or the current one; the generator alone with `--instruct-compressor frozen` |
| `retrieval` | `stage2_pretrain_retrieval` | query reasoner (InfoNCE on `pos_index`); the compressor instead with `--retrieval-negatives queries` |
| `e2e` | `stage2` | generator + query reasoner (through the top-k); compressor frozen |
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from clara_integrations import ClaraModel
from clara_integrations.modeling.adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER

from .data import REFERENCE_STAGE, DataError, Example
from .fastpath import MemoryRows

__all__ = [
    "STAGE_DEFAULTS",
    "TRAINED_ADAPTERS",
    "StageDefaults",
    "enable_gradient_checkpointing",
    "ensure_adapters",
    "equalize_candidates",
    "fit_example",
    "prepare_model_for_stage",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageDefaults:
    """The reference scripts' settings for one stage (spec §5.8)."""

    learning_rate: float
    lr_scheduler: str
    train_batch_size: int  # global batch (examples per optimiser step)
    micro_train_batch_size: int  # per device and forward
    generation_top_k: int  # documents read per question
    max_len: int  # decoder token budget
    mse_weight: float  # weight of the compressor's MSE term in the loss


STAGE_DEFAULTS = {
    "compress": StageDefaults(1e-4, "cosine_with_min_lr", 128, 2, 1, 2048, 0.1),
    "instruct": StageDefaults(1e-4, "cosine_with_min_lr", 128, 2, 5, 2048, 0.1),
    "retrieval": StageDefaults(1e-4, "cosine_with_min_lr", 32, 2, 5, 1024, 0.0),
    "e2e": StageDefaults(5e-6, "constant", 32, 2, 5, 1024, 0.0),
}

#: Adapters each stage trains, in optimiser order.
TRAINED_ADAPTERS = {
    "compress": (ENCODER_ADAPTER, DECODER_ADAPTER),
    "instruct": (ENCODER_ADAPTER, DECODER_ADAPTER),
    "retrieval": (QUERY_ADAPTER,),
    "e2e": (DECODER_ADAPTER, QUERY_ADAPTER),
}


def _pick_docs(ex: Example, k: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """`k` documents: the positives first, then the others, in their original order."""
    pos = [i for i in ex.pos_index]
    keep = sorted((pos + [i for i in range(len(ex.docs)) if i not in pos])[:k])
    return tuple(ex.docs[i] for i in keep), tuple(keep.index(i) for i in pos if i in keep)


def fit_example(ex: Example, stage: str, k: int) -> Example:
    """Check that `ex` suits `stage` and shape it: stage 1 and 2 read exactly `k` docs
    (positives kept first when there are more); stages 2-3 need one question.

    Raises:
        DataError: naming the example's ``file:line`` and the problem.
    """

    def fail(why: str) -> DataError:
        return DataError(f"{ex.origin}: {why} (stage {stage!r})")

    if stage == "compress":
        if len(ex.docs) != k:
            raise fail(
                f"has {len(ex.docs)} documents, stage 1 reads exactly {k} (--compress-top-k)"
            )
        return ex
    if ex.data_type != "qa" or len(ex.questions) != 1:
        raise fail("needs one question and one answer")
    if stage == "instruct":
        if len(ex.docs) < k:
            raise fail(f"has {len(ex.docs)} documents, fewer than --generation-top-k {k}")
        docs, pos = _pick_docs(ex, k)
        return Example(docs, ex.questions, ex.targets, "qa", pos, ex.answers, ex.origin)
    if stage == "retrieval" and not ex.pos_index:
        raise fail("has no 'pos_index' (retrieval pretraining needs positives)")
    if stage == "e2e" and len(ex.docs) < k:
        raise fail(f"has {len(ex.docs)} candidates, fewer than --generation-top-k {k}")
    return ex


def equalize_candidates(examples: list[Example]) -> list[Example]:
    """Give every example the same number of candidates (a micro-batch needs one N): the
    smallest N in the set, dropping non-positive candidates from the end."""
    if not examples:
        return examples
    n = min(len(ex.docs) for ex in examples)
    if all(len(ex.docs) == n for ex in examples):
        return examples
    logger.warning(
        "examples have %d to %d candidates; keeping %d per example",
        n,
        max(len(ex.docs) for ex in examples),
        n,
    )
    out = []
    for ex in examples:
        docs, pos = _pick_docs(ex, n)
        out.append(
            Example(docs, ex.questions, ex.targets, ex.data_type, pos, ex.answers, ex.origin)
        )
    return out


@contextlib.contextmanager
def _recompute_with(model: ClaraModel, active: str | None) -> Iterator[None]:
    """During a checkpoint's recomputation, re-activate the adapter of its forward."""
    before = model.adapters.active
    model.adapters.activate(active)
    try:
        yield
    finally:
        model.adapters.activate(before)


def enable_gradient_checkpointing(model: ClaraModel) -> None:
    """Activation checkpointing that survives CLaRa's adapter switching.

    The recomputation runs during backward, when another adapter (or none) is active: the
    encoder's layers would be recomputed without their LoRA. `context_fn` captures the
    adapter active at forward time and restores it for the recomputation.
    """

    def context_fn():
        return contextlib.nullcontext(), _recompute_with(model, model.adapters.active)

    kwargs = {"use_reentrant": False, "context_fn": context_fn}
    decoder = model.decoder
    if hasattr(decoder, "activation_checkpointing_enable"):  # transformers >= 5
        decoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _ensure(model: ClaraModel, name: str, copy_from: str | None = None, warn: bool = False) -> None:
    if name in model.adapters:
        return
    if copy_from is not None and copy_from in model.adapters:
        logger.info("creating %s as a copy of %s (reference)", name, copy_from)
        model.adapters.copy(copy_from, name)
        return
    if warn:
        logger.warning(
            "no trained compressor: creating a fresh %s (run stage 'compress' "
            "first for useful memory)",
            name,
        )
    model.adapters.add(name)


def ensure_adapters(model: ClaraModel, stage: str, *, fresh_decoder: bool = False) -> None:
    """Create (or copy, as the reference does) the adapters `stage` needs.

    Args:
        fresh_decoder: re-initialise the generator for `instruct` (reference stage1_2).
    """
    if stage in ("compress", "instruct"):
        _ensure(model, ENCODER_ADAPTER)
        _ensure(model, DECODER_ADAPTER)
        if stage == "instruct" and fresh_decoder:
            logger.info("instruct: re-initialising the generator adapter (reference stage1_2)")
            model.adapters.reset(DECODER_ADAPTER)
    else:
        _ensure(model, ENCODER_ADAPTER, warn=True)
        _ensure(model, QUERY_ADAPTER, copy_from=ENCODER_ADAPTER)
        if stage == "e2e":
            _ensure(model, DECODER_ADAPTER)


def prepare_model_for_stage(
    model: ClaraModel,
    stage: str,
    k: int,
    *,
    fresh_decoder: bool = True,
    train_mem_tokens: bool = True,
    fast: bool = False,
    frozen_compressor: bool = False,
    negatives: str = "candidates",
) -> tuple[list[torch.nn.Parameter], Any]:
    """Create/copy the adapters `stage` needs, freeze everything else, and return
    (trainable parameters in a fixed order, handle of the memory-row gradient hook, or
    with `fast` a `fastpath.MemoryRows`; both have `.remove()`).

    Args:
        stage: `compress`, `instruct`, `retrieval` or `e2e`.
        k: documents per question for this stage (written into the config).
        fresh_decoder: `instruct` starts from a fresh generator, as the reference does.
        train_mem_tokens: `compress` also trains the `<MEM…>` embedding rows (reference
            `optimize_mem_tokens`); call `handle.remove()` when the stage ends.
        frozen_compressor: `instruct` trains the generator alone.
        negatives: `retrieval` with "queries" trains the compressor, not the query reasoner.
    """
    ensure_adapters(model, stage, fresh_decoder=fresh_decoder)
    model.config = model.config.model_copy(
        update={"training_stage": REFERENCE_STAGE[stage], "generation_top_k": k}
    )
    for p in model.parameters():
        p.requires_grad_(False)
    names = TRAINED_ADAPTERS[stage]
    if frozen_compressor:
        names = tuple(n for n in names if n != ENCODER_ADAPTER)
    if stage == "retrieval" and negatives == "queries":
        names = (ENCODER_ADAPTER,)
    model.adapters.set_trainable(list(names))
    params = [p for name in names for p in model.adapters.parameters(name)]
    handle = None
    if stage == "compress" and train_mem_tokens and fast:
        handle = MemoryRows(model)  # the same rows trained without the full (V, H) gradient
        params.append(handle.param)
    elif stage == "compress" and train_mem_tokens:
        weight = model.decoder.get_input_embeddings().weight
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[list(model.special.unique_mem_ids)] = 1.0
        weight.requires_grad_(True)
        # Only the <MEM…> rows may change (reference `_prepare_mem_tokens_optimization`);
        # with tied embeddings this masks the output head's gradient too.
        handle = weight.register_hook(lambda grad: grad * mask.to(grad.dtype))
        params.append(weight)
    return params, handle
