"""The README's benchmark commands run (tiny sizes, results into a temporary folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FIXTURE, REPO_ROOT


def _run(args, results):
    env = {**os.environ, "CLARA_BENCH_RESULTS": str(results)}
    subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_benchmark_commands_write_results(tmp_path):
    _run(["benchmarks.compress_throughput", "--documents", "16", "--repeats", "1"], tmp_path)
    assert json.loads((tmp_path / "compress_throughput.json").read_text())["max_abs_diff"] <= 1e-4
    _run(["benchmarks.answer_latency", "--questions", "1", "--repeats", "1"], tmp_path)
    latency = json.loads((tmp_path / "answer_latency.json").read_text())
    assert latency["clara"]["prefill"] < latency["text_rag"]["prefill"]
    _run(
        [
            "benchmarks.retrieval_quality",
            "--questions",
            "2",
            "--checkpoint",
            f"fixture={FIXTURE / 'ckpt-e2e'}",
            "--e2e-steps",
            "1",
            "--e2e-base",
            str(FIXTURE / "tiny-llama-base"),
        ],
        tmp_path,
    )
    quality = json.loads((tmp_path / "retrieval_quality.json").read_text())
    assert set(quality["squad"]) == {"fixture", "fixture+e2e1", "bm25", "minilm", "fixture+bm25"}
    _run(
        [
            "benchmarks.answer_quality",
            "--questions",
            "1",
            "--checkpoint",
            str(FIXTURE / "ckpt-e2e"),
            "--compare",
            str(FIXTURE / "ckpt-e2e"),
        ],
        tmp_path,
    )
    answers = json.loads((tmp_path / "answer_quality.json").read_text())
    for setting in ("gold", "retrieved"):
        scores = answers["sets"]["nq"][setting]
        assert 0.0 <= scores["clara"]["f1"] <= 1.0 and 0.0 <= scores["text_rag"]["f1"] <= 1.0
        assert all(0.0 <= scores[w]["acc"] <= 1.0 for w in ("before", "clara", "text_rag"))
    _run(["benchmarks.store_scale", "--n", "2000", "--dir", str(tmp_path / "store")], tmp_path)
    milvus_args = ["--backend", "milvus", "--n", "300", "--queries", "5", "--chunk", "100"]
    _run(["benchmarks.store_scale", *milvus_args, "--dir", str(tmp_path / "m")], tmp_path)
    milvus = json.loads((tmp_path / "store_scale_milvus.json").read_text())
    assert milvus["milvus_flat"]["recall_at_10"] == 1.0  # exact index, exact re-scoring
    assert all(milvus[k]["insert_docs_per_s"] > 0 for k in ("memory_store", "milvus_hnsw"))
    _run(["benchmarks.training_throughput", "--bases", "tiny", "--quick"], tmp_path)
    throughput = json.loads((tmp_path / "training_throughput.json").read_text())["bases"]["tiny"][
        "stages"
    ]
    assert set(throughput) == {"compress", "instruct", "retrieval", "e2e"}
    assert all(
        v[path]["s_per_step"] > 0 and v[path]["tokens_per_s"] > 0 and v["speedup"] > 0
        for v in throughput.values()
        for path in ("legacy", "fast")
    )
    tiny = ["--model", str(FIXTURE / "ckpt-e2e"), "--base-model", str(FIXTURE / "tiny-llama-base")]
    _run(
        ["benchmarks.ray_compress", "--n", "8", "--batch-size", "4", "--workers", "1", *tiny],
        tmp_path,
    )
    ray_runs = json.loads((tmp_path / "ray_compress.json").read_text())
    assert ray_runs["max_abs_diff"] <= 1e-4 and ray_runs["ray"]["1"]["docs_per_s"] > 0
    _run(["benchmarks.run", "--render-only"], tmp_path)
    rendered = (tmp_path / "BENCHMARKS.md").read_text()
    for section in (
        "## Compression throughput",
        "## Answer latency",
        "## Retrieval quality",
        "## Answer quality",
        "## Store scale",
        "## Store scale on Milvus Lite",
        "## Training throughput",
        "## Compression through Ray Data",
    ):
        assert section in rendered
    for chart in (
        "compress_throughput",
        "answer_latency",
        "retrieval_quality",
        "answer_quality",
        "training_throughput",
    ):
        assert (tmp_path / f"{chart}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"]({chart}.png)" in rendered


@pytest.mark.slow
def test_finetune_gain_trains_on_plain_documents_and_measures_before_and_after(tmp_path):
    work = tmp_path / "fg"
    _run(
        [
            "benchmarks.finetune_gain",
            "--workdir",
            str(work),
            "--init-from",
            str(FIXTURE / "ckpt-e2e"),
            "--base",
            str(FIXTURE / "tiny-llama-base"),
            "--documents",
            "24",
            "--minutes",
            "0.01",
            "--questions",
            "6",
            "--answer-questions",
            "2",
        ],
        tmp_path,
    )
    result = json.loads((tmp_path / "finetune_gain.json").read_text())
    assert set(result["retrieval"]) == {"before", "run1", "run2", "bm25"}
    assert all(0.0 <= r["recall@5"] <= 1.0 for r in result["retrieval"].values())
    answers = result["answers_gold_k5"]
    assert {"before", "run1", "run2", "text_rag"} <= set(answers)
    assert result["synthesis"]["teacher"].startswith("self:")
    assert result["synthesis"]["teacher_stats"]["asked"] > 0
    assert result["questions"] == 6 and result["answer_questions"] == 2
    # The corpus is plain text: no question, answer or label reaches training.
    lines = (work / "corpus" / "documents.jsonl").read_text().splitlines()
    assert len(lines) == 24 and all(set(json.loads(line)) == {"text"} for line in lines)
    # --minutes 0.01 gives each stage a budget of 0: every stage stops after one step.
    for run, stages in (("run1", ["instruct", "retrieval"]), ("run2", ["e2e"])):
        log = [json.loads(line) for line in (work / run / "training_log.jsonl").open()]
        assert [r["stage"] for r in log] == stages


def test_hybrid_ranker_is_the_fusion_of_clara_and_bm25(e2e_model):
    from benchmarks.retrieval_quality import hybrid_ranker, model_ranker
    from clara_integrations.pipeline import reciprocal_rank_fusion
    from clara_integrations.pipeline.bm25 import BM25

    docs = ["red apples grow", "green pears fall", "blue cars drive", "red cars stop"]
    for question in ("red cars", "green apples", "what falls"):
        dense = [str(i) for i in model_ranker(e2e_model)(question, docs)]
        scores = BM25(docs).scores(question)
        lexical = [str(i) for i in BM25(docs).ranking(question) if scores[i] > 0]
        fused = [int(i) for i, _ in reciprocal_rank_fusion([dense, lexical])]
        assert hybrid_ranker(e2e_model)(question, docs) == fused[:5]
