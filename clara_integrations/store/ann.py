"""Approximate indexes ("hnsw", "ivfpq", FAISS factory strings) over a PCA projection.

Memory rows are 4608-dim for SmolLM2 (8 x 576) and 65536-dim for CLaRa-7B, far too wide
for an in-RAM FAISS graph. We index a PCA projection instead and treat the index purely
as a candidate generator: the store re-scores every candidate exactly from the stored
memory, so reported scores are always exact cosines.

How the projection keeps the ranking (unit query ``q``, unit document ``x``):

1. Asymmetric PCA. With the sample mean ``m`` and components ``P``,
   ``q . x = q . m + (P q) . (P (x - m)) + residual``; ``q . m`` is the same for every
   document, so documents are projected centred and queries uncentred.
2. The mean direction is kept as the first component (see :meth:`Reducer.fit`).
3. Inner product -> L2 ("XBOX" augmentation): each projected document ``r`` gets one
   more coordinate ``sqrt(M^2 - |r|^2)`` and each query a 0, so that
   ``|q' - r'|^2 = |Pq|^2 + M^2 - 2 (Pq) . r``: L2 order equals inner-product order, and
   the index can use L2, for which HNSW graphs and IVF cells work far better than for
   inner product (candidate recall 0.99 vs 0.71 for HNSW on the benchmark data).

Without projection (``reduce_dim=None``) rows are unit vectors and L2 order already
equals cosine order. A FAISS factory string therefore always sees L2-ordered vectors.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ._files import fsync_file, hash_file, unique_name
from .config import StoreConfig
from .errors import StoreCorruptError
from .manifest import FileEntry, IndexEntry

logger = logging.getLogger(__name__)

_SMALL_FILE = 64 << 20


def build_empty_index(cfg: StoreConfig, n_train: int, n_rows: int | None = None) -> faiss.Index:
    """A fresh, untrained FAISS index of the configured kind over ``cfg.index_dim``.

    Raises:
        ValueError: an invalid FAISS factory string (the message names it).
    """
    d, l2 = cfg.index_dim, faiss.METRIC_L2  # L2 order == cosine order (module docstring)
    if cfg.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, l2)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        return index
    if cfg.index == "ivfpq":
        nlist = default_nlist(cfg, n_train, n_rows or n_train)
        spec = f"IVF{nlist},PQ{cfg.pq_m}x{cfg.pq_nbits}"
    else:
        spec = cfg.index
    try:
        index = faiss.index_factory(d, spec, l2)
    except RuntimeError as exc:
        raise ValueError(
            f"index={spec!r} is not a valid FAISS factory string for dimension {d}: {exc}"
        ) from None
    _check_searchable(index, spec)
    _tune_training(index, n_train)
    return index


def _check_searchable(index: faiss.Index, spec: str) -> None:
    """Refuse index types that FAISS cannot search with per-query parameters and an id
    selector (every search here passes them: nprobe / efSearch, and the filter bitmap).
    Such a string used to be accepted and fail every search once the store was large
    enough for `persist` to build the index (20,000 rows by default)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):  # PCA / OPQ in front: what it wraps
        inner = faiss.downcast_index(inner.index)
    # Not try_extract_index_ivf: it looks through a refine wrapper, which cannot.
    searchable = isinstance(
        inner, (faiss.IndexFlat, faiss.IndexScalarQuantizer, faiss.IndexHNSW, faiss.IndexIVF)
    )
    if not searchable:
        raise ValueError(
            f"index={spec!r} builds a FAISS {type(inner).__name__}, which cannot search with "
            "the per-query parameters and id filters the store uses; use 'flat', 'hnsw', "
            "'ivfpq', or a factory string of the Flat, SQ, IVF or HNSW families (PCA/OPQ in "
            "front allowed), e.g. 'IVF256,PQ16' or 'HNSW32,SQ8'"
        )


