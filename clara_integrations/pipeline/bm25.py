"""Okapi BM25 through ``bm25s``: the lexical side of hybrid retrieval, hard negatives for
training data, and the benchmarks' lexical baseline - one implementation for all three.

Example:
    >>> index = BM25(["the cat sat", "dogs bark loudly", "a cat and a dog"])
    >>> index.top("cat", 2)
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import bm25s
import numpy as np

__all__ = ["BM25"]

_STOPWORDS = "en"


class BM25:
    """Rank `documents` for a query with Okapi BM25 (k1 = 1.5, b = 0.75, English stopwords)."""

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.n_documents = len(documents)
        self._retriever = bm25s.BM25(k1=k1, b=b)
        if documents:
            self._retriever.index(self._tokenize(list(documents)), show_progress=False)

    def _tokenize(self, texts: list[str]):
        return bm25s.tokenize(texts, stopwords=_STOPWORDS, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query`, ``[n_documents]`` float32."""
        tokens = bm25s.tokenize(
            [query], stopwords=_STOPWORDS, return_ids=False, show_progress=False
        )[0]
        if not tokens or not self.n_documents:
            return np.zeros(self.n_documents, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(tokens), dtype=np.float32)

    def ranking(self, query: str) -> list[int]:
        """Every document's index, best first (ties: lower index first)."""
        return np.argsort(-self.scores(query), kind="stable").tolist()

    def top(
        self,
        query: str,
        n: int,
        exclude: frozenset[int] = frozenset(),
        keep: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """Indices of the `n` best documents that share a term with `query`, leaving out
        `exclude` and those for which `keep` is false (scored once)."""
        scores = self.scores(query)
        out = []
        for i in np.argsort(-scores, kind="stable").tolist():
            if scores[i] <= 0 or len(out) == n:
                break
            if i not in exclude and (keep is None or keep(i)):
                out.append(i)
        return out
