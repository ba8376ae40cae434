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
    subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_benchmark_commands_write_results(tmp_path):
    _run(["benchmarks.compress_throughput", "--documents", "16", "--repeats", "1"], tmp_path)
    assert json.loads((tmp_path / "compress_throughput.json").read_text())["max_abs_diff"] <= 1e-4
    _run(["benchmarks.answer_latency", "--questions", "1", "--repeats", "1"], tmp_path)
    latency = json.loads((tmp_path / "answer_latency.json").read_text())
    assert latency["clara"]["prefill"] < latency["text_rag"]["prefill"]
    _run(["benchmarks.retrieval_quality", "--questions", "2",
          "--checkpoint", f"fixture={FIXTURE / 'ckpt-e2e'}"], tmp_path)
    quality = json.loads((tmp_path / "retrieval_quality.json").read_text())
    assert set(quality["squad"]) == {"fixture", "bm25", "minilm"}
    _run(["benchmarks.store_scale", "--n", "2000", "--dir", str(tmp_path / "store")], tmp_path)
    _run(["benchmarks.run", "--render-only"], tmp_path)
    assert "## Store scale" in (tmp_path / "BENCHMARKS.md").read_text()
