"""The questions of a retrieval stage as fixed query vectors, for training the compressor.

`--retrieval-negatives queries` turns the retrieval stage around: the query reasoner is
frozen and the *compressor* learns, so that a document's memory moves towards the
questions it answers and away from every other question of the stage. With the query
side frozen, each question's vector is a fixed function of its text: all of them are
computed once (no gradient, eval mode, as `MemoryCache` does for documents), and a
positive document competes for its questions against thousands of others for the price
of one matrix product. Unlike a bank of document memories under a compressor that is
being trained, nothing here goes stale. (No library keeps such a bank: a retrieval
trainer such as sentence-transformers encodes both sides per batch, which would cost the
compressor a forward and backward pass per negative here.)

Example:
    >>> bank = QueryBank(model)
    >>> bank.expect([("Where is Paris?", ["Paris is in France."])])
    >>> bank.fill()
    >>> tuple(bank.vectors.shape) == (1, model.n_mem * model.hidden_size)
    True
    >>> bank.positives_of(["Paris is in France."])
    [[0]]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import torch

from clara_integrations import ClaraModel
from clara_integrations.modeling.adapters import QUERY_ADAPTER

__all__ = ["QueryBank"]

logger = logging.getLogger(__name__)


class QueryBank:
    """Unit query vectors (M, n_mem * H) of a stage's distinct questions, in float32, and
    for each positive document text the rows of the questions it answers."""

    def __init__(self, model: ClaraModel, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self._rows: dict[str, int] = {}
        self._answers: dict[str, list[int]] = {}
        self.vectors: torch.Tensor | None = None

    def expect(self, pairs: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Register (question, its positive document texts) pairs; `fill` encodes them."""
        for question, positives in pairs:
            row = self._rows.setdefault(question, len(self._rows))
            for doc in positives:
                rows = self._answers.setdefault(doc, [])
                if row not in rows:
                    rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def fill(self) -> None:
        """Encode every registered question once (questions sorted, fixed batches: a run
        resumed after a kill computes the same vectors). A no-op once filled."""
        if self.vectors is not None:
            return
        if not self._rows:
            raise ValueError("QueryBank.fill: no questions registered (call expect first)")
        texts = sorted(self._rows)
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                vectors, _ = self.model.encode_texts(
                    texts, QUERY_ADAPTER, self.batch_size, show_progress=None, desc="questions"
                )
        finally:
            self.model.train(was_training)
        with torch.autocast(vectors.device.type, enabled=False):
            unit = torch.nn.functional.normalize(vectors.flatten(1).float(), dim=-1)
        order = torch.as_tensor([self._rows[t] for t in texts], device=unit.device)
        self.vectors = torch.empty_like(unit)
        self.vectors[order] = unit
        logger.info(
            "encoded %d distinct questions once for the stage (%.1f s)",
            len(texts),
            time.perf_counter() - started,
        )

    def rows(self, questions: Sequence[str]) -> torch.Tensor:
        """Row numbers (B,) of `questions` in `vectors`."""
        return torch.as_tensor([self._rows[q] for q in questions], dtype=torch.long)

    def positives_of(self, docs: Sequence[str]) -> list[list[int]]:
        """For each document text, the rows of the questions it is a positive of."""
        return [list(self._answers.get(d, ())) for d in docs]
