"""examples/langchain_runnable.py runs on the tiny fixture and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langchain_runnable.py"


def test_example_runs_on_the_fixture(fixture_dir, reference):
    env = {**os.environ, "CLARA_SHARED_DIR": str(fixture_dir.parents[1])}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "stored 5 documents as 4 memory vectors each (H=64)" in out
    for i, question in enumerate(reference["questions"]):
        block = out.split(f"question: {question}\n", 1)[1]
        lines = block.splitlines()
        assert [line.split()[1] for line in lines[:2]] == [
            f"doc{j}" for j in reference["e2e.topk_idx"][i]
        ]
        assert lines[2] == f"  answer: {reference['e2e.generate_from_questions'][i]!r}"
    assert "streamed answer in" in out and "reranked best: doc3" in out
