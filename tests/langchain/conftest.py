"""Fixtures for the LangChain adapter tests: the fixture's documents in a float32 store."""

from __future__ import annotations

import inspect
import json

import pytest
import torch


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Run this folder's `async def` tests (LangChain's standard suites have many) under
    pytest-asyncio, as `asyncio_mode = "auto"` would, without changing the mode of the
    whole repository. Innermost wrapper: marks items before pytest-asyncio converts them."""
    outcome = yield
    if not inspect.iscoroutinefunction(obj):
        return
    items = outcome.get_result()
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, pytest.Function) and item.get_closest_marker("asyncio") is None:
            item.add_marker(pytest.mark.asyncio)


@pytest.fixture(scope="session")
def reference(fixture_dir) -> dict:
    """reference_outputs.json of the parity fixture (docs, questions, answers, topk_idx)."""
    return json.loads((fixture_dir / "reference_outputs.json").read_text())


def make_store(model, texts):
    """A float32 (exact) store of `texts`, ids "0", "1", ... (the fixture's doc indices)."""
    from clara_integrations.store import MemoryStore

    store = MemoryStore.for_model(model, dtype=torch.float32)
    store.add_documents(
        list(texts), model, ids=[str(i) for i in range(len(texts))], show_progress=False
    )
    return store


@pytest.fixture(scope="session")
def doc_store(e2e_model, reference):
    """Read-only store of the fixture's 5 documents (tests must not write to it)."""
    return make_store(e2e_model, reference["docs"])


@pytest.fixture
def fresh_store(e2e_model, reference):
    """A writable store of the fixture's documents, one per test."""
    return make_store(e2e_model, reference["docs"])


@pytest.fixture(scope="session")
def stage2_model(fixture_dir):
    """The instruct checkpoint with its query reasoner initialised as a copy of the
    compressor, as the reference does when stage 2 starts: a query then maps to exactly
    its own text's memory (cosine 1), the exact-match retrieval LangChain's
    vector-store suite asserts. Loaded separately, so `instruct_model` stays untouched."""
    from clara_integrations import ClaraModel

    model = ClaraModel.from_pretrained(
        fixture_dir / "ckpt-instruct",
        base_model=fixture_dir / "tiny-llama-base",
        dtype=torch.float32,
    )
    model.adapters.copy("encoder_adapter", "query_reasoner_adapter")
    return model
