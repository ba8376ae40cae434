"""The other configuration the reference supports: one shared <MEM> token, sep=False,
untied input/output embeddings, three documents per question."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clara_integrations import ClaraConfig, ClaraModel
from tests.conftest import TINY_BASE

DOCS = [
    "Weldenia is a plant genus.",
    "The Eiffel Tower is in Paris.",
    "Python is a language.",
    "Alsobia grows in Mexico.",
]


@pytest.fixture(scope="module")
def untied_base(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    target = tmp_path_factory.mktemp("untied-base")
    for item in TINY_BASE.iterdir():
        shutil.copy(item, target / item.name)
    config = json.loads((target / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (target / "config.json").write_text(json.dumps(config))
    # The tied checkpoint has no lm_head weight: give the untied base its own copy.
    base = AutoModelForCausalLM.from_pretrained(target)
    torch.manual_seed(1)
    base.lm_head.weight = torch.nn.Parameter(
        base.model.embed_tokens.weight.detach().clone()
        + 0.01 * torch.randn_like(base.lm_head.weight)
    )
    base.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def variant(untied_base):
    torch.manual_seed(0)
    config = ClaraConfig(
        decoder_model_name=str(untied_base),
        doc_max_length=64,
        compr_rate=16,
        different_mem_tokens=False,
        sep=False,
        lora=True,
        lora_r=4,
        generation_top_k=3,
        training_stage="stage2",
        compr_model_name=None,
    )
    model = ClaraModel.from_base(
        untied_base,
        config,
        dtype=torch.float32,
        adapters=["decoder_adapter", "encoder_adapter", "query_reasoner_adapter"],
    )
    with torch.no_grad():  # make every adapter matter, as the fixture does
        for name, p in model.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def test_shared_memory_token(variant):
    assert variant.special.mem_tokens == ("<MEM>",) * 4
    assert len(set(variant.special.mem_token_ids)) == 1
    # base vocab + <MEM>, <AE>, <ENC>, <SEP>
    assert len(variant.tokenizer) == variant.base_vocab_size + 4
    assert variant.compress_documents(DOCS).shape == (4, 4, 64)


def test_untied_lm_head_rows_round_trip_in_both_formats(variant, tmp_path, untied_base):
    for official in (False, True):
        folder = tmp_path / f"ckpt-{official}"
        variant.save_pretrained(folder, official_format=official, official_dtype=torch.float32)
        if official:
            first_last = torch.load(folder / "decoder_first_last_layers.pth", weights_only=True)
            assert set(first_last) == {"model.embed_tokens.weight", "lm_head.weight"}
        reloaded = ClaraModel.from_pretrained(folder, base_model=untied_base, dtype=torch.float32)
        assert torch.equal(
            reloaded.decoder.get_output_embeddings().weight,
            variant.decoder.get_output_embeddings().weight,
        )
        answers, idx = reloaded.generate_from_questions(
            ["Where is the tower?"], documents=[DOCS], max_new_tokens=4
        )
        expected = variant.generate_from_questions(
            ["Where is the tower?"], documents=[DOCS], max_new_tokens=4
        )
        assert (answers, idx.tolist()) == (expected[0], expected[1].tolist())


def test_three_documents_without_sep_follow_reference_overlap(variant):
    memories = variant.compress_documents(DOCS[:3])
    inputs = variant.prepare_generation_inputs(["Which?"], memories)
    ids = inputs["input_ids"][0]
    first = int((ids == variant.special.mem_token_ids[0]).nonzero()[0])
    n = variant.n_mem
    embeds = inputs["inputs_embeds"][0]
    for j in range(3):  # slot j starts at first + j * n_mem (no room for <SEP>)
        assert torch.equal(embeds[first + j * n : first + (j + 1) * n], memories[j])
    # The prompt still has k * (n_mem + 1) memory/sep tokens; the last n_mem + ... keep
    # their token embeddings (reference quirk).
    tail = embeds[first + 3 * n : first + 3 * (n + 1)]
    token_rows = variant.decoder.get_input_embeddings()(ids[first + 3 * n : first + 3 * (n + 1)])
    assert torch.equal(tail, token_rows)
