"""The training package's public names are explicit and importable (their order is ruff's
RUF022, run by `make lint`)."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "checkpoint",
    "collate",
    "data",
    "evaluate",
    "finetune",
    "loop",
    "losses",
    "metrics",
    "pipeline",
    "report",
    "stages",
    "synthesize",
    "teachers",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_resolves(name):
    module = importlib.import_module(f"training.{name}")
    assert module.__all__ and all(hasattr(module, n) for n in module.__all__)
