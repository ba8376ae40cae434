"""`python -m training.evaluate` on the fixture's end-to-end checkpoint."""

from __future__ import annotations

import json

from training.data import load_examples
from training.evaluate import evaluate_model, main


def test_rankings_agree_with_generate_from_questions(e2e_model, tiny_data):
    examples = load_examples([tiny_data["eval"]]).examples
    metrics, records = evaluate_model(
        e2e_model, examples, k=2, max_new_tokens=4, show_progress=False
    )
    _, topk = e2e_model.generate_from_questions(
        [ex.question for ex in examples],
        documents=[list(ex.docs) for ex in examples],
        k=2,
        max_new_tokens=1,
    )
    assert [r["topk_idx"] for r in records] == topk.tolist()
    assert metrics["n"] == 2 and metrics["query_adapter"] == "query_reasoner_adapter"
    for key in ("recall@1", "recall@3", "recall@5", "em", "f1", "acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["recall@5"] >= metrics["recall@3"] >= metrics["recall@1"]
    assert metrics["compression_ratio"] > 1.0


def test_cli_writes_metrics_and_predictions(fixture_dir, tiny_data, tmp_path, capsys):
    code = main(
        [
            "--model",
            str(fixture_dir / "ckpt-e2e"),
            "--base",
            str(fixture_dir / "tiny-llama-base"),
            "--data",
            str(tiny_data["eval"]),
            "--max-new-tokens",
            "2",
            "--quiet",
            "--json",
            str(tmp_path / "m.json"),
            "--output",
            str(tmp_path / "p.jsonl"),
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"recall@1", "recall@3", "recall@5", "em", "f1", "compression_ratio"} <= set(metrics)
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    assert "recall@1" in capsys.readouterr().out
