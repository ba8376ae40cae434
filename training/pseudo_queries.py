"""Label-free retrieval examples from a document collection (Contriever-style cropping).

A user's private documents come without questions. A span cut from a document is a
pseudo-query whose positive is that document (Contriever, Izacard et al. 2022: random
cropping beat the Inverse Cloze Task as a label-free pair); the other candidates are the
collection's BM25 best matches for the span, so the query reasoner has to do better than
word overlap among them. The rows are the reference's JSONL layout for the `retrieval`
stage (`question`, `docs`, `pos_index`), inspectable beside the run.

Spans are taken from the first `window_words` words only: a compressor reads the first
`doc_max_length` tokens of a document, and a span from past that point would teach the
query reasoner to find text the memory does not hold.

Titled documents give a second kind of pair (`title_query_rows`): a short query naming
two documents' titles, whose positives are both. Multi-hop questions name the entities
whose pages answer them (in the shared HotpotQA/2Wiki sets about half of the gold
passages' titles occur in their question, against 4-5 % of the distractors'): this
teaches memory to carry the name it is about, which word overlap (BM25) gets for free.

Example:
    >>> docs = ["The cat sat on the mat all day long.", "Dogs bark at the mailman every day."]
    >>> rows = pseudo_query_rows(docs, per_doc=1, n_candidates=2, min_words=3, max_words=4)
    >>> [row["docs"][row["pos_index"][0]] == docs[i] for i, row in enumerate(rows)]
    [True, True]
    >>> all(len(row["question"].split()) in (3, 4) for row in rows)
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from clara_integrations.pipeline.bm25 import BM25

__all__ = ["crop", "pseudo_query_rows", "retrieval_rows", "title_query_rows"]


def crop(
    text: str, rng: random.Random, min_words: int, max_words: int, window_words: int
) -> str | None:
    """A random span of `min_words`-`max_words` words from the first `window_words`
    words of `text`, or None when the text is shorter than `min_words` words."""
    words = text.split()[:window_words]
    if len(words) < min_words:
        return None
    length = rng.randint(min_words, min(max_words, len(words)))
    start = rng.randint(0, len(words) - length)
    return " ".join(words[start : start + length])


def retrieval_rows(
    pairs: Sequence[tuple[str, str]],
    documents: Sequence[str],
    n_candidates: int = 9,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Retrieval rows for (query, positive document) pairs: the positive and the
    `n_candidates - 1` best BM25 matches for the query among the other `documents` (filled
    at random when fewer share a term), the positive at a random position.

    Returns:
        rows ``{"data_type": "qa", "question", "answer": "", "docs", "pos_index": [i]}``.
    """
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    docs = list(dict.fromkeys(d for d in documents if d.strip()))
    where_doc = {d: i for i, d in enumerate(docs)}
    flat = [" ".join(d.split()).lower() for d in docs]
    index = BM25(docs)
    rng = random.Random(seed)
    rows = []
    for query, positive in pairs:
        exclude = frozenset({where_doc[positive]}) if positive in where_doc else frozenset()
        # A document holding the query word for word is another positive, not a negative.
        words = " ".join(query.split()).lower()
        picked = index.top(
            query, n_candidates - 1, exclude, keep=lambda j, w=words: w not in flat[j]
        )
        if len(picked) < n_candidates - 1:
            taken = set(picked) | exclude | {j for j in range(len(docs)) if words in flat[j]}
            others = [j for j in range(len(docs)) if j not in taken]
            picked += rng.sample(others, min(len(others), n_candidates - 1 - len(picked)))
        negatives = [docs[j] for j in picked]
        at = rng.randint(0, len(negatives))
        rows.append(
            {
                "data_type": "qa",
                "question": query,
                "answer": "",
                "docs": negatives[:at] + [positive] + negatives[at:],
                "pos_index": [at],
            }
        )
    return rows


def pseudo_query_rows(
    documents: Sequence[str],
    per_doc: int = 1,
    n_candidates: int = 9,
    min_words: int = 6,
    max_words: int = 20,
    window_words: int = 160,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`per_doc` cropped pseudo-queries per distinct document, as `retrieval_rows` with
    BM25 negatives from the same collection. Deterministic for a given `seed`."""
    docs = list(dict.fromkeys(d for d in documents if d.strip()))
    rng = random.Random(seed)
    pairs = []
    for doc in docs:
        for _ in range(per_doc):
            query = crop(doc, rng, min_words, max_words, window_words)
            if query is not None:
                pairs.append((query, doc))
    return retrieval_rows(pairs, docs, n_candidates, seed)


#: Query shapes for two titles (one row each, chosen at random): question-like, so that
#: the query reasoner sees the kind of text it reads at inference.
TITLE_PAIR_TEMPLATES = (
    "{a} and {b}",
    "Which came first, {a} or {b}?",
    "What do {a} and {b} have in common?",
    "How is {a} related to {b}?",
    "{a} or {b}: which one is older?",
)


def title_query_rows(
    groups: Sequence[Sequence[tuple[str, str]]], per_group: int = 1, seed: int = 0
) -> list[dict[str, Any]]:
    """`per_group` rows per group of related titled documents ((title, text) pairs, e.g.
    one question's candidates): a query naming two of the group's titles, both documents
    positive, the rest of the group the candidates. Groups with fewer than three distinct
    titles are skipped (no negative left). Deterministic for a given `seed`.

    Returns:
        rows ``{"data_type": "qa", "question", "answer": "", "docs", "pos_index": [i, j]}``.

    Example:
        >>> group = [("Paris", "Paris is..."), ("Lyon", "Lyon is..."), ("Nice", "Nice is...")]
        >>> row = title_query_rows([group], seed=1)[0]
        >>> sorted(row["docs"][i].split(chr(10))[0] for i in row["pos_index"]) == sorted(
        ...     t for t in ("Paris", "Lyon", "Nice") if t in row["question"])
        True
    """
    rng = random.Random(seed)
    rows = []
    for group in groups:
        seen: dict[str, str] = {}
        for title, text in group:
            if title.strip() and title not in seen:
                seen[title] = text
        titles = list(seen)
        if len(titles) < 3:
            continue
        docs = [f"{t}\n{seen[t]}" for t in titles]
        for _ in range(per_group):
            a, b = rng.sample(range(len(titles)), 2)
            template = rng.choice(TITLE_PAIR_TEMPLATES)
            rows.append(
                {
                    "data_type": "qa",
                    "question": template.format(a=titles[a], b=titles[b]),
                    "answer": "",
                    "docs": list(docs),
                    "pos_index": sorted((a, b)),
                }
            )
    return rows
