"""Token streaming for `ClaraLLM`: generation in a worker thread, text deltas out.

The deltas are cut from the same decoding the non-streaming path uses
(`reference_decode`, which applies the reference's space clean-up), so the concatenated
stream equals the `complete` answer. A clean-up rule can rewrite up to ``_HOLD_BACK``
characters at the end of the text (e.g. ``" ."`` -> ``"."``), and a multi-byte character
may be split across tokens, so that tail is held back until the next token settles it.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..modeling.tokens import reference_decode

logger = logging.getLogger(__name__)

_HOLD_BACK = 4  # longest clean-up pattern (" n't", " 've", ...)
_DONE = object()


class _TokenQueue(BaseStreamer):
    """Receives generated ids from `generate` and queues the growing decoded text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt ids (empty here)
            self._prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self.queue.put(reference_decode(self.tokenizer, [self.ids])[0])

    def end(self) -> None:
        self.queue.put(_DONE)


class _StopFlag(StoppingCriteria):
    """Stops generation early once the consumer has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def stream_text(run: Callable[..., Any], tokenizer: Any, lock: Any) -> Iterator[tuple[str, str]]:
    """Run ``run(streamer=..., stopping_criteria=...)`` in a thread holding `lock`;
    yield (full text so far, delta). Exceptions of the generation re-raise here."""
    streamer = _TokenQueue(tokenizer)
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with lock:
                run(streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopFlag(stop)]))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            failure.append(exc)
        finally:
            streamer.queue.put(_DONE)

    thread = threading.Thread(target=work, name="clara-generate", daemon=True)
    thread.start()
    emitted = ""
    text = ""
    try:
        while (item := streamer.queue.get()) is not _DONE:
            text = item
            stable = len(text) - _HOLD_BACK
            while stable > len(emitted) and text[stable - 1] == "\ufffd":
                stable -= 1  # a split multi-byte character: wait for the rest
            if stable > len(emitted) and text.startswith(emitted):
                delta, emitted = text[len(emitted):stable], text[:stable]
                yield emitted, delta
        thread.join()
        if failure:
            raise failure[0]
        if text.startswith(emitted) and len(text) > len(emitted):
            yield text, text[len(emitted):]
        elif not text.startswith(emitted):  # cannot happen with the known clean-up rules
            logger.warning("streamed text diverged from the final decoding; final text kept")
            yield text, ""
    finally:
        stop.set()  # consumer closed the stream early: let generation end


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
