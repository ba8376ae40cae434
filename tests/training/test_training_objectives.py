"""Collate labels and what each stage's loss trains (spec §5.3-§5.5)."""

from __future__ import annotations

import pytest
import torch

from clara_integrations import ClaraConfig, ClaraModel
from clara_integrations.modeling.adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER
from training.collate import IGNORE_INDEX, Collator
from training.data import load_examples, parse_record
from training.losses import objective_for_stage
from training.stages import enable_gradient_checkpointing, fit_example, prepare_model_for_stage


@pytest.fixture(scope="module")
def model(tiny_base):
    config = ClaraConfig.for_training(
        str(tiny_base), doc_max_length=64, compr_rate=16, lora_r=4, generation_top_k=2
    )
    torch.manual_seed(0)
    return ClaraModel.from_base(
        tiny_base, config, adapters=[ENCODER_ADAPTER, DECODER_ADAPTER], dtype=torch.float32
    )


def _batch(model, stage, path, k, n=1):
    examples = [fit_example(ex, stage, k) for ex in load_examples([path], max_examples=n).examples]
    return Collator(model.tokenizer, model.special, stage, k, 1024, 64)(
        list(enumerate(examples))
    ), examples


def test_labels_cover_only_the_target(model, tiny_data):
    batch, examples = _batch(model, "instruct", tiny_data["qa"], 2, n=2)
    ids, labels, mask = batch["dec_input_ids"], batch["labels"], batch["dec_attention_mask"]
    assert ((labels != IGNORE_INDEX) <= mask.bool()).all()  # padding never labelled
    for row, ex in enumerate(examples):
        target = model.tokenizer.decode(ids[row][labels[row] != IGNORE_INDEX])
        assert target.startswith(ex.target) and target.endswith("<|im_end|>\n")
    assert len(batch["enc_texts"]) == 2 * 2 and batch["n_tokens"] > 0


def test_paraphrase_template_depends_on_position_only(model):
    collator = Collator(model.tokenizer, model.special, "compress", 1, 1024, 64, seed=1)
    ex = parse_record({"data_type": "paraphrase", "answers": ["t"], "docs": ["d"]})
    first = [collator.render(ex, pos)[0] for pos in range(20)]
    assert first == [collator.render(ex, pos)[0] for pos in range(20)]
    assert len(set(first)) > 3


def _grad_norm(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_e2e_gradient_reaches_query_reasoner_not_compressor(model, tiny_data):
    params, _ = prepare_model_for_stage(model, "e2e", 2)
    assert QUERY_ADAPTER in model.adapters
    batch, _ = _batch(model, "e2e", tiny_data["qa"], 2)
    model.train()
    model.zero_grad(set_to_none=True)
    objective_for_stage(model, "e2e", 0.0)(batch)["loss"].backward()
    assert _grad_norm(model.adapters.parameters(QUERY_ADAPTER)) > 0  # through the top-k
    assert _grad_norm(model.adapters.parameters(DECODER_ADAPTER)) > 0
    assert all(p.grad is None for p in model.adapters.parameters(ENCODER_ADAPTER))
    assert {id(p) for p in params} == {
        id(p) for n in (DECODER_ADAPTER, QUERY_ADAPTER) for p in model.adapters.parameters(n)
    }


def test_stage1_trains_compressor_generator_and_memory_rows_only(model, tiny_data):
    params, hook = prepare_model_for_stage(model, "compress", 1)
    batch, _ = _batch(model, "compress", tiny_data["compress"], 1)
    model.train()
    model.zero_grad(set_to_none=True)
    out = objective_for_stage(model, "compress", 0.1)(batch)
    out["loss"].backward()
    hook.remove()
    assert torch.allclose(out["loss"], out["ntp"] + 0.1 * out["mse"])
    assert _grad_norm(model.adapters.parameters(ENCODER_ADAPTER)) > 0
    assert _grad_norm(model.adapters.parameters(DECODER_ADAPTER)) > 0
    grad = model.decoder.get_input_embeddings().weight.grad  # (V, H)
    rows = grad.abs().sum(1).nonzero().flatten().tolist()
    assert rows and set(rows) <= set(model.special.mem_token_ids)
    assert all(p.grad is None for p in model.adapters.parameters(QUERY_ADAPTER))


def test_retrieval_infonce_trains_query_reasoner(model, tiny_data):
    prepare_model_for_stage(model, "retrieval", 2)
    batch, _ = _batch(model, "retrieval", tiny_data["qa"], 2)
    model.zero_grad(set_to_none=True)
    out = objective_for_stage(model, "retrieval", 0.0)(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    assert _grad_norm(model.adapters.parameters(QUERY_ADAPTER)) > 0
    model.eval()


def test_gradient_checkpointing_keeps_gradients(model, tiny_data):
    """Recomputation must re-activate the adapter of each forward (encoder vs generator)."""
    prepare_model_for_stage(model, "instruct", 1, fresh_decoder=False)
    batch, _ = _batch(model, "instruct", tiny_data["qa"], 1)
    objective = objective_for_stage(model, "instruct", 0.1)
    model.train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # same dropout masks
        objective(batch)["loss"].backward()
        grads.append([p.grad.clone() for p in model.adapters.parameters(ENCODER_ADAPTER)])
    getattr(
        model.decoder,
        "activation_checkpointing_disable",
        model.decoder.gradient_checkpointing_disable,
    )()
    model.eval()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
