"""One generation, answered whole or streamed: the pipeline's only streamer and stop rule.

A `Generation` is prepared (inputs validated and built) before anything runs, so bad input
raises at the call, not at the first streamed token. Running it decodes greedily (or
samples) with `transformers` `generate`, collecting token ids through a streamer; the text
is always `reference_decode` of those ids, cut before the first stop string, so a
streamed answer concatenates to exactly the whole answer.

The hold-back rule (one, for every adapter): a streamed delta never contains characters
that a later token could still change or cut. Two things can: the reference's decode
clean-up rewrites up to `CLEANUP_HOLD` characters at the end of the text (``" n'"`` may
become ``"n't"``), and a stop string may be completing. A stop string that shows up later
starts at most ``len(stop) - 1`` characters before the end of the part the clean-up can no
longer change, hence ``hold = CLEANUP_HOLD + max(len(stop) - 1)``. A split multi-byte
character (a trailing U+FFFD) is held until its last byte arrives.

Thread safety: no lock here. Generation runs in `ClaraModel.generate_*`, which holds the
model's `AdapterSet` lock for the whole decode (see `ClaraPipeline`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..modeling.tokens import _CLEANUP_REPLACEMENTS, reference_decode

__all__ = ["CLEANUP_HOLD", "Answer", "AnswerStream", "Generation", "sampling_kwargs"]

logger = logging.getLogger(__name__)

# Longest clean-up pattern (" n't") minus one: a pattern only rewrites its own characters,
# and until its last character arrives at most len - 1 of them are in the text.
CLEANUP_HOLD = max(len(old) for old, _ in _CLEANUP_REPLACEMENTS) - 1
_END = object()


def sampling_kwargs(temperature: float, top_p: float | None = None) -> dict[str, Any]:
    """`generate` keywords for `temperature`: none for 0 (greedy, the reference), else
    sampling at that temperature (and `top_p` if given).

    Raises:
        ValueError: a negative temperature.

    Example:
        >>> sampling_kwargs(0.0), sampling_kwargs(0.7, top_p=0.9)
        ({}, {'do_sample': True, 'temperature': 0.7, 'top_p': 0.9})
    """
    temperature = float(temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return {}
    return {
        "do_sample": True,
        "temperature": temperature,
        **({"top_p": top_p} if top_p is not None else {}),
    }


@dataclass(frozen=True)
class Answer:
    """A finished generation.

    Attributes:
        text: the answer (reference decode, cut before the first stop string).
        token_ids: the generated token ids (special tokens included).
        stopped: a stop string ended it.
        prompt_tokens: tokens the decoder read before generating (memory slots included).
        num_documents: documents read from memory (0 for a plain chat answer).
        memory_tokens: memory vectors spliced into the prompt.
        max_new_tokens: the generation limit it ran under (None: not known).

    Example:
        >>> Answer("Paris", (42, 2), False, 30, 2, 8, 2).finish_reason
        'length'
    """

    text: str
    token_ids: tuple[int, ...]
    stopped: bool
    prompt_tokens: int
    num_documents: int
    memory_tokens: int
    max_new_tokens: int | None

    @property
    def finish_reason(self) -> str:
        """``"length"`` when it ran out of new tokens, else ``"stop"`` (end of sequence or
        a stop string)."""
        full = self.max_new_tokens is not None and len(self.token_ids) >= self.max_new_tokens
        return "length" if full and not self.stopped else "stop"


class Generation:
    """One prepared generation: how to run it and how its token ids become text.

    Built by `ClaraPipeline.prepare_answer` / `prepare_chat`; `run` answers whole,
    `stream` yields deltas under the module's hold-back rule.

    Args:
        tokenizer: the model's tokenizer (for `reference_decode`).
        run: ``run(streamer=..., stopping_criteria=...)`` starts the decode (the
            `generate` call with everything else bound).
        stop: stop strings (empty ones are ignored).
        max_new_tokens, prompt_tokens, num_documents, memory_tokens: reported in `Answer`.

    Example:
        >>> from clara_integrations.pipeline import ClaraPipeline
        >>> gen = ClaraPipeline(model).prepare_chat([{"role": "user", "content": "Hi"}], max_new_tokens=4)
        >>> answer = gen.run()
        >>> len(answer.token_ids) <= 4, answer.num_documents
        (True, 0)
    """

    def __init__(
        self,
        tokenizer: Any,
        run: Callable[..., Any],
        *,
        stop: Sequence[str] = (),
        max_new_tokens: int | None = None,
        prompt_tokens: int = 0,
        num_documents: int = 0,
        memory_tokens: int = 0,
    ) -> None:
        if isinstance(stop, str):
            stop = [stop]
        self.tokenizer = tokenizer
        self.stops = [s for s in stop if s]
        self.max_new_tokens = max_new_tokens
        self.prompt_tokens, self.num_documents = prompt_tokens, num_documents
        self.memory_tokens = memory_tokens
        self.hold = CLEANUP_HOLD + max([len(s) - 1 for s in self.stops], default=0)
        self._run = run

    def decode(self, ids: Sequence[int]) -> tuple[str, bool]:
        """(the answer text of `ids`, whether a stop string cut it)."""
        text = reference_decode(self.tokenizer, [list(ids)])[0]
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def stable_text(self, ids: Sequence[int]) -> tuple[str, bool]:
        """The prefix of the answer that later tokens can no longer change or cut."""
        text, stopped = self.decode(ids)
        if stopped:
            return text, True
        end = min(len(text) - self.hold, len(text.rstrip("\ufffd")))  # \ufffd: split char
        return text[: max(end, 0)], False

    def answer(self, ids: Sequence[int]) -> Answer:
        """The `Answer` for the generated `ids`."""
        text, stopped = self.decode(ids)
        return Answer(
            text,
            tuple(ids),
            stopped,
            self.prompt_tokens,
            self.num_documents,
            self.memory_tokens,
            self.max_new_tokens,
        )

    def execute(self, streamer: _Ids, cancel: threading.Event) -> None:
        """Decode (blocking), pushing ids to `streamer`; `cancel` stops at the next token."""
        self._run(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop(self, cancel)]))

    def run(self) -> Answer:
        """Generate the whole answer in this thread."""
        ids = _Ids(live=False)
        self.execute(ids, threading.Event())
        return self.answer(ids.ids)

    def stream(self) -> AnswerStream:
        """Generate in a worker thread, yielding text deltas (see `AnswerStream`)."""
        return AnswerStream(self)


class AnswerStream:
    """Iterator of an answer's text deltas; they concatenate to the whole answer.

    Generation starts at the first `next` in a worker thread and stops early when the
    stream is closed (or garbage-collected). Errors of the generation re-raise in the
    consumer. After the last delta, `answer` holds the `Answer`; `text` is always what
    was yielded so far.

    Example:
        >>> from clara_integrations.pipeline import ClaraPipeline
        >>> pipeline = ClaraPipeline(model)
        >>> stream = pipeline.answer("Who?", pipeline.compress(["Paris is in France."]),
        ...                          stream=True, max_new_tokens=4)
        >>> "".join(stream) == stream.answer.text == stream.text
        True
    """

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.text = ""
        self.answer: Answer | None = None
        self._deltas = self._produce()

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        """Stop the generation (at its next token) and wait for it."""
        self._deltas.close()

    def _produce(self) -> Iterator[str]:
        gen = self.generation
        ids, cancel, failure = _Ids(live=True), threading.Event(), []

        def work() -> None:
            try:
                gen.execute(ids, cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                failure.append(exc)
            finally:
                ids.end()

        thread = threading.Thread(target=work, name="clara-generate", daemon=True)
        thread.start()
        stopped = False
        try:
            while (sofar := ids.queue.get()) is not _END:
                if stopped:
                    continue  # a stop string ended it: drain until the thread ends
                piece, stopped = gen.stable_text(sofar)
                if stopped:
                    cancel.set()
                if piece.startswith(self.text) and len(piece) > len(self.text):
                    delta, self.text = piece[len(self.text) :], piece
                    yield delta
        finally:
            cancel.set()  # also when the consumer closed the stream early
            thread.join()
        if failure:
            raise failure[0]
        answer = gen.answer(ids.ids)
        if not answer.text.startswith(self.text):  # cannot happen with the known clean-up rules
            logger.warning(
                "streamed text diverged from the final decoding; the streamed text is kept"
            )
            answer = replace(answer, text=self.text)
        self.answer = answer
        if len(answer.text) > len(self.text):
            delta, self.text = answer.text[len(self.text) :], answer.text
            yield delta


class _Ids(BaseStreamer):
    """Collects generated ids; when `live`, queues the ids so far after each token."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.ids: list[int] = []
        self.queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt ids (empty here)
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        if self.live:
            self.queue.put(list(self.ids))

    def end(self) -> None:
        self.queue.put(_END)  # generate() and the worker both end: the first one counts


class _Stop(StoppingCriteria):
    """Stops on a stop string in the decoded answer, or once the consumer went away."""

    def __init__(self, generation: Generation, cancel: threading.Event) -> None:
        self.generation, self.cancel = generation, cancel

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        # With inputs_embeds only, generate() passes just the generated ids (B = 1 here).
        done = self.cancel.is_set() or (
            bool(self.generation.stops) and self.generation.decode(input_ids[0].tolist())[1]
        )
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
