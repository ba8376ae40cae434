"""README promises: it opens with the two set-up commands, its Python examples run, and
the main command works."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_exactly_the_two_commands():
    first = _blocks("bash")[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert README.index("```bash") < README.index("**CLaRa**")
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "$(BIN)/python -m clara_integrations demo" in makefile
    assert "$(BIN)/python -m pytest" in makefile
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    namespace: dict = {}
    for i, block in enumerate(_blocks("python")):
        code = block.replace("/tmp/", f"{tmp_path}/")
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102


@pytest.mark.slow
def test_main_command_answers_the_bundled_questions_from_memory():
    """`make demo`'s command: shipped checkpoint, LlamaIndex query engine, bundled corpus."""
    out = subprocess.run(
        [sys.executable, "-m", "clara_integrations", "demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "memory shape: (75, 8, 576)" in out
    blocks = re.split(r"\nQ\d+: ", out)[1:]
    assert len(blocks) == 8
    for block in blocks:
        assert re.search(r"^  answer: +'.+'", block, re.M), block
        scores = [float(x) for x in re.findall(r"^  source \d: score (-?[\d.]+)", block, re.M)]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True), block
        clara, text = map(
            int, re.search(r"generator context: (\d+) tokens \(text RAG: (\d+)", block).groups()
        )
        assert clara < text / 3, block  # 8 vectors per passage instead of its ~100+ tokens
        assert re.search(r"time \d+\.\d\d s", block)
    assert re.search(
        r"done: 8 questions, mean generator context \d+ tokens vs \d+ for text RAG", out
    )
