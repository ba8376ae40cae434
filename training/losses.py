"""Stage objectives (spec §5.4, §3.5): `nn.Module`s built around a `ClaraModel`.

Each objective's `forward(batch)` returns a dict with ``loss`` (what is back-propagated)
and the parts that are logged. They are modules so that Accelerate can wrap them (DDP,
FSDP, DeepSpeed): the wrapper's forward is what prepares the gradient synchronisation.

With ``fast=True`` (the default step of `training.finetune`; `--legacy-step` is the
other) an objective computes the same loss more cheaply: the LM head and cross-entropy
only at label positions, each distinct document of a micro-batch compressed once, frozen
candidates read from a `MemoryCache` (or compressed in eval mode, as the cache does), and
sums scaled by the batch's ``scale`` (see `fastpath.StepScales`) so that the result is the
global batch's mean however it is cut into micro-batches. Without ``scale`` in the batch
(a plain batch: tests, notebooks) the means are over the micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch

from clara_integrations import ClaraModel
from clara_integrations.modeling.adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER
from clara_integrations.modeling.layout import splice_memory
from clara_integrations.modeling.topk import cosine_scores

from .collate import IGNORE_INDEX
from .memory_cache import MemoryCache, frozen_memory
from .query_bank import QueryBank

__all__ = [
    "CompressionObjective",
    "CompressorRetrievalObjective",
    "EndToEndObjective",
    "RetrievalObjective",
    "objective_for_stage",
]

# Temperature of the retrieval InfoNCE logits (reference `stage2_pretrain_retrieval`).
RETRIEVAL_TEMPERATURE = 0.02


def _spliced_embeds(
    model: ClaraModel, batch: dict[str, Any], memories: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder prompt embeddings with `memories` (B*k, n_mem, H) spliced in: ((B, T, H), mask)."""
    # The training loop's dataloader already puts these on the model's device; moving
    # them here too lets an objective be called on a plain CPU batch (tests, notebooks).
    device = memories.device
    ids = batch["dec_input_ids"].to(device)  # (B, T)
    embeds = model.decoder.get_input_embeddings()(ids)  # (B, T, H)
    embeds = splice_memory(
        embeds, ids, memories, model.special.mem_token_ids[0], k, model.config.sep
    )
    return embeds, batch["dec_attention_mask"].to(device)


def _generator_loss(
    model: ClaraModel, batch: dict[str, Any], memories: torch.Tensor, k: int
) -> torch.Tensor:
    """Next-token loss of the generator reading `memories` (B*k, n_mem, H) spliced into
    its prompts; the Hugging Face loss: mean over the micro-batch's target tokens."""
    embeds, mask = _spliced_embeds(model, batch, memories, k)
    with model.adapters.using(DECODER_ADAPTER):
        out = model.decoder(
            inputs_embeds=embeds,
            attention_mask=mask,
            labels=batch["labels"].to(memories.device),
            use_cache=False,
        )
    return out.loss


def _generator_token_loss(
    model: ClaraModel, batch: dict[str, Any], memories: torch.Tensor, k: int
) -> tuple[torch.Tensor, int]:
    """(sum of the next-token losses, number of target tokens) of the generator reading
    `memories` (B*k, n_mem, H): the base runs to hidden states and only the n target
    positions go through the LM head, (n, V) logits instead of (B, T, V)."""
    embeds, mask = _spliced_embeds(model, batch, memories, k)
    targets = batch["labels"].to(memories.device)[:, 1:]  # (B, T-1): position t predicts t+1
    keep = targets != IGNORE_INDEX
    body = getattr(model.decoder, model.decoder.base_model_prefix)
    with model.adapters.using(DECODER_ADAPTER):
        hidden = body(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False
        ).last_hidden_state  # (B, T, H)
        logits = model.decoder.get_output_embeddings()(hidden[:, :-1][keep])  # (n, V)
    cap = getattr(model.decoder.config, "final_logit_softcapping", None)
    logits = logits.float()
    if cap:  # models that soft-cap their logits (Gemma 2) do it after the head
        logits = torch.tanh(logits / cap) * cap
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())


