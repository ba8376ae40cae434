"""Straight-through differentiable top-k (reference `differentiable_topk`).

No library ships this estimator (sequential masked softmax, hard forward / soft backward),
so it is written here, step for step as the reference does it, because the trained query
reasoner's gradients came from exactly this.
"""

from __future__ import annotations

import torch

__all__ = ["cosine_scores", "differentiable_topk"]


def differentiable_topk(
    logits: torch.Tensor, k: int, temperature: float = 0.02
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the top `k` of `logits` with a straight-through soft estimator.

    Args:
        logits: (B, N) scores.
        k: how many to select, 1 <= k <= N.
        temperature: softmax temperature of the backward pass (reference: 0.02).

    Returns:
        (W, topk_idx): W (B, k, N) equals the hard one-hot selection in the forward pass
        and carries the gradient of the sequential masked softmaxes; topk_idx (B, k) in
        descending score order.

    Example:
        >>> w, idx = differentiable_topk(torch.tensor([[0.1, 0.9, 0.5]]), k=2)
        >>> idx.tolist()
        [[1, 2]]
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, N), got shape {tuple(logits.shape)}")
    n = logits.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of candidates {n}, got {k}")
    z = logits / max(temperature, 1e-6)
    topk_idx = torch.topk(z, k, dim=-1).indices  # (B, k)
    k_hard = torch.zeros(logits.shape[0], k, n, dtype=logits.dtype, device=logits.device)
    k_hard.scatter_(2, topk_idx.unsqueeze(-1), 1.0)
    taken = torch.zeros_like(z)
    soft_rows = []
    for j in range(k):
        # Already-picked entries get log(1e-8), not -inf, exactly as the reference.
        mask = 1.0 - taken.detach()
        soft_rows.append(torch.softmax(z + torch.log(mask + 1e-8), dim=-1))
        taken = torch.clamp(taken + k_hard[:, j, :], max=1.0)
    k_soft = torch.stack(soft_rows, dim=1)  # (B, k, N)
    return k_hard + (k_soft - k_soft.detach()), topk_idx


def cosine_scores(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """Reference scoring: L2-normalise in the documents' dtype, dot in float32.

    Args:
        queries: (B, D); documents: (B, N, D).

    Returns:
        (B, N) float32 cosine similarities (also under bf16 autocast in training: at
        temperature 0.02 a bf16 dot would move logits by ~0.2).
    """
    with torch.autocast(queries.device.type, enabled=False):
        q = torch.nn.functional.normalize(queries.to(documents.dtype), dim=-1)
        d = torch.nn.functional.normalize(documents, dim=-1)
        return torch.einsum("bd,bnd->bn", q.float(), d.float())
