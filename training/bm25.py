"""Okapi BM25 over a small corpus, for mining hard negatives (no extra dependency).

A private document folder is thousands of chunks at most, so a dictionary-based inverted
index is fast enough and keeps the package free of a search-engine dependency.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["BM25", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was "
    "were what when where which who why will with how does do did".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words without the commonest English function words."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class BM25:
    """Rank `documents` for a query with Okapi BM25 (k1 = 1.5, b = 0.75).

    Example:
        >>> index = BM25(["the cat sat", "dogs bark loudly", "a cat and a dog"])
        >>> index.top("cat", 2)
        [0, 2]
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.term_freqs = [Counter(tokenize(d)) for d in documents]
        self.lengths = [sum(tf.values()) for tf in self.term_freqs]
        self.avg_len = sum(self.lengths) / max(len(self.lengths), 1) or 1.0
        self.postings: dict[str, list[int]] = {}
        for i, tf in enumerate(self.term_freqs):
            for term in tf:
                self.postings.setdefault(term, []).append(i)
        n = len(documents)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5))
                    for t, p in self.postings.items()}

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score of every document sharing a term with `query`."""
        out: dict[int, float] = {}
        for term in set(tokenize(query)):
            for i in self.postings.get(term, ()):
                tf = self.term_freqs[i][term]
                norm = tf + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg_len)
                out[i] = out.get(i, 0.0) + self.idf[term] * tf * (self.k1 + 1) / norm
        return out

    def top(self, query: str, n: int, exclude: frozenset[int] = frozenset()) -> list[int]:
        """Indices of the `n` best documents (ties: lower index first)."""
        ranked = sorted(self.scores(query).items(), key=lambda kv: (-kv[1], kv[0]))
        return [i for i, _ in ranked if i not in exclude][:n]
