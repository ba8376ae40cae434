"""Stage objectives (spec §5.4, §3.5): `nn.Module`s built around a `ClaraModel`.

Each objective's `forward(batch)` returns a dict with ``loss`` (what is back-propagated)
and the parts that are logged. They are modules so that Accelerate can wrap them (DDP,
FSDP, DeepSpeed): the wrapper's forward is what prepares the gradient synchronisation.
"""
from __future__ import annotations

from typing import Any

import torch

from clara_integrations import ClaraModel
from clara_integrations.modeling.adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER
from clara_integrations.modeling.layout import splice_memory
from clara_integrations.modeling.topk import cosine_scores

__all__ = ["CompressionObjective", "EndToEndObjective", "RetrievalObjective", "objective_for_stage"]

# Temperature of the retrieval InfoNCE logits (reference `stage2_pretrain_retrieval`).
RETRIEVAL_TEMPERATURE = 0.02


def _generator_loss(model: ClaraModel, batch: dict[str, Any], memories: torch.Tensor,
                    k: int) -> torch.Tensor:
    """Next-token loss of the generator reading `memories` (B*k, n_mem, H) spliced into
    its prompts; the Hugging Face loss: mean over the micro-batch's target tokens."""
    # The training loop's dataloader already puts these on the model's device; moving
    # them here too lets an objective be called on a plain CPU batch (tests, notebooks).
    device = memories.device
    ids = batch["dec_input_ids"].to(device)  # (B, T)
    embeds = model.decoder.get_input_embeddings()(ids)  # (B, T, H)
    embeds = splice_memory(embeds, ids, memories, model.special.mem_token_ids[0], k,
                           model.config.sep)
    with model.adapters.using(DECODER_ADAPTER):
        out = model.decoder(inputs_embeds=embeds, attention_mask=batch["dec_attention_mask"].to(device),
                            labels=batch["labels"].to(device), use_cache=False)
    return out.loss


class CompressionObjective(torch.nn.Module):
    """Stages `compress` and `instruct`: compress the documents *with* gradient, then the
    generator's next-token loss; total = ntp + `mse_weight` * MSE (reference: 0.1).

    Example:
        >>> objective = CompressionObjective(model, mse_weight=0.1)  # doctest: +SKIP
        >>> objective(batch)["loss"].backward()                      # doctest: +SKIP
    """

    def __init__(self, model: ClaraModel, mse_weight: float = 0.1, encode_batch_size: int = 64) -> None:
        super().__init__()
        self.model = model
        self.mse_weight = mse_weight
        self.encode_batch_size = encode_batch_size

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        memory, mse = self.model.encode_texts(batch["enc_texts"], ENCODER_ADAPTER,
                                              self.encode_batch_size, with_mse=True)
        ntp = _generator_loss(self.model, batch, memory, batch["k"])  # memory (B*k, n_mem, H)
        return {"loss": ntp + self.mse_weight * mse, "ntp": ntp.detach(), "mse": mse.detach()}


class EndToEndObjective(torch.nn.Module):
    """Stage `e2e`: the query reasoner picks `k` of `N` candidates through the
    straight-through top-k; candidates are compressed without gradient; next-token loss
    only, so retrieval learns from answer quality, with no relevance labels.
    """

    def __init__(self, model: ClaraModel, encode_batch_size: int = 64, temperature: float = 0.02) -> None:
        super().__init__()
        self.model = model
        self.encode_batch_size = encode_batch_size
        self.temperature = temperature

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model, n, k = self.model, batch["n_cand"], batch["k"]
        with torch.no_grad():
            docs, mse = model.encode_texts(batch["cand_texts"], ENCODER_ADAPTER,
                                           self.encode_batch_size, with_mse=True)  # (B*N, n_mem, H)
        queries, _ = model.encode_texts(batch["questions"], QUERY_ADAPTER, self.encode_batch_size)
        b = queries.shape[0]
        candidates = docs.reshape(b, n, *docs.shape[1:])  # (B, N, n_mem, H)
        selected, topk_idx, _ = model.select(queries.flatten(1), candidates, k, self.temperature)
        ntp = _generator_loss(model, batch, selected, k)  # selected (B*k, n_mem, H)
        return {"loss": ntp, "ntp": ntp.detach(), "mse": mse.detach(), "topk_idx": topk_idx}


class RetrievalObjective(torch.nn.Module):
    """Stage `retrieval`: multi-positive InfoNCE of the query reasoner over each example's
    candidates, logits = cosine / 0.02 (reference `stage2_pretrain_retrieval`, spec §3.5)."""

    def __init__(self, model: ClaraModel, encode_batch_size: int = 64) -> None:
        super().__init__()
        self.model = model
        self.encode_batch_size = encode_batch_size

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model, n = self.model, batch["n_cand"]
        with torch.no_grad():
            docs, mse = model.encode_texts(batch["cand_texts"], ENCODER_ADAPTER,
                                           self.encode_batch_size, with_mse=True)
        queries, _ = model.encode_texts(batch["questions"], QUERY_ADAPTER, self.encode_batch_size)
        b = queries.shape[0]
        scores = cosine_scores(queries.flatten(1), docs.reshape(b, n, -1))  # (B, N)
        logits = scores / RETRIEVAL_TEMPERATURE
        pos = batch["pos_mask"].to(logits.device)
        has_pos = pos.any(dim=1)  # (B,)
        # A row without positives uses all candidates (its term is then 0, no -inf/NaN)
        # and is left out of the mean, as the reference does.
        pos = pos | ~has_pos[:, None]
        pos_lse = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
        per_example = torch.logsumexp(logits, dim=1) - pos_lse  # (B,)
        loss = (per_example * has_pos).sum() / has_pos.sum().clamp(min=1)
        return {"loss": loss, "ntp": loss.detach(), "mse": mse.detach()}


def objective_for_stage(model: ClaraModel, stage: str, mse_weight: float,
                        encode_batch_size: int = 64) -> torch.nn.Module:
    """The objective module of `stage`."""
    if stage in ("compress", "instruct"):
        return CompressionObjective(model, mse_weight, encode_batch_size)
    if stage == "e2e":
        return EndToEndObjective(model, encode_batch_size)
    if stage == "retrieval":
        return RetrievalObjective(model, encode_batch_size)
    raise ValueError(f"unknown stage {stage!r}")
