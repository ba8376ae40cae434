"""Models and stores pickle by reference: the same object in this process, the same
weights in another, and a clear refusal where there is nothing to refer to."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import torch

from clara_integrations import ClaraModel
from clara_integrations.errors import NotPicklableError
from clara_integrations.store import MemoryStore
from tests.conftest import REPO_ROOT, TINY_BASE

CHILD = """
import pickle, sys
obj = pickle.loads(sys.stdin.buffer.read())
model = obj[0]
vector = model.compress_documents(["Paris is in France."]).flatten()
print(model.hidden_size, len(obj[1]), float(vector[:8].sum()), obj[1].config.exact_filter_rows)
"""


def test_round_trip_in_this_process_is_the_same_model(e2e_model):
    assert pickle.loads(pickle.dumps(e2e_model)) is e2e_model
    assert len(pickle.dumps(e2e_model)) < 4096  # a reference, not the weights


def test_another_process_loads_the_same_weights(e2e_model, tmp_path):
    store = MemoryStore.for_model(e2e_model)
    store.add_documents(["Rome is in Italy."], e2e_model, show_progress=False)
    store.persist(tmp_path / "store", show_progress=False)
    store.configure(exact_filter_rows=123)  # a runtime setting: not saved with the data
    payload = pickle.dumps((e2e_model, store))
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=payload,
        capture_output=True,
        cwd=REPO_ROOT,
        check=True,
        env={"CLARA_DEVICE": "cpu", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    expected = e2e_model.compress_documents(["Paris is in France."]).flatten()
    assert int(out[0]) == e2e_model.hidden_size and int(out[1]) == 1
    assert abs(float(out[2]) - float(expected[:8].sum())) < 1e-4
    assert int(out[3]) == 123


def test_models_without_a_folder_or_changed_since_refuse(fixture_dir, e2e_model):
    changed = ClaraModel.from_pretrained(
        fixture_dir / "ckpt-e2e", base_model=TINY_BASE, dtype=torch.float32
    )
    with torch.no_grad():
        changed.adapters.parameters("encoder_adapter")[0].add_(0.5)
    with pytest.raises(NotPicklableError, match="changed since it was loaded"):
        pickle.dumps(changed)
    clone = copy.deepcopy(e2e_model)  # a copy is a real copy, and refers to the folder
    assert clone is not e2e_model and pickle.loads(pickle.dumps(clone)) is clone
    shallow = copy.copy(e2e_model)
    assert shallow is not e2e_model and shallow.decoder is e2e_model.decoder
    built = ClaraModel.from_base(TINY_BASE, e2e_model.config, dtype=torch.float32)
    with pytest.raises(NotPicklableError, match="save_pretrained"):
        pickle.dumps(built)


def test_unpersisted_store_refuses(e2e_model, tmp_path):
    store = MemoryStore.for_model(e2e_model)
    with pytest.raises(NotPicklableError, match="never persisted"):
        pickle.dumps(store)
    store.persist(tmp_path / "s", show_progress=False)
    assert pickle.loads(pickle.dumps(store)) is store
    store.add(torch.randn(1, e2e_model.n_mem, e2e_model.hidden_size))
    with pytest.raises(NotPicklableError, match="unpersisted changes"):
        pickle.dumps(store)


def test_a_hybrid_retriever_pickles_after_building_its_bm25_index(e2e_model, tmp_path):
    from clara_integrations.llama_index import ClaraRetriever

    store = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    store.add_documents(["red apples", "green pears", "blue cars"], e2e_model, show_progress=False)
    store.persist(tmp_path / "s", show_progress=False)
    retriever = ClaraRetriever(model=e2e_model, store=store, similarity_top_k=2, hybrid=True)
    before = [n.node.node_id for n in retriever.retrieve("red apples")]  # the index is built
    again = pickle.loads(pickle.dumps(retriever))
    assert again.store is store and [n.node.node_id for n in again.retrieve("red apples")] == before
