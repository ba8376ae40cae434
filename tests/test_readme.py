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
def test_main_command_prints_memory_shape_and_ratio():
    out = subprocess.run([sys.executable, "-m", "clara_integrations", "demo"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    assert "memory shape: (3, 8, 576)" in out
    assert re.search(r"document 0: \d+ tokens -> 8 memory vectors \(compression ratio [\d.]+x\)", out)
