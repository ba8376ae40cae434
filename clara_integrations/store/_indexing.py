"""Index management of :class:`MemoryStore`: training, folding in new rows, settings.

A mixin so that ``memory_store.py`` stays readable; it uses the store's attributes
(``_cfg``, ``_rows``, ``_alive``, ``_ann`` ...) and runs under the store's write lock.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._search import block_rows_for
from .ann import AnnIndex, build_empty_index
from .config import RUNTIME_FIELDS, StoreConfig
from .segments import to_float32

logger = logging.getLogger(__name__)


class IndexingMixin:
    """ANN index life cycle (see :class:`MemoryStore`)."""

    def configure(self, **runtime: Any) -> None:
        """Change search-time settings (see :data:`config.RUNTIME_FIELDS`).

        Example:
            >>> store.configure(hnsw_ef_search=256, rescore_factor=20)  # doctest: +SKIP
        """
        bad = set(runtime) - RUNTIME_FIELDS
        if bad:
            raise ValueError(
                f"only runtime settings can change: {sorted(RUNTIME_FIELDS)}; got {sorted(bad)}"
            )
        with self._writing():
            self._cfg = StoreConfig.model_validate({**self._cfg.model_dump(), **runtime})
            self._block_rows = block_rows_for(self._cfg.dim, self._cfg.scan_block_bytes)
            if self._ann is not None:
                self._ann.use_gpu(self._cfg.use_gpu)

    def build_index(self, index: str | None = None, *, show_progress: bool = True) -> None:
        """(Re)train the ANN index over all rows, optionally switching its kind.

        ``persist`` calls this automatically once the store has ``min_index_rows``
        nodes; call it yourself to search a large unpersisted store fast, or to switch
        between ``"flat"``, ``"hnsw"``, ``"ivfpq"`` and factory strings. On error the
        store keeps its previous index and kind.

        Raises:
            ValueError: an invalid index kind, or too few rows to train it.
        """
        with self._writing():
            cfg = self._cfg
            if index is not None:
                cfg = StoreConfig.model_validate({**cfg.model_dump(), "index": index})
            ann = self._trained(cfg, show_progress) if cfg.index != "flat" else None
            self._begin_write()
            self._cfg = cfg
            self._set_ann(ann)

    def _set_ann(self, ann: AnnIndex | None) -> None:
        self._ann, self._index_entry, self._bitmap_cache = ann, None, None
        self._ann_trained_on = self._rows.n_rows if ann is not None else 0

    def _trained(self, cfg: StoreConfig, show_progress: bool) -> AnnIndex:
        """A new index of kind ``cfg.index`` trained on a sample and holding every row."""
        build_empty_index(cfg, cfg.train_size)  # reject a bad factory string first
        live = np.nonzero(self._alive[: self._rows.n_rows])[0]
        if live.size < 2:
            raise ValueError(f"an {cfg.index!r} index needs at least 2 nodes")
        rng = np.random.default_rng(0)
        sample_rows = np.sort(rng.choice(live, min(live.size, cfg.train_size), replace=False))
        data, inv = self._rows.gather(sample_rows)
        sample = to_float32(data, cfg.dtype) * torch.from_numpy(inv)[:, None]
        del data
        logger.info("training %s index on %d rows", cfg.index, sample_rows.size)
        ann = AnnIndex.train(cfg, sample, self._rows.n_rows)
        del sample
        self._fill(ann, show_progress)
        return ann

    def _fill(self, ann: AnnIndex, show_progress: bool) -> None:
        """Add rows [n_indexed, n_rows) to ``ann`` (dead rows too: labels are rows)."""
        stop = self._rows.n_rows
        buf = torch.empty((self._block_rows, self._cfg.dim))
        with tqdm(
            total=stop - ann.n_indexed, desc="indexing", unit="row", disable=not show_progress
        ) as bar:
            for _r0, block, inv in self._rows.iter_blocks(ann.n_indexed, stop, self._block_rows):
                x = to_float32(block, self._cfg.dtype, buf)  # [n, D]
                ann.add(x * torch.from_numpy(np.asarray(inv))[:, None])  # unit rows
                bar.update(block.shape[0])
        ann.use_gpu(self._cfg.use_gpu)

    def _refresh_index(self, show_progress: bool) -> None:
        """Index policy at persist: train once big enough, retrain after 4x growth,
        fold in unindexed rows beyond ``max_unindexed_rows``."""
        cfg, n_rows = self._cfg, self._rows.n_rows
        if cfg.index == "flat":
            return
        if self._ann is None or n_rows > 4 * max(self._ann_trained_on, cfg.min_index_rows):
            if self._n_live >= cfg.min_index_rows:
                self._set_ann(self._trained(cfg, show_progress))
        elif n_rows - self._ann.n_indexed > cfg.max_unindexed_rows:
            self._fill(self._ann, show_progress)
            self._index_entry, self._bitmap_cache = None, None
