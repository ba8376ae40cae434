"""`ChatClara`: a LangChain chat model that answers from documents' memory tokens."""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field, model_validator
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..modeling import ClaraModel
from ..modeling.assets import default_model
from ..modeling.tokens import reference_decode
from ..store import MemoryStore
from ._common import check_store, document_memories

__all__ = ["ChatClara"]

logger = logging.getLogger(__name__)

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_CALL_KEYS = frozenset({"documents", "max_new_tokens", "max_tokens", "temperature"})
# Longest pattern of the reference's decode clean-up (" n't"): a streamed chunk keeps the
# last 3 characters back, since the next token can still turn them into something else.
_CLEANUP_HOLD = 3
_END = object()


class ChatClara(BaseChatModel):
    """CLaRa's generator as a LangChain chat model.

    With documents (`invoke(question, documents=docs)`) the generator reads their memory
    tokens, spliced into CLaRa's answer prompt, never their text: a document whose `id`
    is in `store` uses its stored memory, any other is compressed on the fly; a tensor
    `(k, n_mem, H)` of memories is accepted too. The question is the last human
    message; CLaRa's generator was trained on single-turn prompts, so earlier turns and
    system messages are not part of its prompt. Without documents it is the plain base
    chat model (chat template, no adapter). Greedy unless `temperature > 0`.

    Example:
        >>> llm = ChatClara(model=model, store=store, max_new_tokens=64)  # doctest: +SKIP
        >>> docs = retriever.invoke("Who is the Eiffel Tower named after?")  # doctest: +SKIP
        >>> llm.invoke("Who is the Eiffel Tower named after?", documents=docs).content  # doctest: +SKIP
        'Gustave Eiffel'
        >>> for chunk in llm.stream("Hi"):  # no documents: the base chat model  # doctest: +SKIP
        ...     chunk.content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(),
                              populate_by_name=True)

    model: ClaraModel = Field(default_factory=default_model)
    """The loaded CLaRa model; its generator adapter answers from memory."""
    store: MemoryStore | None = None
    """Store whose documents' memory is read by id (None: compress document text)."""
    max_new_tokens: int = Field(default=128, gt=0,
                                validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    """Most tokens to generate (alias `max_tokens`, LangChain's standard name)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 decodes greedily (the reference); above 0 samples at this temperature."""
    stop: list[str] | None = None
    """Stop sequences: generation ends at the first one, which is not returned."""
    streaming: bool = False
    """Make `invoke` stream internally (callbacks receive tokens)."""
    model_name: str | None = None
    """Name reported in traces and `response_metadata` (default: `clara/<base model>`)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # After pydantic, so a mismatch surfaces as StoreMismatchError, not ValidationError.
        if self.store is not None:
            check_store(self.model, self.store)

    @model_validator(mode="after")
    def _default_name(self) -> ChatClara:
        if self.model_name is None:
            base = str(self.model.config.decoder_model_name).rstrip("/").rsplit("/", 1)[-1]
            self.model_name = f"clara/{base}"
        return self

    @property
    def _llm_type(self) -> str:
        return "clara-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        name = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="clara", ls_model_type="chat",
            ls_model_name=name if isinstance(name, str) else self.model_name,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop)
        return params

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        # LangChain's cache key is str() of the call kwargs; a tensor's str() is truncated,
        # so two different memory tensors could share a key. Key them by content instead.
        documents = kwargs.get("documents")
        if isinstance(documents, torch.Tensor):
            digest = hashlib.sha256(documents.detach().float().cpu().numpy().tobytes()).hexdigest()
            kwargs["documents"] = f"memory:{tuple(documents.shape)}:sha256:{digest}"
        return super()._get_llm_string(stop=stop, **kwargs)

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        job = self._job(messages, stop, kwargs)
        job.run(threading.Event())
        ids = job.streamer.ids
        text, stopped = job.decode(ids)
        message = AIMessage(content=text, usage_metadata=job.usage(ids),
                            response_metadata=job.response_metadata(ids, stopped))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        job = self._job(messages, stop, kwargs)
        job.streamer.live = True
        cancel = threading.Event()

        def work() -> None:
            try:
                job.run(cancel)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                job.streamer.fail(exc)
            finally:
                job.streamer.end()

        thread = threading.Thread(target=work, name="ChatClara.generate", daemon=True)
        thread.start()
        emitted, stopped = "", False
        try:
            for ids in job.streamer:
                if stopped:
                    continue  # drain until the generate thread ends
                piece, stopped = job.stable_text(ids)
                if stopped:
                    cancel.set()
                if piece.startswith(emitted) and len(piece) > len(emitted):
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece[len(emitted):]))
                    emitted = piece
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        finally:
            cancel.set()
            thread.join()
        ids = job.streamer.ids
        text, stopped = job.decode(ids)
        if not text.startswith(emitted):  # cannot happen with a prefix-stable decoder
            logger.warning("streamed text diverged from the final decode; tail dropped")
            text = emitted
        last = ChatGenerationChunk(message=AIMessageChunk(
            content=text[len(emitted):], chunk_position="last", usage_metadata=job.usage(ids),
            response_metadata=job.response_metadata(ids, stopped),
        ))
        if run_manager and last.text:
            run_manager.on_llm_new_token(last.text, chunk=last)
        yield last

    # ------------------------------------------------------------------ internals
    def _job(self, messages: Sequence[BaseMessage], stop: list[str] | None,
             kwargs: dict[str, Any]) -> _Job:
        """Validate a call and prepare everything but the decoding loop."""
        kwargs = dict(kwargs)
        kwargs.pop("stream", None)  # LangChain's own routing flag
        if "model" in kwargs:
            raise ValueError("ChatClara runs the ClaraModel it was built with; a per-call "
                             "`model=` cannot switch it")
        unknown = sorted(set(kwargs) - _CALL_KEYS)
        if unknown:
            raise TypeError(f"ChatClara got unexpected keyword arguments {unknown}; "
                            f"accepted: {sorted(_CALL_KEYS)}")
        max_new = kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new!r}")
        temperature = float(kwargs.get("temperature", self.temperature))
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        stops = [s for s in (stop if stop is not None else self.stop) or [] if s]
        gen: dict[str, Any] = {"max_new_tokens": max_new}
        if temperature > 0:
            gen.update(do_sample=True, temperature=temperature)
        documents = kwargs.get("documents")
        if documents is not None and not isinstance(documents, torch.Tensor):
            documents = list(documents)
        model = self.model
        if documents is None or len(documents) == 0:
            chat = _chat_messages(messages)
            n_in = _chat_prompt_length(model, chat)

            def run(generate_kwargs: dict[str, Any]) -> None:
                model.generate_from_messages(chat, **generate_kwargs)
        else:
            question = _question(messages)
            memories = document_memories(model, self.store, documents)
            inputs = model.prepare_generation_inputs([question], memories)
            n_in = int(inputs["attention_mask"].sum())

            def run(generate_kwargs: dict[str, Any]) -> None:
                model.generate_from_embeddings(inputs["inputs_embeds"], inputs["attention_mask"],
                                               **generate_kwargs)
        return _Job(self, run, gen, stops, n_in)


class _Job:
    """One prepared generation: how to run it, and how to turn its token ids into text."""

    def __init__(self, llm: ChatClara, run: Callable[[dict[str, Any]], None],
                 gen: dict[str, Any], stops: list[str], input_tokens: int) -> None:
        self.tokenizer = llm.model.tokenizer
        self.model_name = llm.model_name
        self._run, self.gen, self.stops = run, gen, stops
        self.input_tokens = input_tokens
        self.streamer = _TokenStreamer()

    def run(self, cancel: threading.Event) -> None:
        """Decode (blocking), pushing tokens to `self.streamer`; `cancel` stops early."""
        criteria = StoppingCriteriaList([_StopCriterion(self, cancel)])
        self._run({**self.gen, "streamer": self.streamer, "stopping_criteria": criteria})

    def decode(self, ids: list[int]) -> tuple[str, bool]:
        """The answer text (reference decode), cut before the first stop sequence."""
        text = reference_decode(self.tokenizer, [ids])[0]
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[:min(cuts)], True) if cuts else (text, False)

    def stable_text(self, ids: list[int]) -> tuple[str, bool]:
        """The prefix of the answer that later tokens can no longer change."""
        text, stopped = self.decode(ids)
        if stopped:
            return text, True
        hold = max([_CLEANUP_HOLD] + [len(s) - 1 for s in self.stops])
        end = min(len(text) - hold, len(text.rstrip("\ufffd")))  # \ufffd: a split UTF-8 char
        return text[:max(end, 0)], False

    def usage(self, ids: list[int]) -> UsageMetadata:
        return UsageMetadata(input_tokens=self.input_tokens, output_tokens=len(ids),
                             total_tokens=self.input_tokens + len(ids))

    def response_metadata(self, ids: list[int], stopped: bool) -> dict[str, Any]:
        hit_limit = not stopped and len(ids) >= self.gen["max_new_tokens"]
        return {"model_name": self.model_name, "model_provider": "clara",
                "finish_reason": "length" if hit_limit else "stop"}


class _TokenStreamer(BaseStreamer):
    """Collects generated ids; when `live`, iterating yields the ids so far after each
    new token (`_stream` consumes them from another thread)."""

    def __init__(self) -> None:
        self.live = False
        self.ids: list[int] = []
        self._queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False
        self._error: BaseException | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the (empty) prompt ids
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        if self.live:
            self._queue.put(list(self.ids))

    def end(self) -> None:
        self._queue.put(_END)

    def fail(self, error: BaseException) -> None:
        self._error = error

    def __iter__(self) -> Iterator[list[int]]:
        while (item := self._queue.get()) is not _END:
            yield item
        if self._error is not None:
            raise self._error


class _StopCriterion(StoppingCriteria):
    """Stops on a stop sequence in the decoded answer, or when the consumer went away."""

    def __init__(self, job: _Job, cancel: threading.Event) -> None:
        self.job, self.cancel = job, cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        # With inputs_embeds only, generate() passes just the generated ids (B=1 here).
        done = self.cancel.is_set() or (
            bool(self.job.stops) and self.job.decode(input_ids[0].tolist())[1])
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            raise ValueError(f"ChatClara reads text only; got a {block.get('type')!r} content block"
                             if isinstance(block, dict) else "ChatClara reads text only")
    return "".join(parts)


def _chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    if not messages:
        raise ValueError("messages is empty")
    out = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"ChatClara cannot send a {message.type!r} message to the model")
        out.append({"role": role, "content": _message_text(message)})
    return out


def _chat_prompt_length(model: ClaraModel, chat: list[dict[str, str]]) -> int:
    """Prompt tokens of the plain chat path, counted as `generate_from_messages` builds it."""
    text = model.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def _question(messages: Sequence[BaseMessage]) -> str:
    humans = [m for m in messages if m.type == "human"]
    if not humans:
        raise ValueError("ChatClara needs a human message (the question) to answer from documents")
    if len(messages) > 1:
        logger.debug("CLaRa's answer prompt is single-turn: using only the last human message")
    question = _message_text(humans[-1])
    if not question.strip():
        raise ValueError("the question (last human message) is empty")
    return question
