"""The training package's public names are explicit, sorted and importable."""
from __future__ import annotations

import importlib

import pytest

MODULES = ["bm25", "checkpoint", "collate", "data", "evaluate", "finetune", "loop", "losses",
           "metrics", "pipeline", "report", "stages", "synthesize", "teachers"]


def _isort_key(name: str) -> tuple[int, str]:
    # ruff RUF022: CONSTANTS, then Classes, then functions.
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_resolves(name):
    module = importlib.import_module(f"training.{name}")
    assert module.__all__ == sorted(module.__all__, key=_isort_key)
    assert all(hasattr(module, n) for n in module.__all__)