def _tune_training(index: faiss.Index, n_train: int) -> None:
    """Skip polysemous training (slow; only helps Hamming pre-filtering, unused here) and
    keep FAISS from printing to stderr about small training sets (we log instead)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = 39 * (1 << pq.nbits)
        if n_train < need:
            logger.info("PQ trains on %d rows (FAISS suggests %d)", n_train, need)
            pq.cp.min_points_per_centroid = 1


def default_nlist(cfg: StoreConfig, n_train: int, n_rows: int) -> int:
    """IVF list count: the configured one, else ~sqrt(N) bounded by 39 training rows per
    list. Few, large lists: with the probe budget below, candidate recall depended more
    on the share of lists probed than on list count in our measurements."""
    if cfg.ivf_nlist:
        return cfg.ivf_nlist
    return int(max(1, min(math.sqrt(max(n_rows, 1)), n_train // 39)))


class Reducer:
    """PCA projection ``[D] -> [d]`` plus the L2 augmentation (module docstring)."""

    def __init__(self, components: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        self.components = components.float().contiguous()  # [d - 1, D]
        self.mean = mean.float().contiguous()  # [D]
        self.m2 = m2.float().reshape(())  # squared radius M^2 of the augmentation
        self._shift = self.components @ self.mean  # [d - 1]: P m, subtracted from docs

    @classmethod
    def fit(cls, sample: torch.Tensor, dim: int, seed: int = 0) -> Reducer:
        """Fit on ``sample`` [n, D] (unit rows, float32) for an index of width ``dim``.

        Components: the mean direction ``m / |m|``, then the leading ``dim - 2``
        principal components orthogonal to it. Why the mean direction: hidden states
        share a dominant direction, so queries have a large component along it (cosine
        ~0.9 on the benchmark data) and the score term ``(q . m_hat)(m_hat . (x - m))``
        matters even though documents vary little along ``m_hat``; plain PCA drops it.
        Keeping it took exact-pool recall@10 from 0.73 to 0.99 there.
        """
        mean = sample.mean(dim=0)
        m_hat = torch.nn.functional.normalize(mean, dim=0)
        centred = sample - mean
        centred -= (centred @ m_hat)[:, None] * m_hat  # remove the mean direction
        q = min(dim + 16, *sample.shape)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # svd_lowrank draws a random sketch
        try:
            _, _, v = torch.svd_lowrank(centred, q=q, niter=4)  # v: [D, q]
        finally:
            torch.random.set_rng_state(gen_state)
        components = torch.cat([m_hat[None], v[:, : dim - 2].T])
        # A sample of n rows has fewer than dim - 2 components when n is small (a store
        # of 50 nodes under reduce_dim=128): zero rows fill the index's width, adding the
        # same 0 to every coordinate there, so distances are those of the real ones.
        missing = dim - 1 - components.shape[0]
        if missing > 0:
            components = torch.cat([components, components.new_zeros(missing, sample.shape[1])])
        proj = (sample - mean) @ components.T
        m2 = 1.25 * proj.pow(2).sum(dim=1).max()  # headroom for rows added later
        return cls(components, mean, m2)

    def docs(self, x: torch.Tensor) -> np.ndarray:
        """Unit document rows [n, D] -> [n, d] float32 numpy (projected + augmented)."""
        r = x @ self.components.T - self._shift
        extra = (self.m2 - r.pow(2).sum(dim=1, keepdim=True)).clamp_min(0).sqrt()
        return np.ascontiguousarray(torch.cat([r, extra], dim=1).numpy())

    def queries(self, q: torch.Tensor) -> np.ndarray:
        """Unit queries [B, D] -> [B, d] float32 numpy (not centred, augmented with 0)."""
        r = q @ self.components.T
        return np.ascontiguousarray(torch.cat([r, torch.zeros(r.shape[0], 1)], dim=1).numpy())

    def save(self, path: Path) -> None:
        save_file({"components": self.components, "mean": self.mean, "m2": self.m2}, str(path))

    @classmethod
    def load(cls, path: Path) -> Reducer:
        t = load_file(str(path))
        return cls(t["components"], t["mean"], t["m2"])


class AnnIndex:
    """A trained FAISS index whose label ``i`` is global memory row ``i``."""

    def __init__(self, kind: str, index: faiss.Index, reducer: Reducer | None, n_indexed: int = 0):
        self.kind, self.index, self.reducer = kind, index, reducer
        self.n_indexed = n_indexed
        self._search_index = index  # a GPU clone when enabled

    # -- building ---------------------------------------------------------------------
    @classmethod
    def train(cls, cfg: StoreConfig, sample: torch.Tensor, n_rows: int) -> AnnIndex:
        """Fit the PCA (when ``reduce_dim`` < dim) and train the index on unit rows."""
        reducer = Reducer.fit(sample, cfg.index_dim) if cfg.index_dim < cfg.dim else None
        index = build_empty_index(cfg, sample.shape[0], n_rows)
        if not index.is_trained:
            vecs = reducer.docs(sample) if reducer else sample.numpy()
            try:
                index.train(vecs)
            except RuntimeError as exc:
                raise ValueError(f"training index {cfg.index!r} failed: {exc}") from None
        return cls(cfg.index, index, reducer)

    def add(self, x_unit: torch.Tensor) -> None:
        """Append unit rows [n, D]; they get labels n_indexed .. n_indexed + n - 1."""
        vecs = self.reducer.docs(x_unit) if self.reducer else np.ascontiguousarray(x_unit.numpy())
        self.index.add(vecs)
        self.n_indexed += vecs.shape[0]
        self._search_index = self.index

    def use_gpu(self, enabled: bool) -> None:
        """Search on a faiss-gpu clone when allowed and available (IVF/flat kinds)."""
        self._search_index = self.index
        if not enabled:
            return
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            logger.info("use_gpu=True but faiss-gpu/CUDA is not available; searching on CPU")
            return
        if isinstance(faiss.downcast_index(self.index), faiss.IndexHNSW):
            logger.info("FAISS has no GPU HNSW; searching on CPU")
            return
        try:
            self._gpu_res = faiss.StandardGpuResources()
            self._search_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)
        except RuntimeError as exc:  # e.g. a PQ size the GPU kernels do not support
            logger.warning("cannot move the %s index to GPU (%s); searching on CPU", self.kind, exc)
            return
        logger.info("searching the %s index on GPU", self.kind)

    # -- searching --------------------------------------------------------------------
    def search(
        self, q_unit: torch.Tensor, pool: int, cfg: StoreConfig, bitmap: np.ndarray | None
    ) -> np.ndarray:
        """Candidate rows [B, pool] (-1 where fewer), restricted to ``bitmap`` if given.

        ``bitmap`` is a little-endian packed bit array over rows [0, n_indexed).
        """
        vecs = (
            self.reducer.queries(q_unit) if self.reducer else np.ascontiguousarray(q_unit.numpy())
        )
        index = self._search_index if bitmap is None else self.index  # GPU: no selectors
        params = _search_params(index, cfg, pool)
        if bitmap is not None:
            sel = faiss.IDSelectorBitmap(self.n_indexed, faiss.swig_ptr(bitmap))
            _set_selector(params, sel)
        _, labels = index.search(vecs, pool, params=params)
        return labels

    # -- files ------------------------------------------------------------------------
    def save(self, directory: Path, trained_on: int) -> IndexEntry:
        """Write the index (and PCA) under fresh names, fsync'd; returns its entry."""
        name = unique_name("index", ".faiss")
        faiss.write_index(self.index, str(directory / name))
        entries = [_entry(directory, name)]
        if self.reducer is not None:
            rname = unique_name("reducer", ".safetensors")
            self.reducer.save(directory / rname)
            entries.append(_entry(directory, rname))
        return IndexEntry(
            kind=self.kind,
            index=entries[0],
            reducer=entries[1] if self.reducer else None,
            n_indexed=self.n_indexed,
            trained_on=trained_on,
        )

    @classmethod
    def load(cls, directory: Path, entry: IndexEntry, verify: bool) -> AnnIndex:
        path = _check(directory, entry.index, verify)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise StoreCorruptError(f"cannot read index file {path}: {exc}", path) from None
        if index.ntotal != entry.n_indexed:
            raise StoreCorruptError(
                f"index file {path} holds {index.ntotal} vectors, manifest says {entry.n_indexed}",
                path,
            )
        reducer = None
        if entry.reducer is not None:
            rpath = _check(directory, entry.reducer, verify)
            try:
                reducer = Reducer.load(rpath)
            except Exception as exc:  # safetensors raises several types
                raise StoreCorruptError(f"cannot read PCA file {rpath}: {exc}", rpath) from None
        return cls(entry.kind, index, reducer, entry.n_indexed)


