"""`ClaraLLM`: a LlamaIndex LLM whose generator answers from CLaRa memory tokens."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import LLMPredictEndEvent, LLMPredictStartEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import BaseNode, NodeWithScore

from ..modeling.assets import default_model
from ..pipeline import ClaraPipeline, Generation, sampling_kwargs
from ._context import REGISTRY
from ._memory import node_memory
from ._pickle import PicklesWhole
from ._streaming import astream_text

__all__ = ["ClaraLLM"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

MemoryLike = torch.Tensor | Sequence[Any]

_ANSWERS_KEPT = 256  # answers remembered per ClaraLLM for refine calls
_ANSWERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class _ContextPlan:
    """A text synthesizer's prompt, answered from memory: the question, the nodes'
    contents (as rendered for an LLM) and their memory (k, n_mem, H)."""

    question: str
    contents: tuple[str, ...]
    memory: torch.Tensor


class ClaraLLM(PicklesWhole, CustomLLM):
    """CLaRa's generator as a LlamaIndex LLM.

    With ``memory=`` (documents' memory: a ``(k, n_mem, H)`` / ``(k, n_mem * H)`` tensor,
    or nodes carrying memory in ``embedding``, e.g. from `ClaraRetriever`), the prompt is
    the question: the generator reads the k memories spliced into the reference answer
    prompt, never the documents' text. Without memory it is the plain base chat model
    (chat template, no adapter), so it also works as an ordinary LlamaIndex LLM.
    `ClaraSynthesizer` passes retrieved nodes' memory for you.

    LlamaIndex's default (text) synthesizers work too, so ``index.as_query_engine(
    llm=ClaraLLM(model))`` answers from memory without a ``response_synthesizer``: when a
    synthesizer's prompt holds ``query_str`` and a context made only of whole nodes that
    `ClaraRetriever`, `ClaraVectorStore` or `ClaraReranker` returned in this process
    (recognised by their text, see ``use_context_memory``), the generator reads those
    nodes' memory (k = their number, in context order) with ``query_str`` as the question:
    the answer `ClaraSynthesizer` gives for the same nodes. The template's wording is not
    used (CLaRa's answer prompt is fixed by training). A refine call (``existing_answer``,
    e.g. ``response_mode="refine"``) answers again over the memory of the nodes behind
    the existing answer plus the new ones, so the last answer is the one over all nodes.
    Anything else (nodes from another retriever, text a postprocessor changed, a node cut
    because the text exceeded ``context_window``, tree-summarize's second level) is read
    as text, with a logged warning.
    ``index.as_chat_engine(chat_mode="context", llm=...)`` answers each turn from memory
    the same way; its earlier turns are not part of CLaRa's single-turn prompt (said once:
    ``chat_mode="condense_question"`` rewrites each question to stand alone first).

    Every entry point has its sync, streaming and async forms (`complete`,
    `stream_complete`, `chat`, `stream_chat`, `acomplete`, ...). Answers with memory carry
    ``additional_kwargs={"prefill_tokens", "num_documents", "memory_tokens"}``.

    Args:
        model: a `ClaraModel`.
        max_new_tokens: tokens to generate.
        temperature: 0 (default) decodes greedily; above 0 samples with `top_p`.
        top_p: nucleus sampling mass when sampling.
        context_window: reported in `metadata` (default: the base LM's
            ``max_position_embeddings``).
        model_name: reported in `metadata` (default ``"clara/<base model>"``).
        generate_kwargs: extra `transformers` `generate` arguments for every call.
        use_context_memory: answer text synthesizers' prompts from the memory of the CLaRa
            nodes in their context (default); False reads the context as text. Recently
            returned nodes are remembered process-wide by content (10,000 nodes / 256 MiB
            at most, least recently used dropped first).

    Example:
        >>> llm = ClaraLLM(model=model, max_new_tokens=32)                  # doctest: +SKIP
        >>> memory = model.compress_documents(["Paris is the capital of France."])  # doctest: +SKIP
        >>> llm.complete("What is the capital of France?", memory=memory).text  # doctest: +SKIP
        >>> llm.complete("Say hi.").text   # no memory: the plain base chat model  # doctest: +SKIP
        >>> index.as_query_engine(llm=llm, similarity_top_k=2).query("Capital of France?")  # doctest: +SKIP
    """

    model_config = ConfigDict(protected_namespaces=("pydantic_model_",))

    max_new_tokens: int = Field(default=128, gt=0, description="Tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus mass when sampling.")
    context_window: int | None = Field(default=None, gt=0, description="Reported context window.")
    model_name: str | None = Field(default=None, description="Reported model name.")
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra transformers generate() arguments."
    )
    use_context_memory: bool = Field(
        default=True,
        description="Answer text synthesizers' prompts from the memory of the "
        "CLaRa nodes in their context instead of reading the text.",
    )

    _pipeline: ClaraPipeline = PrivateAttr()
    _warned_text_context: bool = PrivateAttr(default=False)
    _warned_template: bool = PrivateAttr(default=False)
    _warned_dropped: bool = PrivateAttr(default=False)
    _warned_history: bool = PrivateAttr(default=False)
    _answers: OrderedDict = PrivateAttr(default_factory=OrderedDict)

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = default_model() if model is None else model
        self._pipeline = ClaraPipeline(model)
        if self.model_name is None:
            self.model_name = f"clara/{Path(str(model.config.decoder_model_name)).name}"
        if self.context_window is None:
            self.context_window = int(
                getattr(model.decoder.config, "max_position_embeddings", 0) or 4096
            )

    @classmethod
    def class_name(cls) -> str:
        return "ClaraLLM"

    @property
    def model(self) -> Any:
        """The `ClaraModel` that generates."""
        return self._pipeline.model

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model_name,
        )

    # ------------------------------------------------------------------ preparation
    def _generate_kwargs(self, call_kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        call = dict(call_kwargs)
        # A per-call temperature/top_p goes through the same translation as the fields
        # (0: greedy, else do_sample): passed raw, transformers ignored it under greedy
        # decoding and refused temperature=0 under sampling.
        temperature = call.pop("temperature", self.temperature)
        top_p = call.pop("top_p", self.top_p)
        kwargs = {**self.generate_kwargs, **sampling_kwargs(temperature, top_p), **call}
        return int(kwargs.pop("max_new_tokens", self.max_new_tokens)), kwargs

    def memory_batch(self, memory: MemoryLike) -> torch.Tensor:
        """Normalise `memory` to ``(k, n_mem, H)`` on the model's device and dtype.

        Accepts a tensor ``(k, n_mem, H)``, ``(k, n_mem * H)`` or ``(n_mem, H)``, or a
        sequence of nodes (memory in ``embedding``), tensors, float lists or document
        texts (compressed once, cached).

        Raises:
            ValueError: empty memory, wrong sizes, or a node without CLaRa memory.
        """
        if not isinstance(memory, torch.Tensor):
            memory = list(memory)
            texts = [item for item in memory if isinstance(item, str)]
            compressed = iter(self._pipeline.cache.get(self.model, texts) if texts else ())
            rows = []
            for i, item in enumerate(memory):
                if isinstance(item, str):
                    item = next(compressed)
                if isinstance(item, (NodeWithScore, BaseNode)):
                    item = node_memory(item, self.model)
                    if item is None:
                        raise ValueError(
                            f"node {i} carries no CLaRa memory in `embedding` (expected "
                            f"{self.model.n_mem * self.model.hidden_size} floats); retrieve it with "
                            "ClaraRetriever or ClaraVectorStore, or use ClaraSynthesizer, which "
                            "compresses text on the fly"
                        )
                rows.append(torch.as_tensor(item, dtype=torch.float32).reshape(-1))
            if not rows:
                raise ValueError("memory is empty; pass memory=None to chat without documents")
            memory = torch.stack(rows)
        return self._pipeline.memory_batch(memory)

    def _generation(
        self,
        question: str | None,
        messages: list[dict[str, str]],
        memory: MemoryLike | None,
        call_kwargs: dict[str, Any],
    ) -> Generation:
        """Validate and build the inputs now (errors raise at the call, not mid-stream)."""
        max_new, kwargs = self._generate_kwargs(call_kwargs)
        if memory is None:
            return self._pipeline.prepare_chat(messages, max_new_tokens=max_new, **kwargs)
        return self._pipeline.prepare_answer(
            question, self.memory_batch(memory), max_new_tokens=max_new, **kwargs
        )

    @staticmethod
    def _info(gen: Generation) -> dict[str, int]:
        if not gen.num_documents:
            return {}  # plain chat
        return {
            "prefill_tokens": gen.prompt_tokens,
            "num_documents": gen.num_documents,
            "memory_tokens": gen.memory_tokens,
        }

    def _run(self, gen: Generation) -> CompletionResponse:
        return CompletionResponse(text=gen.run().text, additional_kwargs=self._info(gen))

    def _stream(self, gen: Generation) -> CompletionResponseGen:
        stream = gen.stream()
        try:
            for delta in stream:
                yield CompletionResponse(
                    text=stream.text, delta=delta, additional_kwargs=self._info(gen)
                )
        finally:
            stream.close()  # a consumer that stops early stops the generation

    def _prompt_generation(self, prompt: str, kwargs: dict[str, Any]):
        memory = kwargs.pop("memory", None)
        return self._generation(prompt, [{"role": "user", "content": prompt}], memory, kwargs)

    def _chat_generation(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]):
        memory = kwargs.pop("memory", None)
        plain = [
            {"role": m.role.value, "content": _message_text(m, i)} for i, m in enumerate(messages)
        ]
        question = None
        if memory is not None:
            users = [m.content for m in messages if m.role == MessageRole.USER and m.content]
            if not users:
                raise ValueError("ClaraLLM.chat with memory needs a user message (the question)")
            question = users[-1]  # CLaRa's answer prompt holds one question: the last one
            self._warn_dropped(len(messages))
        return self._generation(question, plain, memory, kwargs)

    def _warn_dropped(self, n_messages: int) -> None:
        """CLaRa's answer prompt is one question over memories: say once what is left out
        (system prompts, earlier turns of a chat engine)."""
        if n_messages > 1 and not self._warned_dropped:
            self._warned_dropped = True
            logger.warning(
                "ClaraLLM answers from memory with CLaRa's single-turn prompt: %d of the %d "
                "messages (system messages, earlier turns) are not part of it; put what they "
                "say into the question if it matters (shown once per ClaraLLM)",
                n_messages - 1,
                n_messages,
            )

    # ------------------------------------------------------------------ completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer `prompt`; ``memory=`` makes it a question over those documents."""
        return self._run(self._prompt_generation(prompt, kwargs))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Like `complete`, yielding `CompletionResponse` deltas as tokens arrive."""
        return self._stream(self._prompt_generation(prompt, kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return await asyncio.to_thread(self._run, self._prompt_generation(prompt, kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return astream_text(self._stream(self._prompt_generation(prompt, kwargs)))

    # ------------------------------------------------------------------ chat
    @staticmethod
    def _as_chat(response: CompletionResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
            delta=response.delta,
            additional_kwargs=response.additional_kwargs,
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat with the base model; with ``memory=`` the last user message is answered
        from those documents (earlier turns are not part of CLaRa's answer prompt)."""
        return self._as_chat(self._run(self._chat_generation(messages, kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return (self._as_chat(r) for r in self._stream(self._chat_generation(messages, kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        response = await asyncio.to_thread(self._run, self._chat_generation(messages, kwargs))
        return self._as_chat(response)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        chunks = (self._as_chat(r) for r in self._stream(self._chat_generation(messages, kwargs)))
        return astream_text(chunks)

    # ------------------------------------------------------------------ text synthesizers
    # LlamaIndex's text synthesizers (the default of `index.as_query_engine(llm=...)`)
    # call predict / stream / apredict / astream with the retrieved nodes rendered as
    # ``context_str`` (``context_msg`` + ``existing_answer`` when refining). When that text
    # is exactly nodes a CLaRa component returned, answer from their memory instead (see
    # `_context` for why this is the hook, and the class docstring for the rules).
    def _text_fallback(self, reason: str) -> None:
        message = (
            "ClaraLLM read the retrieved documents as plain text: %s. To answer from "
            "CLaRa memory, retrieve with ClaraRetriever / ClaraVectorStore / ClaraReranker, "
            "or pass response_synthesizer=ClaraSynthesizer(llm=...) to the query engine."
        )
        if not self._warned_text_context:
            self._warned_text_context = True
            logger.warning(message, reason)
        else:
            logger.debug(message, reason)

    def _context_plan(self, prompt: Any, prompt_args: dict[str, Any]) -> _ContextPlan | None:
        """How to answer a synthesizer's prompt from memory, or None for the text path."""
        args = {**(getattr(prompt, "kwargs", None) or {}), **prompt_args}  # query_str is partial
        if "context_str" in args:
            context, previous = args["context_str"], None
        elif "context_msg" in args and "existing_answer" in args:
            context, previous = args["context_msg"], args["existing_answer"]
        else:
            return None  # not a retrieval prompt: an ordinary LLM call
        if not self.use_context_memory:
            return None
        if isinstance(context, (list, tuple)) and all(isinstance(c, str) for c in context):
            context = "\n\n".join(context)  # SimpleSummarize passes its (one) chunk in a list
        question = args.get("query_str")
        if not isinstance(question, str) or not question.strip():
            return self._text_fallback("the prompt carries no query_str")
        identity = self.model.model_identity
        matched = REGISTRY.match(identity, context)
        if matched is None:
            return self._text_fallback(
                "the context is not made only of whole nodes that a CLaRa component returned "
                "(another retriever's nodes, text changed by a postprocessor, a node cut "
                "because the context exceeded the context window, or two nodes whose text "
                "reads the same but whose memories differ)"
            )
        contents = [c for c, _ in matched]
        memories = [m for _, m in matched]
        if previous is not None:  # refine: answer again over the earlier nodes and these
            with _ANSWERS_LOCK:
                earlier = self._answers.get((question, str(previous)))
            earlier_memories = None if earlier is None else REGISTRY.get(identity, earlier)
            if earlier_memories is None:
                return self._text_fallback("the answer being refined was not generated from memory")
            contents = [*earlier, *contents]
            memories = [*earlier_memories, *memories]
        logger.debug(
            "ClaraLLM: answering a text synthesizer's prompt from %d nodes' memory", len(memories)
        )
        self._check_template(prompt)
        return _ContextPlan(question, tuple(contents), torch.stack([m.float() for m in memories]))

    def _check_template(self, prompt: Any) -> None:
        """CLaRa answers from memory with its own fixed prompt (the question and the
        memories): say once when a user's template, or a chat engine's history, is
        therefore not applied."""
        chat = _chat_template_parts(prompt)
        if chat is not None:
            template, history = chat
            self._warn_history(history)
        else:
            template = _template_text(prompt)
        if template is None or template in _default_templates() or self._warned_template:
            return
        self._warned_template = True
        logger.warning(
            "ClaraLLM answered from memory with CLaRa's answer prompt (question + memory "
            "tokens); the custom template %r (%d characters) is not applied on that path. Put "
            "its instructions into the question, or set use_context_memory=False to answer "
            "from the template and the documents' text (shown once per ClaraLLM)",
            template[:60] + ("..." if len(template) > 60 else ""),
            len(template),
        )

    def _warn_history(self, history: int) -> None:
        """A chat engine (``index.as_chat_engine(chat_mode="context")``) puts its earlier
        turns between the context and the question: CLaRa's answer prompt has no place
        for them, so a follow-up that refers to them ("and when was he born?") is answered
        without them. Say so once."""
        if history == 0 or self._warned_history:
            return
        self._warned_history = True
        logger.warning(
            "ClaraLLM answered a chat engine's question from memory with CLaRa's single-turn "
            "answer prompt: the %d earlier chat message(s) in its prompt are not part of it, "
            "so a follow-up that refers to them is answered without them. Use "
            'index.as_chat_engine(chat_mode="condense_question", llm=...) to have each '
            "question rewritten to stand alone first (shown once per ClaraLLM)",
            history,
        )

    def _remember(self, plan: _ContextPlan, answer: str) -> None:
        """Note which nodes `answer` came from, for a later refine call."""
        with _ANSWERS_LOCK:
            self._answers[(plan.question, answer)] = plan.contents
            self._answers.move_to_end((plan.question, answer))
            while len(self._answers) > _ANSWERS_KEPT:
                self._answers.popitem(last=False)

    def _predict_start(self, prompt: Any, prompt_args: dict[str, Any]) -> None:
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        self._log_template_data(prompt, **prompt_args)

    def _predict_end(self, plan: _ContextPlan, text: str) -> str:
        text = self._parse_output(text)
        self._remember(plan, text)
        dispatcher.event(LLMPredictEndEvent(output=text))
        return text

    @dispatcher.span
    def predict(self, prompt: Any, **prompt_args: Any) -> str:
        plan = self._context_plan(prompt, prompt_args)
        if plan is None:
            return super().predict(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        return self._predict_end(plan, self.complete(plan.question, memory=plan.memory).text)

    @dispatcher.span
    def stream(self, prompt: Any, **prompt_args: Any) -> Any:
        plan = self._context_plan(prompt, prompt_args)
        if plan is None:
            return super().stream(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        chunks = self.stream_complete(plan.question, memory=plan.memory)  # inputs built now

        def tokens() -> Iterator[str]:
            text = ""
            for chunk in chunks:
                text = chunk.text
                yield chunk.delta or ""
            self._remember(plan, text)

        return tokens()

    @dispatcher.span
    async def apredict(self, prompt: Any, **prompt_args: Any) -> str:
        plan = self._context_plan(prompt, prompt_args)
        if plan is None:
            return await super().apredict(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        response = await self.acomplete(plan.question, memory=plan.memory)
        return self._predict_end(plan, response.text)

    @dispatcher.span
    async def astream(self, prompt: Any, **prompt_args: Any) -> Any:
        plan = self._context_plan(prompt, prompt_args)
        if plan is None:
            return await super().astream(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        chunks = await self.astream_complete(plan.question, memory=plan.memory)

        async def tokens() -> AsyncIterator[str]:
            text = ""
            async for chunk in chunks:
                text = chunk.text
                yield chunk.delta or ""
            self._remember(plan, text)

        return tokens()


def _template_text(prompt: Any) -> str | None:
    """The text of a prompt template (a selector's default), or None if it has none."""
    prompt = getattr(prompt, "default_template", prompt)
    get = getattr(prompt, "get_template", None)
    try:
        return get() if callable(get) else None
    except Exception:  # a template type without text
        return None


def _chat_template_parts(prompt: Any) -> tuple[str, int] | None:
    """For a chat engine's prompt (a chat template: a message with the context, other
    messages, a last user message with ``{query_str}``): (the context message's text, the
    number of other messages: system prompts and earlier turns). None for other prompts."""
    prompt = getattr(prompt, "default_template", prompt)
    messages = getattr(prompt, "message_templates", None)
    if not messages:
        return None
    texts = [m.content or "" for m in messages]
    context = [i for i, t in enumerate(texts) if "{context_str}" in t or "{context_msg}" in t]
    if not context or "{query_str}" not in texts[-1] or context[0] == len(texts) - 1:
        return None  # one message holds both: an ordinary template, its text is checked
    return texts[context[0]], len(texts) - 2


@functools.cache
def _default_templates() -> frozenset[str]:
    """LlamaIndex's own QA / refine / summarize templates and its chat engines' context
    templates (their text)."""
    from llama_index.core.chat_engine import condense_plus_context, context  # noqa: PLC0415
    from llama_index.core.prompts import chat_prompts, default_prompts  # noqa: PLC0415

    prompts = [
        getattr(module, name)
        for module in (default_prompts, chat_prompts)
        for name in dir(module)
        if name.isupper() and name.endswith("PROMPT")
    ]
    # The chat engines keep theirs as strings (the system message is the template plus
    # the engine's system prompt, so a system prompt still counts as custom).
    engines = [
        getattr(module, name)
        for module in (context, condense_plus_context)
        for name in dir(module)
        if (name.startswith("DEFAULT_") and "CONTEXT" in name) or name == "DEFAULT_REFINE_TEMPLATE"
    ]
    texts = {t for t in map(_template_text, prompts) if t is not None}
    return frozenset(texts | {t for t in engines if isinstance(t, str)})


def _message_text(message: ChatMessage, index: int) -> str:
    """The text of a chat message; other content (an image, audio, a document) is refused:
    `ChatMessage.content` keeps the text blocks alone, so the rest would vanish unsaid."""
    for block in message.blocks:
        if not isinstance(block, TextBlock):
            raise ValueError(
                f"ClaraLLM reads text only; message {index} has a {type(block).__name__}: "
                "describe it in text, or use a multimodal LLM for it"
            )
    return message.content or ""
