"""Helpers shared by the pipeline tests and the framework parity test."""

from __future__ import annotations

import json

import torch


def load_reference(fixture_dir) -> dict:
    """reference_outputs.json of the parity fixture (docs, questions, topk_idx, answers)."""
    return json.loads((fixture_dir / "reference_outputs.json").read_text())


def docs_store(model, docs, ids, metadata=None):
    """A float32 (exact) MemoryStore of `docs` under `ids`."""
    from clara_integrations.store import MemoryStore

    store = MemoryStore.for_model(model, dtype=torch.float32)
    store.add_documents(list(docs), model, ids=list(ids), metadata=metadata, show_progress=False)
    return store


class NoRevisionStore:
    """A protocol store that cannot say when it changed (as a shared Milvus collection)."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name == "revision":
            raise AttributeError(name)
        return getattr(self._store, name)

    def __len__(self):
        return len(self._store)

    def __contains__(self, node_id):
        return node_id in self._store
