"""Memory of documents that a stage compresses without gradient, computed once per stage.

`retrieval` (unless it trains the compressor: `--retrieval-negatives queries`) and `e2e`
read every question's candidates through the frozen compressor (the reference does the
same, under `no_grad`); the same candidates come back across
questions and epochs (the SQuAD dev file: 1,190 candidates, 37 distinct texts). Instead of
compressing them again for every question, `MemoryCache.fill` compresses each distinct
text of the stage's schedule once, before the first step, and the objectives look the
rows up by text.

Two choices make a cached run reproducible:

* the compressor runs in eval mode (no LoRA dropout), as it does at inference: a memory
  is a fixed function of its text, so it can be reused at all (the uncached fast path
  does the same, and gives the same losses);
* the whole schedule's distinct texts are compressed, sorted, in fixed batches, so a run
  resumed after `kill -9` computes bit-identical rows to an uninterrupted one.

With a `directory` (`--memory-cache-dir`), what a fill compresses is also saved there and
a later run that would compress exactly the same set the same way loads it instead
(`memory_files.py` says what "the same" covers).

Example:
    >>> cache = MemoryCache(model)
    >>> cache.fill(["Paris is in France.", "Rome is in Italy.", "Paris is in France."])
    >>> len(cache)
    2
    >>> memory, mse = cache.lookup(["Rome is in Italy.", "Paris is in France."])
    >>> tuple(memory.shape) == (2, model.n_mem, model.hidden_size), tuple(mse.shape)
    (True, (2,))
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from clara_integrations import ClaraModel
from clara_integrations._filelock import process_lock
from clara_integrations.modeling.adapters import ENCODER_ADAPTER

from .memory_files import load_memories, memory_file_key, save_memories

__all__ = ["MemoryCache", "frozen_memory"]

logger = logging.getLogger(__name__)


def frozen_memory(
    model: ClaraModel,
    texts: Sequence[str],
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compressor memory of `texts` without gradient and without dropout:
    ((N, n_mem, H), per-text MSE term (N,)). The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            memory, mse = model.encode_texts(
                list(texts), ENCODER_ADAPTER, batch_size, with_mse="rows"
            )
    finally:
        model.train(was_training)
    return memory, mse


class MemoryCache:
    """Frozen-compressor memory keyed by document text (one stage's worth).

    Rows are kept on the model's device in the model's dtype: a 135M base with 8 memory
    vectors of 576 floats takes 18 KB per document.
    """

    def __init__(
        self,
        model: ClaraModel | None = None,
        batch_size: int = 64,
        directory: str | Path | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.directory = Path(directory) if directory is not None else None
        self._index: dict[str, int] = {}
        self._memory: torch.Tensor | None = None  # (U, n_mem, H)
        self._mse: torch.Tensor | None = None  # (U,)
        self._pending: list[str] = []
        self.seconds = 0.0  # time spent compressing, for the logs

    def expect(self, texts: Sequence[str]) -> None:
        """Register the stage's documents; the first `lookup` compresses them all (inside
        the first step, under its autocast, so the step's time includes it)."""
        self._pending.extend(texts)

    def __len__(self) -> int:
        return len(self._index)

    def fill(
        self,
        texts: Sequence[str],
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        """Compress the distinct texts of `texts` not cached yet (sorted, so that the same
        set always gives the same batches and so the same numbers)."""
        missing = sorted(set(texts) - self._index.keys())
        if not missing:
            return
        if self.model is None:
            raise ValueError("MemoryCache(model=...) is needed to compress documents")
        started = time.perf_counter()
        memory, mse = self._compress_or_load(missing, autocast)
        base = len(self._index)
        self._index.update((text, base + i) for i, text in enumerate(missing))
        self._memory = memory if self._memory is None else torch.cat([self._memory, memory])
        self._mse = mse if self._mse is None else torch.cat([self._mse, mse])
        self.seconds += time.perf_counter() - started

    def _compress(
        self, texts: list[str], autocast: Callable[[], contextlib.AbstractContextManager]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.model is not None
        started = time.perf_counter()
        memory, mse = frozen_memory(self.model, texts, self.batch_size, autocast)
        logger.info(
            "compressed %d distinct documents once for the stage (%.1f s)",
            len(texts),
            time.perf_counter() - started,
        )
        return memory.detach(), mse.detach()

    def _compress_or_load(
        self,
        texts: list[str],
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.model is not None
        model = self.model
        if self.directory is None:
            return self._compress(texts, autocast)
        started = time.perf_counter()
        with autocast():  # the key records the autocast state the rows are made under
            key = memory_file_key(model, texts, self.batch_size)
        path = self.directory / f"{key}.safetensors"
        self.directory.mkdir(parents=True, exist_ok=True)
        # One lock per set: a second run on the same set waits and then loads the file.
        with process_lock(self.directory / f"{key}.lock"):
            loaded = load_memories(path, len(texts))
            if loaded is not None:
                logger.info(
                    "loaded the memory of %d distinct documents from %s (%.1f s) instead of "
                    "compressing them",
                    len(texts),
                    path,
                    time.perf_counter() - started,
                )
                model.warn_if_truncated(texts)
                memory, mse = loaded
                return memory.to(model.device), mse.to(model.device)  # dtype as computed
            _warn_if_other_sets_cached(path, model.model_identity, len(texts))
            memory, mse = self._compress(texts, autocast)
            save_memories(path, memory, mse, model.model_identity)
        return memory, mse

    def _fill_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self.fill(pending)

    def lookup(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """((N, n_mem, H), MSE terms (N,)) of `texts`, all of which must have been filled.

        Raises:
            KeyError: a text was not filled (the stage's schedule did not contain it).
        """
        self._fill_pending()
        if self._memory is None or self._mse is None:
            raise KeyError(
                "the memory cache is empty: call fill() or expect() with the stage's "
                "documents first"
            )
        rows = self.rows(texts)
        return self._memory[rows], self._mse[rows]

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        """Row numbers (N,) of `texts` in `bank()` (all of them must have been filled).

        Raises:
            KeyError: a text was not filled.
        """
        self._fill_pending()
        if self._memory is None:
            raise KeyError("the memory cache is empty")
        try:
            return torch.as_tensor([self._index[t] for t in texts], device=self._memory.device)
        except KeyError as exc:
            raise KeyError(f"document not in the memory cache: {str(exc)[:80]}") from None

    def bank(self) -> torch.Tensor:
        """Every cached memory (U, n_mem, H), in row order: the negatives of
        `--retrieval-negatives bank` (the whole stage's documents, not only a question's
        candidates)."""
        self._fill_pending()
        if self._memory is None:
            raise KeyError("the memory cache is empty: call fill() or expect() first")
        return self._memory


def _warn_if_other_sets_cached(path: Path, identity: str, count: int) -> None:
    """A miss beside files of the same compressor usually means the document set changed,
    which a user expecting the cache to skip compression should hear about."""
    directory = path.parent
    others = [p for p in directory.glob(f"{identity}-*.safetensors") if p != path]
    if others:
        warnings.warn(
            f"the memory cache {directory} holds {len(others)} file(s) for this compressor but "
            f"none for these {count} documents, so they are compressed again. A file is reused "
            "only for exactly the same documents: a stage shorter than one epoch uses the "
            "documents of the examples it reaches, which change with --seed, --max-steps and "
            "the data (and with the dtype, autocast, device, encode batch size and versions)",
            stacklevel=4,
        )
