"""Answer and retrieval metrics of the reference evaluation (spec §8).

Answers are normalised SQuAD-style: ``"True"``/``"False"`` → ``yes``/``no``, lower case,
ASCII punctuation removed, articles removed, whitespace collapsed. With several reference
answers an item scores its best match (the reference uses only the first; taking the max
is the usual multi-answer convention and a documented extension).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from clara_integrations.answers import normalize_answer

__all__ = [
    "answer_scores",
    "coverage",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "retrieval_scores",
]


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1; 0 when a yes/no/noanswer answer differs from the other side."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    special = {"yes", "no", "noanswer"}
    if (pred in special or ref in special) and pred != ref:
        return 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    common = Counter(pred_tokens) & Counter(ref_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def coverage(prediction: str, gold: str) -> float:
    """Reference `acc`: every gold token occurs among the prediction's tokens."""
    pred = set(normalize_answer(prediction).split())
    return float(all(t in pred for t in normalize_answer(gold).split()))


def answer_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM, F1, acc (coverage) and output length over items (best gold per item)."""
    if not predictions:
        return {}
    n = len(predictions)
    return {
        "em": sum(max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, answers)) / n,
        "f1": sum(max(f1_score(p, g) for g in gs) for p, gs in zip(predictions, answers)) / n,
        "acc": sum(max(coverage(p, g) for g in gs) for p, gs in zip(predictions, answers)) / n,
        "avg_output_length": sum(len(p.split()) for p in predictions) / n,
    }


def retrieval_scores(
    rankings: Sequence[Sequence[int]],
    positives: Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 3, 5),
) -> dict[str, float]:
    """recall@k = |top-k ∩ gold| / |gold| and precision@k, averaged over *all* items
    (an item without gold counts 0, as the reference's evaluation script).

    Example:
        >>> retrieval_scores([[2, 0, 1]], [[0]], ks=(1, 3))
        {'recall@1': 0.0, 'precision@1': 0.0, 'recall@3': 1.0, 'precision@3': 0.3333333333333333}
    """
    out: dict[str, float] = {}
    n = max(len(rankings), 1)
    for k in ks:
        hits = [len(set(r[:k]) & set(p)) for r, p in zip(rankings, positives)]
        out[f"recall@{k}"] = sum(h / len(p) for h, p in zip(hits, positives) if p) / n
        out[f"precision@{k}"] = sum(h / k for h in hits) / n
    return out
