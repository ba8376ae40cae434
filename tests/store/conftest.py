"""Fixtures for the store tests (synthetic tensors; one test uses the real e2e model)."""

from __future__ import annotations

import pytest

from clara_integrations.store import MemoryStore

from ._helpers import N_MEM, H, clustered


@pytest.fixture
def small_store():
    """A flat store with 300 clustered nodes, metadata source/page, ids n0..n299."""
    store = MemoryStore(n_mem=N_MEM, hidden_size=H)
    mem = clustered(300)
    ids = [f"n{i}" for i in range(300)]
    meta = [
        {"source": f"s{i % 3}.pdf", "page": i % 7, "tags": ["even" if i % 2 == 0 else "odd"]}
        for i in range(300)
    ]
    store.add(mem, texts=[f"text {i}" for i in range(300)], metadata=meta, ids=ids)
    yield store, mem, ids, meta
    store.close()


@pytest.fixture(autouse=True)
def _one_native_thread():
    """Pin torch and FAISS to one OpenMP thread during store tests, then restore.

    On a small shared machine, OpenMP threads that spin at barriers while another
    process holds the other core made 2-thread FAISS k-means ~70x slower than 1 thread
    (measured: PQ training 9.3 s vs 0.13 s). Python-level concurrency is still tested.
    """
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])
