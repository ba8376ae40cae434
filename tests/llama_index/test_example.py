"""The example script runs on the fixture model and prints the reference's retrievals."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT, TINY_BASE

EXAMPLE = REPO_ROOT / "examples" / "llama_index_query_engine.py"
LINE = re.compile(
    r"^\[(?P<section>[\w-]+)\] q(?P<j>\d+) sources=(?P<sources>\S+) answer=(?P<answer>.*)$"
)


def example_module():
    spec = importlib.util.spec_from_file_location("llama_index_query_engine_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_and_retrieves_like_the_model(e2e_model, fixture_dir):
    example = example_module()
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--checkpoint",
            str(fixture_dir / "ckpt-e2e"),
            "--base-model",
            str(TINY_BASE),
            "--max-new-tokens",
            "8",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    results = [m.groupdict() for m in map(LINE.match, out.splitlines()) if m]
    # What the model's own reference path (generate_from_questions) does with these docs.
    answers, topk = e2e_model.generate_from_questions(
        example.QUESTIONS, documents=[example.DOCS] * len(example.QUESTIONS), max_new_tokens=8
    )
    sections = ("store", "stream", "index", "simple", "text-llm")
    assert sorted({r["section"] for r in results}) == sorted(sections)
    for r in results:
        j = int(r["j"])
        assert r["sources"].split(",") == [f"doc-{i}" for i in topk[j].tolist()], r
        if r["section"] != "text-llm":
            assert r["answer"] == repr(answers[j]), r
    assert len(results) == len(sections) * len(example.QUESTIONS)
    assert "prefill=" in out
