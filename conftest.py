"""Doctests of the framework-free modules run with `model` bound to the tiny parity
fixture's end-to-end checkpoint (loaded once, only when a doctest runs) and `tmp_path` to
a fresh folder."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

_SHARED = Path(
    os.environ.get("CLARA_SHARED_DIR", Path(__file__).resolve().parent.parent / "shared")
)
_FIXTURE = _SHARED / "fixtures" / "clara-official-tiny"


@cache
def _tiny_model():
    import torch

    from clara_integrations import ClaraModel

    return ClaraModel.from_pretrained(
        _FIXTURE / "ckpt-e2e",
        base_model=_FIXTURE / "tiny-llama-base",
        dtype=torch.float32,
        device="cpu",
    )


@pytest.fixture(autouse=True)
def _doctest_model(request, doctest_namespace):
    if isinstance(request.node, pytest.DoctestItem):
        doctest_namespace.setdefault("model", _tiny_model())
        doctest_namespace["tmp_path"] = request.getfixturevalue("tmp_path")  # one per doctest
