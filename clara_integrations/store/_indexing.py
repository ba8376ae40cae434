"""The ANN index of a store: training, folding in new rows, the persist-time policy.

Functions of a :class:`~._state.StoreState`; callers hold the store's write lock.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from ._state import StoreState
from .ann import AnnIndex, build_empty_index
from .config import StoreConfig
from .segments import to_float32

logger = logging.getLogger(__name__)


def set_ann(st: StoreState, ann: AnnIndex | None) -> None:
    """Use ``ann`` (None: exact scans only); its files are not saved yet."""
    st.index.ann, st.index.entry, st.index.bitmap = ann, None, None
    st.index.trained_on = st.rows.n_rows if ann is not None else 0


def trained(st: StoreState, cfg: StoreConfig, show_progress: bool) -> AnnIndex:
    """A new index of kind ``cfg.index`` trained on a sample and holding every row."""
    build_empty_index(cfg, cfg.train_size)  # reject a bad factory string first
    live = np.nonzero(st.alive[: st.rows.n_rows])[0]
    if live.size < 2:
        raise ValueError(f"an {cfg.index!r} index needs at least 2 nodes")
    rng = np.random.default_rng(0)
    sample_rows = np.sort(rng.choice(live, min(live.size, cfg.train_size), replace=False))
    data, inv = st.rows.gather(sample_rows)
    sample = to_float32(data, cfg.dtype) * torch.from_numpy(inv)[:, None]
    del data
    logger.info("training %s index on %d rows", cfg.index, sample_rows.size)
    ann = AnnIndex.train(cfg, sample, st.rows.n_rows)
    del sample
    fill(st, ann, show_progress)
    return ann


def fill(st: StoreState, ann: AnnIndex, show_progress: bool) -> None:
    """Add rows [n_indexed, n_rows) to ``ann`` (dead rows too: labels are rows)."""
    stop = st.rows.n_rows
    buf = torch.empty((st.block_rows, st.cfg.dim))
    with tqdm(
        total=stop - ann.n_indexed, desc="indexing", unit="row", disable=not show_progress
    ) as bar:
        for _r0, block, inv in st.rows.iter_blocks(ann.n_indexed, stop, st.block_rows):
            x = to_float32(block, st.cfg.dtype, buf)  # [n, D]
            ann.add(x * torch.from_numpy(np.asarray(inv))[:, None])  # unit rows
            bar.update(block.shape[0])
    ann.use_gpu(st.cfg.use_gpu)


def refresh(st: StoreState, show_progress: bool) -> None:
    """Index policy at persist: train once big enough, retrain after 4x growth,
    fold in unindexed rows beyond ``max_unindexed_rows``."""
    cfg, n_rows, ann = st.cfg, st.rows.n_rows, st.index.ann
    if cfg.index == "flat":
        return
    if ann is None or n_rows > 4 * max(st.index.trained_on, cfg.min_index_rows):
        if st.n_live >= cfg.min_index_rows:
            set_ann(st, trained(st, cfg, show_progress))
    elif n_rows - ann.n_indexed > cfg.max_unindexed_rows:
        fill(st, ann, show_progress)
        st.index.entry, st.index.bitmap = None, None