def _entry(directory: Path, name: str) -> FileEntry:
    path = directory / name
    fsync_file(path)
    return FileEntry(file=name, bytes=path.stat().st_size, blake2b=hash_file(path))


def _check(directory: Path, entry: FileEntry, verify: bool) -> Path:
    """Size always; checksum when ``verify`` or the file is small (cheap)."""
    path = Path(directory) / entry.file
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise StoreCorruptError(f"store file {path} is missing", path) from None
    if size != entry.bytes:
        raise StoreCorruptError(f"store file {path} has {size} bytes, expected {entry.bytes}", path)
    if (verify or size <= _SMALL_FILE) and hash_file(path) != entry.blake2b:
        raise StoreCorruptError(f"store file {path} fails its checksum", path)
    return path


def _search_params(index: faiss.Index, cfg: StoreConfig, pool: int) -> faiss.SearchParameters:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform()
        params.index_params = _search_params(inner.index, cfg, pool)
        params._keep = params.index_params  # keep the SWIG object alive
        return params
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(cfg.hnsw_ef_search, pool)
        return params
    if faiss.try_extract_index_ivf(inner) is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = cfg.ivf_nprobe
        return params
    return faiss.SearchParameters()


def _set_selector(params: faiss.SearchParameters, sel: faiss.IDSelector) -> None:
    params.sel = sel
    params._sel = sel  # keep alive for the duration of the search
    inner = getattr(params, "_keep", None)
    if inner is not None:
        _set_selector(inner, sel)
