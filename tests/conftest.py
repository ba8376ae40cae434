"""Shared pytest fixtures: paths to ../shared and tiny models loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLARA_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
FIXTURE = SHARED / "fixtures" / "clara-official-tiny"
TINY_BASE = FIXTURE / "tiny-llama-base"

# Models load on the CPU unless a test asks for a device: the parity references are CPU
# float32 values, and a GPU machine must give the same results as CI. Tests marked `gpu`
# pass device="cuda" themselves; training still uses whatever Accelerate picks.
os.environ.setdefault("CLARA_DEVICE", "cpu")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.fail(f"parity fixture not found at {FIXTURE}; set CLARA_SHARED_DIR")
    return FIXTURE


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def e2e_model(fixture_dir):
    """The fixture's end-to-end checkpoint (three adapters), float32, eval mode."""
    import torch

    from clara_integrations import ClaraModel

    return ClaraModel.from_pretrained(
        fixture_dir / "ckpt-e2e", base_model=TINY_BASE, dtype=torch.float32
    )


@pytest.fixture(scope="session")
def instruct_model(fixture_dir):
    import torch

    from clara_integrations import ClaraModel

    return ClaraModel.from_pretrained(
        fixture_dir / "ckpt-instruct", base_model=TINY_BASE, dtype=torch.float32
    )
