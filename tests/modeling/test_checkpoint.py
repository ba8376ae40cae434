"""Checkpoint round trips (native and released format) and damaged files."""

from __future__ import annotations

import shutil

import pytest
import torch

from clara_integrations import CheckpointCorruptError, ClaraModel
from tests.conftest import TINY_BASE

DOCS = ["Weldenia is a genus of flowering plants.", "The Eiffel Tower is in Paris, France."]
QUESTIONS = ["Where is the Eiffel Tower?"]


def _weights(model):
    out = {
        f"{n}/{k}": v for n in model.adapters.names for k, v in model.adapters.state_dict(n).items()
    }
    out["embed"] = model.decoder.get_input_embeddings().weight.detach().cpu().clone()
    return out


def _assert_same_model(a, b):
    assert a.adapters.names == b.adapters.names
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert torch.equal(a.compress_documents(DOCS), b.compress_documents(DOCS))
    assert torch.equal(a.encode_queries(QUESTIONS), b.encode_queries(QUESTIONS))


@pytest.mark.parametrize("official", [False, True])
def test_round_trip_is_exact(e2e_model, tmp_path, official):
    e2e_model.save_pretrained(tmp_path / "ckpt", official_format=official)
    reloaded = ClaraModel.from_pretrained(
        tmp_path / "ckpt", base_model=TINY_BASE, dtype=torch.float32
    )
    _assert_same_model(e2e_model, reloaded)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    if official:
        assert files == {"config.json", "adapters.pth", "decoder_first_last_layers.pth"}
    else:
        assert not any(name.endswith((".pth", ".bin", ".pkl")) for name in files)
        assert "new_token_embeddings.safetensors" in files


def test_native_checkpoint_is_small(e2e_model, tmp_path):
    e2e_model.save_pretrained(tmp_path / "ckpt")
    from safetensors.torch import load_file

    new_rows = load_file(str(tmp_path / "ckpt" / "new_token_embeddings.safetensors"))
    # 4 memory tokens + <AE>, <ENC>, <SEP>; tied embeddings: no lm_head rows.
    assert new_rows["embed_tokens"].shape == (7, 64)
    assert "lm_head" not in new_rows
    # The fixture changed three base-vocabulary rows: stored as a patch, not the matrix.
    assert new_rows["embed_tokens.patch_rows"].shape[0] < 10


def test_config_overrides_and_base_override(fixture_dir):
    model = ClaraModel.from_pretrained(
        fixture_dir / "ckpt-e2e", base_model=TINY_BASE, dtype=torch.float32, generation_top_k=3
    )
    assert model.config.generation_top_k == 3
    assert model.config.decoder_model_name == str(TINY_BASE)
    with pytest.raises(ValueError, match="unknown config keys"):
        ClaraModel.from_pretrained(fixture_dir / "ckpt-e2e", base_model=TINY_BASE, compress_rate=3)


def test_relative_base_model_name_resolves_beside_checkpoint(fixture_dir):
    # config.json names "tiny-llama-base": found next to the checkpoint folder.
    model = ClaraModel.from_pretrained(fixture_dir / "ckpt-instruct", dtype=torch.float32)
    assert model.n_mem == 4


@pytest.fixture()
def ckpt_copy(fixture_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "ckpt-e2e", target)
    return target


@pytest.mark.parametrize("name", ["adapters.pth", "decoder_first_last_layers.pth"])
def test_truncated_file_is_named(ckpt_copy, name):
    path = ckpt_copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointCorruptError, match=name):
        ClaraModel.from_pretrained(ckpt_copy, base_model=TINY_BASE)


@pytest.mark.parametrize("name", ["adapters.pth", "decoder_first_last_layers.pth", "config.json"])
def test_missing_file_is_named(ckpt_copy, name):
    (ckpt_copy / name).unlink()
    with pytest.raises(CheckpointCorruptError, match=name):
        ClaraModel.from_pretrained(ckpt_copy, base_model=TINY_BASE)


class Payload:  # an arbitrary object: weights_only loading must refuse to build it
    pass


def test_pickled_objects_are_refused(ckpt_copy):
    torch.save({"encoder_adapter": Payload()}, ckpt_copy / "adapters.pth")
    with pytest.raises(CheckpointCorruptError, match="adapters.pth"):
        ClaraModel.from_pretrained(ckpt_copy, base_model=TINY_BASE)


def test_wrong_vocabulary_size_is_explained(ckpt_copy):
    bad = {"model.embed_tokens.weight": torch.zeros(49160, 64, dtype=torch.bfloat16)}
    torch.save(bad, ckpt_copy / "decoder_first_last_layers.pth")
    with pytest.raises(CheckpointCorruptError, match="doc_max_length or compr_rate"):
        ClaraModel.from_pretrained(ckpt_copy, base_model=TINY_BASE)


def test_corrupt_native_file_is_named(e2e_model, tmp_path):
    e2e_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "encoder_adapter.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointCorruptError, match="encoder_adapter.safetensors"):
        ClaraModel.from_pretrained(tmp_path / "ckpt", base_model=TINY_BASE)


def test_adapter_policy_rules(ckpt_copy, caplog):
    # stage1_2: the reference ignores the file's generator and starts a fresh one.
    import json

    config = json.loads((ckpt_copy / "config.json").read_text())
    config["training_stage"] = "stage1_2"
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    ref = ClaraModel.from_pretrained(ckpt_copy, base_model=TINY_BASE, dtype=torch.float32)
    assert ref.adapters.names == ["decoder_adapter", "encoder_adapter"]
    assert all(
        float(v.abs().sum()) == 0
        for k, v in ref.adapters.state_dict("decoder_adapter").items()
        if "lora_B" in k
    )  # fresh adapter: B = 0, an exact no-op
    assert "adapter_policy='all'" in caplog.text
    everything = ClaraModel.from_pretrained(
        ckpt_copy, base_model=TINY_BASE, dtype=torch.float32, adapter_policy="all"
    )
    assert everything.adapters.names == [
        "decoder_adapter",
        "encoder_adapter",
        "query_reasoner_adapter",
    ]


def test_stage2_copies_encoder_into_missing_query_reasoner(fixture_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "ckpt-instruct", target)
    import json

    config = json.loads((target / "config.json").read_text())
    config["training_stage"] = "stage2"
    (target / "config.json").write_text(json.dumps(config))
    model = ClaraModel.from_pretrained(target, base_model=TINY_BASE, dtype=torch.float32)
    enc, query = (
        model.adapters.state_dict("encoder_adapter"),
        model.adapters.state_dict("query_reasoner_adapter"),
    )
    assert enc.keys() == query.keys() and all(torch.equal(enc[k], query[k]) for k in enc)


def test_model_can_be_deep_copied(e2e_model):
    import copy

    clone = copy.deepcopy(e2e_model)
    assert torch.equal(clone.compress_documents(DOCS), e2e_model.compress_documents(DOCS))
