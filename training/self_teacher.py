"""Self-distillation teacher (PISCO-style): the run's own base model reading the text.

The student is the generator reading a chunk's *memory*; the teacher is the same base
model, without adapters, reading the chunk's *text* with the answer prompt the package
uses for text RAG (`prompts.text_rag_prompt`). Training on the teacher's answers teaches
the generator to answer from memory what the base model answers from text.

Questions come from the offline teacher's cloze sentences, not from the base model: a
135M model asked to write question-answer pairs returns loops and fragments (measured on
SmolLM2-135M-Instruct), whereas cloze sentences are exact and cheap. The cloze span is
also a check on the teacher (round-trip consistency, as in synthetic-QA filtering): its
answer is kept when it contains the span, and the span itself is the target otherwise,
so a wrong teacher answer never becomes a label. Paraphrase targets are the chunk text
(reconstruction): a small model's paraphrases drop names and numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tqdm.auto import tqdm

from clara_integrations.answers import normalize_answer
from clara_integrations.modeling import prompts

from .teachers import OfflineTeacher, clean_markdown, load_causal_lm

__all__ = ["SelfTeacher"]

logger = logging.getLogger(__name__)

# A reply longer than the span by more than this many words rambles: the span is kept.
MAX_EXTRA_WORDS = 4


class SelfTeacher:
    """The base model answers each cloze question from the chunk's text.

    `prepare(texts, n)` answers every chunk's questions in length-sorted, left-padded
    batches, and `qa_pairs` then reads them. On this project's 2-thread CPU that is ~1 s
    per question for SmolLM2-135M at 16 new tokens in float32 (bf16 weights generated 3-4x
    slower there, batches of 48 slower than of 24).

    Attributes:
        asked: questions put to the teacher.
        agreed: of those, answers kept because they contain the cloze span.
    """

    def __init__(
        self,
        model_name: str,
        device: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 16,
        allow_network: bool | None = None,
        show_progress: bool = True,
    ) -> None:
        self.name = f"self:{model_name}"
        self.model, self.tokenizer, self.device = load_causal_lm(model_name, device, allow_network)
        self.tokenizer.padding_side = "left"  # generation continues every row at its end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.show_progress = show_progress
        self._cloze = OfflineTeacher()
        self._prepared: dict[tuple[str, int], list[tuple[str, str]]] = {}
        self.asked = self.agreed = 0

    def answer(self, questions: Sequence[str], texts: Sequence[str]) -> list[str]:
        """Greedy answers of the base model to `questions[i]` reading `texts[i]`."""
        import torch  # noqa: PLC0415

        prompts_ = [
            prompts.text_rag_prompt(self.tokenizer, q, [t]) for q, t in zip(questions, texts)
        ]
        order = sorted(range(len(prompts_)), key=lambda i: len(prompts_[i]))
        replies = [""] * len(prompts_)
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(
            batches, desc="self teacher", unit="batch", disable=not self.show_progress
        ):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [prompts_[i] for i in idx],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(self.device)
            with torch.no_grad():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, text in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                replies[i] = text.strip()
        return replies

    def prepare(self, texts: Sequence[str], n: int) -> None:
        """Answer the `n` cloze questions of every text in batches; logs the agreement."""
        jobs = [(t, self._cloze.qa_pairs(t, n)) for t in dict.fromkeys(texts)]
        flat = [(t, q, span) for t, pairs in jobs for q, span in pairs]
        replies = self.answer([q for _, q, _ in flat], [t for t, _, _ in flat])
        it = iter(replies)
        for text, pairs in jobs:
            self._prepared[(text, n)] = [(q, self._target(span, next(it))) for q, span in pairs]
        if flat:
            logger.info(
                "self teacher (%s): %d of %d answers contain the cloze span and are kept; "
                "the span is the target for the other %d",
                self.name,
                self.agreed,
                self.asked,
                self.asked - self.agreed,
            )

    def _target(self, span: str, reply: str) -> str:
        self.asked += 1
        reply = reply.splitlines()[0].strip() if reply else ""
        wanted = normalize_answer(span)
        if (
            wanted
            and len(reply.split()) <= len(span.split()) + MAX_EXTRA_WORDS
            and wanted in normalize_answer(reply)
        ):
            self.agreed += 1
            return reply
        return span

    def stats(self) -> dict[str, int]:
        """Questions asked and answers kept (written into the synthesis manifest)."""
        return {"asked": self.asked, "agreed": self.agreed}

    def qa_pairs(self, text: str, n: int) -> list[tuple[str, str]]:
        if (text, n) not in self._prepared:
            self.prepare([text], n)
        return self._prepared[(text, n)]

    def paraphrase(self, text: str) -> str:
        return clean_markdown(text)
