"""Left padding must not leave a query row with nothing to attend to (NaN on CUDA SDPA)."""

from __future__ import annotations

import torch
from transformers.masking_utils import sdpa_mask

from clara_integrations.modeling.attention import SAFE_SDPA, sdpa_mask_without_empty_rows


def _left_padded_masks():
    attention_mask = torch.tensor(
        [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool
    )  # as transformers passes it
    kwargs = dict(
        batch_size=2,
        q_length=5,
        kv_length=5,
        attention_mask=attention_mask,
        allow_is_causal_skip=False,
    )
    return sdpa_mask(**kwargs), sdpa_mask_without_empty_rows(**kwargs)


def test_stock_mask_has_empty_rows_ours_has_none():
    stock, safe = _left_padded_masks()
    assert not stock[0, 0, 0].any()  # the pad row of transformers' mask: the NaN case
    assert safe.any(dim=-1).all()


def test_real_rows_keep_their_mask():
    stock, safe = _left_padded_masks()
    real = stock.any(dim=-1, keepdim=True).expand_as(stock)
    assert torch.equal(safe[real], stock[real])


def test_clara_decoder_uses_the_safe_variant(e2e_model):
    assert e2e_model.decoder.config._attn_implementation == SAFE_SDPA
    ids = torch.tensor([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])
    mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()
    with torch.no_grad():
        logits = e2e_model.decoder(input_ids=ids, attention_mask=mask).logits
        alone = e2e_model.decoder(input_ids=ids[:1, 2:]).logits
    assert torch.isfinite(logits).all()
    assert (logits[0, 2:] - alone[0]).abs().max() < 1e-4
