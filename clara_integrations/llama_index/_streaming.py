"""Streaming glue for `ClaraLLM`: async iteration of a blocking iterator (the pipeline's
one streamer does the rest)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

logger = logging.getLogger(__name__)

_DONE = object()


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