def _scale(batch: dict[str, Any], key: str, micro_count: int) -> float:
    """Factor from a sum to this micro-batch's share of the mean (see module docstring)."""
    scale = batch.get("scale")
    return scale[key] if scale is not None else 1.0 / max(micro_count, 1)


def _unique(texts: list[str]) -> tuple[list[str], list[int]]:
    """Distinct texts (first-seen order) and, per input text, its index among them."""
    where: dict[str, int] = {}
    index = [where.setdefault(t, len(where)) for t in texts]
    return list(where), index


class CompressionObjective(torch.nn.Module):
    """Stages `compress` and `instruct`: compress the documents *with* gradient, then the
    generator's next-token loss; total = ntp + `mse_weight` * MSE (reference: 0.1).

    Example:
        >>> objective = CompressionObjective(model, mse_weight=0.1)  # doctest: +SKIP
        >>> objective(batch)["loss"].backward()                      # doctest: +SKIP
    """

    def __init__(
        self,
        model: ClaraModel,
        mse_weight: float = 0.1,
        encode_batch_size: int = 64,
        fast: bool = False,
        frozen_compressor: bool = False,
        cache: MemoryCache | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.mse_weight = mse_weight
        self.encode_batch_size = encode_batch_size
        self.fast = fast
        self.frozen_compressor = frozen_compressor
        self.cache = cache

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.frozen_compressor:
            return self._frozen(batch)
        if self.fast:
            return self._fast(batch)
        memory, mse = self.model.encode_texts(
            batch["enc_texts"], ENCODER_ADAPTER, self.encode_batch_size, with_mse=True
        )
        ntp = _generator_loss(self.model, batch, memory, batch["k"])  # memory (B*k, n_mem, H)
        return {"loss": ntp + self.mse_weight * mse, "ntp": ntp.detach(), "mse": mse.detach()}

    def _fast(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        texts, index = _unique(list(batch["enc_texts"]))
        memory, mse_rows = self.model.encode_texts(
            texts, ENCODER_ADAPTER, self.encode_batch_size, with_mse="rows"
        )  # (U, n_mem, H), (U,)
        where = torch.as_tensor(index, device=memory.device)
        memory, mse_rows = memory[where], mse_rows[where]  # repeated documents share a row
        ntp_sum, n_targets = _generator_token_loss(self.model, batch, memory, batch["k"])
        ntp = ntp_sum * _scale(batch, "ntp", n_targets)
        mse = mse_rows.sum() * _scale(batch, "rows", len(index))
        return {"loss": ntp + self.mse_weight * mse, "ntp": ntp.detach(), "mse": mse.detach()}

    def _frozen(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The generator alone: its documents' memory comes without gradient (from the
        memory cache on the fast step), so the loss is the next-token loss only; the MSE
        term is reported, not trained."""
        model, k = self.model, batch["k"]
        memory, mse = _frozen_candidates(
            model,
            {**batch, "cand_texts": batch["enc_texts"]},
            self.fast,
            self.cache,
            self.encode_batch_size,
        )  # (B*k, n_mem, H)
        if self.fast:
            ntp_sum, n_targets = _generator_token_loss(model, batch, memory, k)
            ntp = ntp_sum * _scale(batch, "ntp", n_targets)
        else:
            ntp = _generator_loss(model, batch, memory, k)
        return {"loss": ntp, "ntp": ntp.detach(), "mse": mse.detach()}


def _candidates(
    model: ClaraModel, batch: dict[str, Any], cache: MemoryCache | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen candidate memory (B*N, n_mem, H) and MSE terms (B*N,) of the fast path."""
    if cache is not None:
        return cache.lookup(batch["cand_texts"])
    texts, index = _unique(list(batch["cand_texts"]))
    memory, mse = frozen_memory(model, texts, batch_size)
    where = torch.as_tensor(index, device=memory.device)
    return memory[where], mse[where]


class EndToEndObjective(torch.nn.Module):
    """Stage `e2e`: the query reasoner picks `k` of `N` candidates through the
    straight-through top-k; candidates are compressed without gradient; next-token loss
    only, so retrieval learns from answer quality, with no relevance labels.
    """

    def __init__(
        self,
        model: ClaraModel,
        encode_batch_size: int = 64,
        temperature: float = 0.02,
        fast: bool = False,
        cache: MemoryCache | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.encode_batch_size = encode_batch_size
        self.temperature = temperature
        self.fast = fast
        self.cache = cache

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model, n, k = self.model, batch["n_cand"], batch["k"]
        docs, mse = _frozen_candidates(
            model, batch, self.fast, self.cache, self.encode_batch_size
        )  # (B*N, n_mem, H)
        queries, _ = model.encode_texts(batch["questions"], QUERY_ADAPTER, self.encode_batch_size)
        b = queries.shape[0]
        candidates = docs.reshape(b, n, *docs.shape[1:])  # (B, N, n_mem, H)
        selected, topk_idx, _ = model.select(queries.flatten(1), candidates, k, self.temperature)
        if self.fast:
            ntp_sum, n_targets = _generator_token_loss(model, batch, selected, k)
            ntp = ntp_sum * _scale(batch, "ntp", n_targets)
        else:
            ntp = _generator_loss(model, batch, selected, k)  # selected (B*k, n_mem, H)
        return {"loss": ntp, "ntp": ntp.detach(), "mse": mse.detach(), "topk_idx": topk_idx}


def _frozen_candidates(
    model: ClaraModel,
    batch: dict[str, Any],
    fast: bool,
    cache: MemoryCache | None,
    encode_batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate memories compressed without gradient (retrieval, e2e) and their MSE term:
    through the memory cache on the fast step, re-encoded every time on the legacy one."""
    if fast:
        docs, mse_rows = _candidates(model, batch, cache, encode_batch_size)
        return docs, mse_rows.sum() * _scale(batch, "rows", len(mse_rows))
    with torch.no_grad():
        return model.encode_texts(
            batch["cand_texts"], ENCODER_ADAPTER, encode_batch_size, with_mse=True
        )


class RetrievalObjective(torch.nn.Module):
    """Stage `retrieval`: multi-positive InfoNCE of the query reasoner, logits = cosine /
    0.02 (reference `stage2_pretrain_retrieval`, spec §3.5).

    `negatives` picks what a question's positives compete with: ``"candidates"`` (the
    reference) its own candidates; ``"bank"`` every document of the stage's memory cache
    (thousands of negatives for the price of one matrix product, as the documents are
    compressed once; FINDINGS.md: 9 minutes of this closed much of the gap to BM25).
    """

    def __init__(
        self,
        model: ClaraModel,
        encode_batch_size: int = 64,
        fast: bool = False,
        cache: MemoryCache | None = None,
        negatives: str = "candidates",
    ) -> None:
        super().__init__()
        if negatives not in ("candidates", "bank"):
            raise ValueError(
                f"RetrievalObjective: negatives must be 'candidates' or 'bank', got {negatives!r}"
                " ('queries' trains the compressor: CompressorRetrievalObjective)"
            )
        if negatives == "bank" and cache is None:
            raise ValueError(
                "negatives='bank' reads the stage's memory cache: use the fast step with the "
                "memory cache on (no --legacy-step, no --no-memory-cache)"
            )
        self.model = model
        self.encode_batch_size = encode_batch_size
        self.fast = fast
        self.cache = cache
        self.negatives = negatives
        self._bank: torch.Tensor | None = None  # (U, D) unit rows, built at the first step

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model, n = self.model, batch["n_cand"]
        docs, mse = _frozen_candidates(model, batch, self.fast, self.cache, self.encode_batch_size)
        queries, _ = model.encode_texts(batch["questions"], QUERY_ADAPTER, self.encode_batch_size)
        b = queries.shape[0]
        pos = batch["pos_mask"].to(queries.device)  # (B, N)
        if self.negatives == "bank":
            logits, pos = self._bank_logits(queries.flatten(1), batch["cand_texts"], pos)
        else:
            logits = cosine_scores(queries.flatten(1), docs.reshape(b, n, -1))
            logits = logits / RETRIEVAL_TEMPERATURE  # (B, N)
        has_pos = pos.any(dim=1)  # (B,)
        # A row without positives uses all candidates (its term is then 0, no -inf/NaN)
        # and is left out of the mean, as the reference does.
        per_example = _multi_positive_nce(logits, pos | ~has_pos[:, None])  # (B,)
        if self.fast:  # every example has positives here (fit_example requires them)
            loss = (per_example * has_pos).sum() * _scale(batch, "examples", int(has_pos.sum()))
        else:
            loss = (per_example * has_pos).sum() / has_pos.sum().clamp(min=1)
        return {"loss": loss, "ntp": loss.detach(), "mse": mse.detach()}

    def _bank_logits(
        self, queries: torch.Tensor, cand_texts: list[str], pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, U) logits of the queries (B, D) against the whole bank and the (B, U) mask
        of each question's positives (its positive candidates' rows)."""
        assert self.cache is not None
        if self._bank is None:  # frozen compressor: the bank never changes within a stage
            with torch.autocast(queries.device.type, enabled=False):
                bank = self.cache.bank().flatten(1).float()
                self._bank = torch.nn.functional.normalize(bank, dim=-1)
        rows = self.cache.rows(cand_texts).reshape(pos.shape)  # (B, N)
        bank_pos = torch.zeros(
            pos.shape[0], self._bank.shape[0], dtype=torch.bool, device=pos.device
        )
        example, candidate = pos.nonzero(as_tuple=True)
        bank_pos[example, rows[example, candidate]] = True
        with torch.autocast(queries.device.type, enabled=False):
            q = torch.nn.functional.normalize(queries.float(), dim=-1)
            return q @ self._bank.T / RETRIEVAL_TEMPERATURE, bank_pos


def _multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Per row of `logits` (R, C): logsumexp over all columns minus over the positive ones
    (the multi-positive InfoNCE of `RetrievalObjective`); every row has a positive."""
    pos_lse = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return torch.logsumexp(logits, dim=1) - pos_lse


class CompressorRetrievalObjective(torch.nn.Module):
    """Stage `retrieval` with `--retrieval-negatives queries`: the compressor learns, the
    query reasoner is frozen (not in the reference, whose retrieval stage trains only the
    query reasoner; its e2e stage too leaves the compressor frozen).

    Each micro-batch's positive documents are compressed *with* gradient, and the loss is
    the mean of two InfoNCE terms (logits = cosine / 0.02, as the reference's):

    * document -> questions: each positive against every question of the stage (a
      `QueryBank`, encoded once), its positives being the questions it answers;
    * question -> documents: each question against the micro-batch's positive documents
      (so this term, unlike the rest of training, depends on the micro-batch size: it is
      0 with one example per micro-batch; the recipe sets the micro-batch to the batch).

    Memory that moves this way is memory the shipped query reasoner finds; the generator
    reads the same memory, so measure answers too before shipping such a compressor.
    """

    def __init__(self, model: ClaraModel, bank: QueryBank, encode_batch_size: int = 64) -> None:
        super().__init__()
        self.model = model
        self.bank = bank
        self.encode_batch_size = encode_batch_size

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model, n = self.model, batch["n_cand"]
        pos = batch["pos_mask"].cpu()  # (B, N); masks are built on the CPU, then moved
        has_pos = pos.any(dim=1)  # (B,) the trainer only keeps examples with positives
        example, candidate = pos.nonzero(as_tuple=True)
        texts, index = _unique(
            [batch["cand_texts"][e * n + c] for e, c in zip(example.tolist(), candidate.tolist())]
        )
        self.bank.fill()
        queries = self.bank.vectors  # (M, D) unit rows
        docs, _ = model.encode_texts(texts, ENCODER_ADAPTER, self.encode_batch_size)
        device = docs.device
        answered = self.bank.positives_of(texts)  # per document, the bank rows it answers
        doc_pos = torch.zeros(len(texts), queries.shape[0], dtype=torch.bool)
        for row, rows in enumerate(answered):
            doc_pos[row, rows] = True
        # A question's positives among the batch's documents: its own, and any other that
        # answers it in the bank (a question repeated with other positives), so that the
        # two terms never push apart what the other pulls together.
        mine_rows = self.bank.rows(batch["questions"])  # (B,)
        query_pos = doc_pos[:, mine_rows].T.clone()  # (B, P)
        query_pos[example, torch.as_tensor(index, dtype=torch.long)] = True
        query_pos[~has_pos] = True  # no positive: a zero term, left out below
        with torch.autocast(device.type, enabled=False):
            docs = torch.nn.functional.normalize(docs.flatten(1).float(), dim=-1)  # (P, D)
            doc_terms = _multi_positive_nce(
                docs @ queries.T / RETRIEVAL_TEMPERATURE, doc_pos.to(device)
            )  # (P,)
            mine = queries[mine_rows.to(queries.device)]  # (B, D)
            query_terms = _multi_positive_nce(
                mine @ docs.T / RETRIEVAL_TEMPERATURE, query_pos.to(device)
            )  # (B,)
        # Per example: its question's term and the mean of its positives' terms, so that
        # the scaled sum over micro-batches is the global batch's mean (module docstring).
        per_doc = doc_terms[torch.as_tensor(index, device=device)]  # (positives,)
        weight = (1.0 / pos.sum(dim=1).clamp(min=1))[example].to(device)
        total = 0.5 * ((query_terms * has_pos.to(device)).sum() + (per_doc * weight).sum())
        loss = total * _scale(batch, "examples", int(has_pos.sum()))
        zero = loss.detach() * 0.0
        return {"loss": loss, "ntp": loss.detach(), "mse": zero}


def objective_for_stage(
    model: ClaraModel,
    stage: str,
    mse_weight: float,
    encode_batch_size: int = 64,
    fast: bool = False,
    cache: MemoryCache | None = None,
    negatives: str = "candidates",
    frozen_compressor: bool = False,
    query_bank: QueryBank | None = None,
) -> torch.nn.Module:
    """The objective module of `stage`; `fast` and `cache` as in the module docstring
    (`cache` only for the stages that read frozen candidates: `retrieval`, `e2e`, and
    `instruct` with `frozen_compressor`), `negatives` one of `config.RETRIEVAL_NEGATIVES`:
    `RetrievalObjective` trains the query reasoner against a question's candidates or the
    whole document bank, `CompressorRetrievalObjective` ("queries", with `query_bank`) the
    compressor against every question."""
    if stage in ("compress", "instruct"):
        return CompressionObjective(
            model,
            mse_weight,
            encode_batch_size,
            fast=fast,
            frozen_compressor=frozen_compressor and stage == "instruct",
            cache=cache,
        )
    if stage == "e2e":
        return EndToEndObjective(model, encode_batch_size, fast=fast, cache=cache)
    if stage == "retrieval" and negatives == "queries":
        if query_bank is None or not fast:
            raise ValueError(
                "negatives='queries' trains the compressor against a QueryBank of the stage's "
                "questions: use the fast step (no --legacy-step)"
            )
        return CompressorRetrievalObjective(model, query_bank, encode_batch_size)
    if stage == "retrieval":
        return RetrievalObjective(
            model, encode_batch_size, fast=fast, cache=cache, negatives=negatives
        )
    raise ValueError(f"unknown stage {stage!r}")
