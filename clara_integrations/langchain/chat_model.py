"""`ChatClara`: a LangChain chat model that answers from documents' memory tokens."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, model_validator

from ..modeling import ClaraModel
from ..modeling.assets import default_model
from ..pipeline import Answer, Generation, MemoryStoreProtocol, check_question, sampling_kwargs
from ..pipeline.context import REGISTRY
from ._common import PipelineOwner, to_items

__all__ = ["ChatClara"]

logger = logging.getLogger(__name__)

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_CALL_KEYS = frozenset({"documents", "max_new_tokens", "max_tokens", "temperature"})


class ChatClara(PipelineOwner, BaseChatModel):
    """CLaRa's generator as a LangChain chat model.

    With documents (`invoke(question, documents=docs)`) the generator reads their memory
    tokens, spliced into CLaRa's answer prompt, never their text: a document whose `id`
    is in `store` with the stored text uses its stored memory, any other is compressed
    on the fly (an id with other text is, with a warning); a tensor
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

    model_config = ConfigDict(
        arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True
    )

    model: ClaraModel = Field(default_factory=default_model)
    """The loaded CLaRa model; its generator adapter answers from memory."""
    store: MemoryStoreProtocol | None = None
    """Store whose documents' memory is read by id (None: compress document text, once)."""
    max_new_tokens: int = Field(
        default=128, gt=0, validation_alias=AliasChoices("max_new_tokens", "max_tokens")
    )
    """Most tokens to generate (alias `max_tokens`, LangChain's standard name)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 decodes greedily (the reference); above 0 samples at this temperature."""
    stop: list[str] | None = None
    """Stop sequences: generation ends at the first one, which is not returned."""
    streaming: bool = False
    """Make `invoke` stream internally (callbacks receive tokens)."""
    model_name: str | None = None
    """Name reported in traces and `response_metadata` (default: `clara/<base model>`)."""
    _warned_dropped: bool = PrivateAttr(default=False)
    _warned_no_documents: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # After pydantic, so a mismatch surfaces as StoreMismatchError, not ValidationError.
        _ = self.pipeline

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
        return {
            "model_name": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        name = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="clara",
            ls_model_type="chat",
            ls_model_name=name if isinstance(name, str) else self.model_name,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get(
                "max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)
            ),
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

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` in the model's own tokenizer (what `get_num_tokens`,
        `trim_messages` and token-buffer memories count with); never a download.

        Example:
            >>> ChatClara(model=model).get_num_tokens("Paris is in France.") > 0  # doctest: +SKIP
            True
        """
        return self.model.tokenizer.encode(text, add_special_tokens=False)

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        answer = self._job(messages, stop, kwargs).run()
        message = AIMessage(
            content=answer.text,
            usage_metadata=_usage(answer),
            response_metadata=self._metadata(answer),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream = self._job(messages, stop, kwargs).stream()
        try:
            for delta in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            stream.close()  # a consumer that stops early stops the generation
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                usage_metadata=_usage(stream.answer),
                response_metadata=self._metadata(stream.answer),
            )
        )

    # ------------------------------------------------------------------ internals
    def _job(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Generation:
        """Validate a call and prepare everything but the decoding loop."""
        kwargs = dict(kwargs)
        kwargs.pop("stream", None)  # LangChain's own routing flag
        if "model" in kwargs:
            raise ValueError(
                "ChatClara runs the ClaraModel it was built with; a per-call "
                "`model=` cannot switch it"
            )
        unknown = sorted(set(kwargs) - _CALL_KEYS)
        if unknown:
            raise TypeError(
                f"ChatClara got unexpected keyword arguments {unknown}; "
                f"accepted: {sorted(_CALL_KEYS)}"
            )
        gen = {
            "max_new_tokens": kwargs.get(
                "max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)
            ),
            "stop": (stop if stop is not None else self.stop) or (),
            **sampling_kwargs(kwargs.get("temperature", self.temperature)),
        }
        documents = kwargs.get("documents")
        if documents is None or len(documents) == 0:
            in_prompt = self._documents_in_prompt(messages)
            if in_prompt is None:
                if documents is not None:
                    self._warn_no_documents()
                return self.pipeline.prepare_chat(_chat_messages(messages), **gen)
            question, memory = in_prompt
            return self.pipeline.prepare_answer(question, self.pipeline.memory_batch(memory), **gen)
        self._warn_dropped(messages)
        question = _question(messages)
        memories = (
            self.pipeline.memory_batch(documents)
            if isinstance(documents, torch.Tensor)
            else self.pipeline.memories(to_items(list(documents)))
        )
        return self.pipeline.prepare_answer(question, memories, **gen)

    def _documents_in_prompt(
        self, messages: Sequence[BaseMessage]
    ) -> tuple[str, torch.Tensor] | None:
        """(question, memory (k, n_mem, H)) when the messages hold documents a CLaRa
        retriever just returned (a prompt template filled with their text: the LCEL
        ``{"context": retriever | format_docs, ...} | prompt | ChatClara()`` pattern, or
        the context in a system message); the question is the last human message with
        the documents' text taken out. None (the text path) otherwise."""
        humans = [i for i, m in enumerate(messages) if m.type == "human"]
        if not humans:
            return None
        identity = self.model.model_identity
        texts = [_message_text(m) for m in messages]
        found = [REGISTRY.find(identity, t) for t in texts]
        if not any(found):
            return None
        last = texts[humans[-1]]
        pieces, at = [], 0
        for start, end, _ in found[humans[-1]]:
            pieces.append(last[at:start])
            at = end
        pieces.append(last[at:])
        question = " ".join("".join(pieces).split())
        spans = [span for per_message in found for span in per_message]
        if not question:
            logger.warning(
                "ChatClara: the prompt is only the text of %d retrieved documents, with no "
                "question left beside them; answering from the text",
                len(spans),
            )
            return None
        logger.info(
            "ChatClara: the prompt holds %d retrieved documents (%d of its %d characters); "
            "answering from their memory, with the rest of the last human message as the "
            "question",
            len(spans),
            sum(end - start for start, end, _ in spans),
            sum(map(len, texts)),
        )
        self._warn_dropped(messages)
        return check_question(question), torch.stack([m for _, _, m in spans])

    def _warn_no_documents(self) -> None:
        """`documents=[]` (a retriever that found nothing, in a RAG chain) is answered by
        the plain base chat model, from no document at all: say so once."""
        if not self._warned_no_documents:
            self._warned_no_documents = True
            logger.warning(
                "ChatClara got documents=[] (0 documents): answering with the plain base chat "
                "model, from no document; check the retriever (shown once per ChatClara)"
            )

    def _warn_dropped(self, messages: Sequence[BaseMessage]) -> None:
        """CLaRa's answer prompt is one question over memories: say once what is left out."""
        humans = [m for m in messages if m.type == "human"]
        others = len(messages) - 1 if humans else 0
        if others and not self._warned_dropped:
            self._warned_dropped = True
            logger.warning(
                "ChatClara answers from memory with CLaRa's single-turn prompt: %d of the %d "
                "messages (system messages, earlier turns) are not part of it; put what they "
                "say into the question if it matters (shown once per ChatClara)",
                others,
                len(messages),
            )

    def _metadata(self, answer: Answer) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "clara",
            "finish_reason": answer.finish_reason,
        }


def _usage(answer: Answer) -> UsageMetadata:
    n_out = len(answer.token_ids)
    return UsageMetadata(
        input_tokens=answer.prompt_tokens,
        output_tokens=n_out,
        total_tokens=answer.prompt_tokens + n_out,
    )


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
            raise ValueError(
                f"ChatClara reads text only; got a {block.get('type')!r} content block"
                if isinstance(block, dict)
                else "ChatClara reads text only"
            )
    return "".join(parts)


def _chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"ChatClara cannot send a {message.type!r} message to the model")
        if isinstance(message, AIMessage) and message.tool_calls:
            # The base chat template has no tools: the calls would vanish, and the model
            # would read an empty assistant turn.
            names = [call["name"] for call in message.tool_calls]
            raise ValueError(
                f"ChatClara cannot send an AI message's tool calls {names} to the model (it has "
                "no tool calling); drop them, or describe their results in a message's text"
            )
        out.append({"role": role, "content": _message_text(message)})
    return out


def _question(messages: Sequence[BaseMessage]) -> str:
    humans = [m for m in messages if m.type == "human"]
    if not humans:
        raise ValueError("ChatClara needs a human message (the question) to answer from documents")
    return check_question(_message_text(humans[-1]))
