"""Input layouts: packing with reference positions, memory splicing arithmetic."""

from __future__ import annotations

import torch

from clara_integrations.modeling.layout import pack_encoder_batch, splice_memory
from clara_integrations.modeling.tokens import SpecialTokens


def _special(n_mem=2):
    return SpecialTokens(
        mem_tokens=tuple(f"<MEM{i}>" for i in range(n_mem)),
        mem_token_ids=tuple(100 + i for i in range(n_mem)),
        ae_id=90,
        enc_id=91,
        sep_id=92,
        bos="<s>",
        eos="</s>",
        pad_id=0,
    )


def test_packed_positions_reproduce_reference_positions():
    special = _special()
    rows = [[5, 6, 7], [8]]
    packed = pack_encoder_batch(rows, special, max_length=8)
    padded = pack_encoder_batch(rows, special, max_length=8, reference_padding=True)
    assert padded.input_ids.shape == (2, 8 + 3 + 2)
    assert packed.input_ids.shape == (2, 3 + 2)
    for b in range(2):
        real_packed = packed.attention_mask[b].bool()
        real_padded = padded.attention_mask[b].bool()
        assert (
            packed.input_ids[b][real_packed].tolist() == padded.input_ids[b][real_padded].tolist()
        )
        reference_positions = torch.arange(padded.input_ids.shape[1])[real_padded]
        assert packed.position_ids[b][real_packed].tolist() == reference_positions.tolist()
    assert packed.input_ids[:, -2:].tolist() == [[100, 101], [100, 101]]


def _splice(sep, k=3, n_mem=2):
    # Prompt: 2 text tokens, then k slots of <MEM0> <MEM1> <SEP>, then 1 text token.
    slot = [100, 101, 92]
    ids = torch.tensor([[7, 8] + slot * k + [9]])
    embeds = torch.zeros(1, ids.shape[1], 1)
    memories = torch.arange(1, k * n_mem + 1, dtype=torch.float).reshape(k, n_mem, 1)
    return splice_memory(embeds, ids, memories, first_mem_id=100, k=k, sep=sep)[0, :, 0].tolist()


def test_splice_with_sep_fills_each_slot():
    assert _splice(sep=True) == [0, 0, 1, 2, 0, 3, 4, 0, 5, 6, 0, 0]


def test_splice_without_sep_reproduces_reference_overlap():
    # Spec §4.6: doc 1 overwrites the first <SEP> and the second <MEM0>, doc 2 the second
    # <MEM1> and <SEP>; the last slot keeps raw token embeddings.
    assert _splice(sep=False) == [0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0]


def test_splice_is_differentiable():
    ids = torch.tensor([[7, 100, 101, 92]])
    memories = torch.ones(1, 2, 3, requires_grad=True)
    out = splice_memory(torch.zeros(1, 4, 3), ids, memories, 100, k=1, sep=True)
    out.sum().backward()
    assert torch.equal(memories.grad, torch.ones(1, 2, 3))
