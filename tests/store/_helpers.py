"""Synthetic memories and a brute-force reference for the store tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

N_MEM, H = 4, 16
D = N_MEM * H


def clustered(
    n: int, *, n_mem: int = N_MEM, h: int = H, clusters: int = 20, seed: int = 0, noise: float = 0.6
) -> torch.Tensor:
    """[n, n_mem, h] float32: cluster centres plus noise (so neighbours exist)."""
    g = torch.Generator().manual_seed(seed)
    d = n_mem * h
    centres = torch.randn(clusters, d, generator=g)
    which = torch.randint(0, clusters, (n,), generator=g)
    x = centres[which] + noise * torch.randn(n, d, generator=g)
    return x.reshape(n, n_mem, h)


def queries(b: int, *, d: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def brute_force(
    stored: torch.Tensor, ids: list[str], q: torch.Tensor, k: int, allowed: list[bool] | None = None
) -> list[list[tuple[str, float]]]:
    """Reference cosine top-k in float64 over the stored (already rounded) memory."""
    x = F.normalize(stored.reshape(stored.shape[0], -1).double(), dim=1)
    s = F.normalize(q.double(), dim=1) @ x.T
    if allowed is not None:
        s[:, ~torch.tensor(allowed)] = -torch.inf
    out = []
    for row in s:
        top = torch.topk(row, min(k, int(torch.isfinite(row).sum())))
        out.append([(ids[i], v) for v, i in zip(top.values.tolist(), top.indices.tolist())])
    return out


def assert_same_hits(hits, ref, tol: float = 1e-5) -> None:
    """Same scores (within ``tol``) and same ids except where scores tie."""
    assert len(hits) == len(ref)
    for got, want in zip(hits, ref):
        assert len(got) == len(want)
        for h, (wid, ws) in zip(got, want):
            assert abs(h.score - ws) < tol, (h, wid, ws)
        assert {h.id for h in got} == {w for w, _ in want} or _ties(got, want, tol)


def _ties(got, want, tol) -> bool:
    return all(abs(h.score - s) < tol for h, (_, s) in zip(got, want))
