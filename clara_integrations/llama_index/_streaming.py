"""Streaming glue for `ClaraLLM`: the pipeline's streamer as (text, delta) pairs, and
async iteration of a blocking iterator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..pipeline import Generation

logger = logging.getLogger(__name__)

_DONE = object()


def stream_text(
    run: Callable[..., Any], tokenizer: Any, lock: Any = None
) -> Iterator[tuple[str, str]]:
    """(text so far, delta) of ``run(streamer=..., stopping_criteria=...)``, through the
    pipeline's one streamer and hold-back rule. `lock` is accepted for compatibility and
    not needed: the model's `AdapterSet` lock serialises generation."""
    stream = Generation(tokenizer, run).stream()
    for delta in stream:
        yield stream.text, delta


async def astream_text(sync_iter: Iterator[Any]) -> AsyncIterator[Any]:
    """Iterate a blocking iterator from async code without blocking the event loop."""
    try:
        while (item := await asyncio.to_thread(next, sync_iter, _DONE)) is not _DONE:
            yield item
    finally:
        close = getattr(sync_iter, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # still running in a worker thread (task cancelled)
                logger.debug("stream abandoned while a token was being generated")
