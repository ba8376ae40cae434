"""Exact scoring over memory rows: blocked scans and candidate re-scoring.

All scores are cosines computed in float32: ``(q_unit . x) * inv_norm(x)`` where
``inv_norm`` was computed once, at add time, from the stored (rounded) row. Results are
per query ``(scores, rows)`` numpy pairs sorted by score descending, ties by row.
"""

from __future__ import annotations

import numpy as np
import torch

from .segments import MemoryRows, to_float32

Result = tuple[np.ndarray, np.ndarray]  # (float32 scores desc, int64 rows)

_EMPTY: Result = (np.empty(0, np.float32), np.empty(0, np.int64))


def block_rows_for(dim: int, block_bytes: int) -> int:
    """Rows per scan block so that one float32 block is about ``block_bytes``."""
    return max(256, block_bytes // (dim * 4))


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> Result:
    """Best ``k`` of one query's candidates; -inf entries (masked) are dropped."""
    keep = np.isfinite(scores)
    scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))[:k]
    return scores[order].astype(np.float32, copy=False), rows[order].astype(np.int64, copy=False)


def merge(a: list[Result], b: list[Result], k: int) -> list[Result]:
    """Per-query union of two result lists (rows are disjoint), best ``k``."""
    return [
        top_k(np.concatenate([sa, sb]), np.concatenate([ra, rb]), k)
        for (sa, ra), (sb, rb) in zip(a, b)
    ]


def scan(
    rows: MemoryRows,
    q: torch.Tensor,
    k: int,
    start: int,
    stop: int,
    mask: np.ndarray | None,
    block_rows: int,
) -> list[Result]:
    """Exact top-k over rows ``[start, stop)`` whose ``mask`` bit is set.

    Args:
        q: [B, D] unit queries, float32.
        mask: bool over global rows (alive and, if filtering, allowed); None = all.
    """
    n_q = q.shape[0]
    best_s = torch.empty((n_q, 0))
    best_r = torch.empty((n_q, 0), dtype=torch.long)
    buf = None if rows.dtype == "float32" else torch.empty((block_rows, rows.dim))
    for r0, block, inv in rows.iter_blocks(start, stop, block_rows):
        n = block.shape[0]
        m = None
        if mask is not None:
            m = mask[r0 : r0 + n]
            if not m.any():
                continue
        x = to_float32(block, rows.dtype, buf)  # [n, D]
        s = (q @ x.T) * torch.from_numpy(np.asarray(inv))  # [B, n]
        if m is not None and not m.all():
            s[:, torch.from_numpy(~m)] = -torch.inf
        cand_s = torch.cat([best_s, s], dim=1)
        cand_r = torch.cat([best_r, torch.arange(r0, r0 + n).expand(n_q, n)], dim=1)
        kk = min(k, cand_s.shape[1])
        best_s, idx = torch.topk(cand_s, kk, dim=1)
        best_r = torch.gather(cand_r, 1, idx)
    return [top_k(best_s[b].numpy(), best_r[b].numpy(), k) for b in range(n_q)]


def score_candidates(
    rows: MemoryRows, q: torch.Tensor, cands: list[np.ndarray], k: int, block_rows: int
) -> list[Result]:
    """Exact top-k of each query among its own candidate rows (gathered from disk)."""
    non_empty = [c for c in cands if c.size]
    if not non_empty:
        return [_EMPTY for _ in cands]
    union = np.unique(np.concatenate(non_empty))  # sorted
    scores = torch.empty((q.shape[0], union.shape[0]))
    for s0 in range(0, union.shape[0], block_rows):
        part = union[s0 : s0 + block_rows]
        data, inv = rows.gather(part)
        x = to_float32(data, rows.dtype)
        scores[:, s0 : s0 + part.shape[0]] = (q @ x.T) * torch.from_numpy(inv)
    out = []
    for b, c in enumerate(cands):
        idx = np.searchsorted(union, c)
        out.append(top_k(scores[b].numpy()[idx], c, k))
    return out
