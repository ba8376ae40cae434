"""The README's fine-tuning walkthrough runs end to end (on the tiny base model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_finetune_walkthrough_script(tmp_path, tiny_base, shared_dir):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CLARA_BASE": str(tiny_base),
        "CLARA_SHARED_DIR": str(shared_dir),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "my-clara"
    result = subprocess.run(
        ["bash", str(REPO / "examples" / "finetune_walkthrough.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "report.md").is_file() and (out.parent / "my-clara-e2e" / "report.md").is_file()
    assert (out / "config.json").is_file() and list((out / "data").glob("*.jsonl"))
