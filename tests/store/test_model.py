"""add_documents with the real parity-fixture model (n_mem=4, H=64)."""

from __future__ import annotations

import pytest
import torch

from clara_integrations.store import MemoryStore, StoreMismatchError

DOCS = [
    "Paris is the capital of France.",
    "The Nile is the longest river in Africa.",
    "Photosynthesis turns light into chemical energy.",
    "Mount Everest is the highest mountain above sea level.",
    "The Pacific is the largest ocean on Earth.",
]


def test_add_documents_with_the_e2e_model(e2e_model, tmp_path):
    store = MemoryStore(n_mem=e2e_model.n_mem, hidden_size=e2e_model.hidden_size)
    assert store.config.model_identity is None
    ids = store.add_documents(
        DOCS,
        e2e_model,
        metadata=[{"i": i} for i in range(5)],
        batch_size=2,
        chunk_size=3,
        show_progress=False,
    )
    assert len(store) == 5 and store.config.model_identity == e2e_model.model_identity
    expected = e2e_model.compress_documents(DOCS, batch_size=5, show_progress=False)
    got = store.get_memories(ids)
    assert got.shape == (5, e2e_model.n_mem, e2e_model.hidden_size)
    torch.testing.assert_close(got.float(), expected.float().cpu(), atol=2e-2, rtol=1e-2)

    q = e2e_model.encode_queries(["What is the capital of France?", "Which ocean is largest?"])
    hits = store.search(q, k=3)
    ref = (
        torch.nn.functional.normalize(q.float(), dim=1)
        @ torch.nn.functional.normalize(got.flatten(1).float(), dim=1).T
    )
    assert [h[0].id for h in hits] == [ids[i] for i in ref.argmax(dim=1).tolist()]

    store.persist(tmp_path / "s")
    loaded = MemoryStore.load(tmp_path / "s", model=e2e_model)
    assert loaded.fingerprint == store.fingerprint
    loaded.close()
    # a store built by another compressor (or of another shape) refuses this model
    other = MemoryStore.for_model(e2e_model, model_identity="some-other-compressor")
    other.add(torch.zeros(1, e2e_model.n_mem, e2e_model.hidden_size) + 1)
    with pytest.raises(StoreMismatchError, match="some-other-compressor"):
        other.add_documents(DOCS[:1], e2e_model, show_progress=False)
    other.persist(tmp_path / "other")
    with pytest.raises(StoreMismatchError, match="some-other-compressor"):
        MemoryStore.load(tmp_path / "other", model=e2e_model)
    wide = MemoryStore(n_mem=8, hidden_size=576)
    with pytest.raises(StoreMismatchError, match="n_mem=8"):
        wide.add_documents(DOCS[:1], e2e_model, show_progress=False)
    assert len(wide) == 0 and len(other) == 1
    with pytest.raises(ValueError, match="empty"):
        store.add_documents(["ok", "  "], e2e_model, show_progress=False)
    assert len(store) == 5
