"""Turning examples into training batches (reference `make_collate_fn`, spec §5.3).

Decoder prompts are rendered with the verbatim reference prompts; labels mask the prompt
and the padding with -100, so the loss covers the assistant content and whatever the chat
template appends after it. Encoder rows stay as text: `ClaraModel.encode_texts` builds the
reference encoder layout itself.

The paraphrase template of a stage-1 row is drawn from an RNG seeded by the row's position
in the stage's schedule, not from the global `random` module, so a resumed run and a
multi-process run draw the same templates as an uninterrupted single-process run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from clara_integrations.modeling import prompts
from clara_integrations.modeling.layout import encoder_token_ids
from clara_integrations.modeling.tokens import SpecialTokens

from .data import DataError, Example

__all__ = ["IGNORE_INDEX", "Collator", "ScheduledDataset"]

IGNORE_INDEX = -100
# Length checks use the longest paraphrase template (the worst case of the random draw).
_LONGEST_TEMPLATE = max(
    range(len(prompts.PARAPHRASE_INSTRUCTIONS)),
    key=lambda i: len(prompts.PARAPHRASE_INSTRUCTIONS[i]),
)


class ScheduledDataset(torch.utils.data.Dataset):
    """A stage's examples in training order: item `i` is `(i, examples[order[i]])`."""

    def __init__(self, examples: Sequence[Example], order: Sequence[int]) -> None:
        self.examples = examples
        self.order = list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[int, Example]:
        return i, self.examples[self.order[i]]


@dataclass
class Collator:
    """Builds the batch dict of one stage from `(position, Example)` items.

    Keys: ``stage``, ``k``, ``enc_texts`` (B*k docs, example-major, stages 1-2) or
    ``questions`` + ``cand_texts`` (B*N) + ``n_cand`` (stages retrieval/e2e),
    ``dec_input_ids`` / ``dec_attention_mask`` / ``labels`` (B, T) (not for retrieval),
    ``pos_mask`` (B, N) (retrieval), ``n_tokens`` (encoder + decoder tokens, for tokens/s).
    """

    tokenizer: PreTrainedTokenizerBase
    special: SpecialTokens
    stage: str
    k: int
    max_len: int
    doc_max_length: int
    seed: int = 42
    frozen_compressor: bool = False  # instruct with `--instruct-compressor frozen`
    trains_compressor: bool = False  # retrieval with `--retrieval-negatives queries`

    def render(
        self, ex: Example, position: int, template_index: int | None = None
    ) -> tuple[str, str]:
        """(prompt, full text with target) of one example."""
        block = self.special.memory_block
        if self.stage == "compress" and ex.data_type == "paraphrase":
            rng = random.Random(f"{self.seed}:paraphrase:{position}")
            prompt, full = prompts.paraphrase_prompt(
                self.tokenizer,
                block,
                self.k,
                answer=ex.target,
                template_index=template_index,
                rng=rng,
            )
        elif self.stage == "compress":
            prompt, full = prompts.qa_pretraining_prompt(
                self.tokenizer, block, self.k, ex.questions, ex.targets
            )
        else:
            prompt, full = prompts.answer_prompt(
                self.tokenizer, block, self.k, ex.question, ex.target
            )
        assert full is not None
        return prompt, full

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check(self, ex: Example) -> int:
        """Decoder tokens of `ex` (worst-case paraphrase template).

        Raises:
            DataError: the prompt plus target do not fit `max_len`, or the target is empty
                after the prompt (the loss would have no token to learn from).
        """
        if self.stage == "retrieval":
            return self._n_tokens(ex.question)
        prompt, full = self.render(ex, 0, _LONGEST_TEMPLATE)
        n_full, n_prompt = self._n_tokens(full), self._n_tokens(prompt)
        if n_full > self.max_len:
            raise DataError(
                f"{ex.origin}: {n_full} decoder tokens, more than --max-len {self.max_len}; skipped"
            )
        if n_full <= n_prompt:
            raise DataError(f"{ex.origin}: empty target")
        return n_full

    def label_tokens(self, ex: Example, position: int) -> int:
        """Target tokens of `ex` at schedule `position` (what its next-token loss averages
        over; 0 for retrieval). Matches the labels of `__call__`."""
        if self.stage == "retrieval":
            return 0
        prompt, full = self.render(ex, position)
        return max(min(self._n_tokens(full), self.max_len) - self._n_tokens(prompt), 0)

    def grad_tokens(self, ex: Example) -> int:
        """Tokens of `ex` that the fast step runs with gradient: documents and decoder
        (stages 1-2; decoder only when the compressor is frozen), question and decoder
        (e2e; candidates come from the memory cache), question (retrieval), positive
        documents (retrieval training the compressor). For micro-batch sizing and length
        bucketing."""
        if self.trains_compressor:
            return self.encoder_tokens([ex.docs[i] for i in ex.pos_index])
        if self.frozen_compressor:
            return self.check(ex)
        if self.stage in ("compress", "instruct"):
            return self.encoder_tokens(ex.docs) + self.check(ex)
        question = self.encoder_tokens([ex.question])
        return question if self.stage == "retrieval" else question + self.check(ex)

    def encoder_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the compressor/query reasoner reads for `texts` (reference layout)."""
        rows = encoder_token_ids(self.tokenizer, self.special, texts, self.doc_max_length)
        return sum(len(r) for r in rows) + len(rows) * len(self.special.mem_token_ids)

    def _decoder_batch(self, items: Sequence[tuple[int, Example]]) -> dict[str, torch.Tensor]:
        rendered = [self.render(ex, pos) for pos, ex in items]
        enc = self.tokenizer(
            [full for _, full in rendered],
            add_special_tokens=False,
            padding="longest",
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T), left padded
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        for row, (prompt, _) in enumerate(rendered):
            first = int(mask[row].argmax())  # first attended position
            labels[row, : first + self._n_tokens(prompt)] = IGNORE_INDEX
        return {"dec_input_ids": ids, "dec_attention_mask": mask, "labels": labels}

    def __call__(self, items: Sequence[tuple[int, Example]]) -> dict[str, Any]:
        examples = [ex for _, ex in items]
        batch: dict[str, Any] = {
            "stage": self.stage,
            "k": self.k,
            "positions": [pos for pos, _ in items],
        }
        if self.stage in ("compress", "instruct"):
            batch["enc_texts"] = [d for ex in examples for d in ex.docs]
            enc_tokens = self.encoder_tokens(batch["enc_texts"])
        else:
            n = len(examples[0].docs)
            if any(len(ex.docs) != n for ex in examples):
                raise ValueError(
                    "every example of a micro-batch needs the same number of candidates"
                )
            batch["questions"] = [ex.question for ex in examples]
            batch["cand_texts"] = [d for ex in examples for d in ex.docs]
            batch["n_cand"] = n
            enc_tokens = self.encoder_tokens(batch["cand_texts"]) + self.encoder_tokens(
                batch["questions"]
            )
        if self.stage == "retrieval":
            pos_mask = torch.zeros(len(examples), batch["n_cand"], dtype=torch.bool)
            for row, ex in enumerate(examples):
                pos_mask[row, list(ex.pos_index)] = True
            batch["pos_mask"] = pos_mask
            batch["n_tokens"] = torch.tensor(enc_tokens)
            return batch
        batch.update(self._decoder_batch(items))
        batch["n_tokens"] = torch.tensor(enc_tokens + int(batch["dec_attention_mask"].sum()))
        return batch
