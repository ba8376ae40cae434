"""The demo's pieces on the tiny fixture model (the real command is in test_readme.py)."""

from __future__ import annotations

import io
import json
import re

import pytest

from clara_integrations.demo import DEFAULT_CORPUS, load_corpus, matches, run_demo


def _corpus(tmp_path, rows):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bundled_corpus_loads_with_deduplicated_passages():
    passages, questions = load_corpus(DEFAULT_CORPUS)
    assert len(questions) == 8 and all(q.answers for q in questions)
    assert len(passages) == len(set(passages)) == 75  # 80 candidates, 5 shared by two questions


def test_corpus_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="--corpus"):
        load_corpus(tmp_path / "missing.jsonl")
    bad = _corpus(
        tmp_path,
        [
            {"question": "q?", "answers": ["a"], "docs": [{"title": "t", "text": "x"}]},
            {"question": "no docs"},
        ],
    )
    with pytest.raises(ValueError, match=r"qa\.jsonl:2"):
        load_corpus(bad)


def test_matches_normalises_like_squad():
    assert matches("It was the Channel Islands.", ["Channel Islands"])
    assert not matches("Normandy", ["Channel Islands"])
    assert not matches("anything", [""])


def test_run_demo_on_the_tiny_model(tmp_path, e2e_model):
    docs = [{"title": f"T{i}", "text": f"Passage {i} says the answer is {i}."} for i in range(4)]
    corpus = _corpus(
        tmp_path,
        [
            {"question": "What is the answer?", "answers": ["2"], "docs": docs},
            {"question": "Which passage?", "answers": ["3"], "docs": docs[:2]},
        ],
    )
    out = io.StringIO()
    summary = run_demo(e2e_model, corpus=corpus, top_k=2, max_new_tokens=4, out=out)
    text = out.getvalue()
    assert summary["questions"] == 2
    assert summary["clara_context_tokens"] < summary["text_rag_context_tokens"]
    assert f"memory shape: (4, {e2e_model.n_mem}, {e2e_model.hidden_size})" in text
    assert len(re.findall(r"^  source \d: score", text, re.M)) == 4


def test_cli_version_and_info_errors(capsys):
    from clara_integrations import __version__
    from clara_integrations.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"clara {__version__}"
    assert main(["info", "/nonexistent"]) == 2  # a message, not a traceback
    assert "clara info: /nonexistent is not a CLaRa checkpoint" in capsys.readouterr().err
