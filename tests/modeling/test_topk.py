"""Straight-through differentiable top-k (spec §3.3)."""

from __future__ import annotations

import pytest
import torch

from clara_integrations.modeling import differentiable_topk


def test_forward_is_hard_selection_in_rank_order():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    weights, idx = differentiable_topk(logits, k=3)
    assert idx.tolist() == [[1, 3, 2]]
    assert torch.equal(weights, torch.nn.functional.one_hot(idx, 4).float())


def test_backward_uses_sequential_masked_softmax():
    logits = torch.tensor([[0.1, 0.9, 0.5]], requires_grad=True)
    weights, _ = differentiable_topk(logits, k=2, temperature=0.5)
    values = torch.tensor([1.0, 2.0, 3.0])
    (weights @ values).sum().backward()
    # Manual soft rows: softmax(z), then softmax with the first pick masked by log(1e-8).
    z = logits.detach() / 0.5
    manual = z.clone().requires_grad_(True)
    p0 = torch.softmax(manual, -1)
    p1 = torch.softmax(
        manual + torch.log(torch.tensor([1.0, 1e-8, 1.0]) + 1e-8 * torch.tensor([1.0, 0.0, 1.0])),
        -1,
    )
    ((p0 + p1) @ values).sum().backward()
    assert torch.allclose(logits.grad, manual.grad / 0.5, atol=1e-6)
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [0, 4])
def test_invalid_k(k):
    with pytest.raises(ValueError, match="k must be"):
        differentiable_topk(torch.zeros(1, 3), k)
