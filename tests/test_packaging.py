"""`pip install clara-integrations` then `clara demo` works outside the checkout: a wheel
built by `python -m build` carries the shipped checkpoint and the demo corpus."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT

_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_checkout(tmp_path):
    source = tmp_path / "src"  # build from a copy: building writes build/ and egg-info
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    [wheel] = (tmp_path / "dist").glob("clara_integrations-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "clara_integrations/assets/demo/demo_qa.jsonl" in names
    assert any(n.startswith("clara_integrations/assets/default/") for n in names)

    target = tmp_path / "site"  # the wheel alone; its dependencies come from this interpreter
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import clara_integrations as c; print(c.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))  # not the checkout's editable install
    out = subprocess.run(
        [str(target / "bin" / "clara"), "demo", "--questions", "1", "--max-new-tokens", "4"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"corpus {target}" in out.stdout and "demo_qa.jsonl: 75 passages" in out.stdout
    assert "done: 1 questions" in out.stdout
