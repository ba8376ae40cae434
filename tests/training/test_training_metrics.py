"""Answer and retrieval metrics (spec §8)."""

from __future__ import annotations

import pytest

from training.metrics import (
    answer_scores,
    coverage,
    exact_match,
    f1_score,
    normalize_answer,
    retrieval_scores,
)


def test_normalisation():
    assert normalize_answer("The  Cat, a dog!") == "cat dog"
    assert normalize_answer("True") == "yes" and normalize_answer("true") == "true"


def test_em_f1_acc():
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert f1_score("Eiffel tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("no", "yes") == 0.0 and f1_score("yes it is", "yes") == 0.0
    assert coverage("it is the Eiffel tower", "Eiffel Tower") == 1.0
    scores = answer_scores(["paris", "rome"], [["London", "Paris"], ["Milan"]])
    assert scores["em"] == 0.5 and scores["acc"] == 0.5


def test_recall_counts_items_without_gold_as_zero():
    out = retrieval_scores([[1, 0, 2], [0, 1, 2]], [[0, 2], []], ks=(1, 3))
    assert out["recall@1"] == 0.0
    assert out["recall@3"] == pytest.approx(0.5)  # (2/2 + 0) / 2 items
    assert out["precision@3"] == pytest.approx((2 / 3) / 2)
