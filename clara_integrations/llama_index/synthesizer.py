"""`ClaraSynthesizer`: hands retrieved nodes' memory, never their text, to `ClaraLLM`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import torch
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.synthesis import (
    SynthesizeEndEvent,
    SynthesizeStartEvent,
)
from llama_index.core.response_synthesizers.base import BaseSynthesizer, QueryTextType
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..pipeline import ClaraPipeline, Item
from ._memory import node_item, vector_to_memory
from .llm import ClaraLLM

__all__ = ["ClaraSynthesizer"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

EMPTY_RESPONSE = "Empty Response"  # what LlamaIndex synthesizers answer without nodes


async def _agen(text: str) -> AsyncGenerator[str, None]:
    yield text


class ClaraSynthesizer(BaseSynthesizer):
    """Answer a query from the retrieved nodes' CLaRa memory with `ClaraLLM`.

    All nodes go to the generator at once, in the order given (k = number of nodes,
    e.g. the retriever's ``similarity_top_k``), as memory vectors spliced into CLaRa's
    answer prompt; their text never reaches the decoder. A node's memory is taken from,
    in order: its ``embedding`` (set by `ClaraRetriever`, `ClaraReranker` and
    `ClaraVectorStore`, or by any vector store that returns stored embeddings with its
    query results), ``memory_lookup(node_id)``, or, when ``compress_missing`` is on,
    the compressor run on the node's text right now (cached by content).

    Behind ``index.as_query_engine(llm=ClaraLLM(...))`` LlamaIndex's default synthesizer
    already gets the same answer for nodes that CLaRa components returned (see
    `ClaraLLM`); this synthesizer is what answers from memory in every other case too
    (nodes without memory, ``memory_lookup``, any context size).

    Args:
        llm: the `ClaraLLM` that answers.
        streaming: return a (Async)StreamingResponse of text deltas.
        compress_missing: compress nodes that carry no memory instead of raising.
        memory_lookup: ``node_id -> flattened memory or None`` for vector stores that
            keep memory but do not return it with results (e.g. ``SimpleVectorStore.get``).
        cache_size: on-the-fly compressed memories kept.
        callback_manager: as every LlamaIndex synthesizer.

    Raises:
        TypeError: `llm` is not a `ClaraLLM`.
        ValueError (at query time): a node without memory and ``compress_missing=False``.

    Example:
        >>> from llama_index.core.query_engine import RetrieverQueryEngine
        >>> engine = RetrieverQueryEngine(
        ...     retriever=ClaraRetriever(model=model, store=store, similarity_top_k=2),
        ...     response_synthesizer=ClaraSynthesizer(llm=ClaraLLM(model=model)),
        ... )  # doctest: +SKIP
        >>> engine.query("Who is the Eiffel Tower named after?").response  # doctest: +SKIP
    """

    def __init__(
        self,
        llm: ClaraLLM,
        callback_manager: CallbackManager | None = None,
        streaming: bool = False,
        compress_missing: bool = True,
        memory_lookup: Callable[[str], Sequence[float] | None] | None = None,
        cache_size: int = 1024,
    ) -> None:
        if not isinstance(llm, ClaraLLM):
            raise TypeError(
                f"ClaraSynthesizer needs a ClaraLLM, got {type(llm).__name__}; for a text LLM "
                "use LlamaIndex's get_response_synthesizer(llm=...)"
            )
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming)
        self._compress_missing = compress_missing
        self._memory_lookup = memory_lookup
        self._pipeline = ClaraPipeline(llm.model, cache_size=cache_size)

    def _get_prompts(self) -> dict[str, Any]:
        return {}  # CLaRa's answer prompt is part of the trained model, not a template

    def _update_prompts(self, prompts_dict: dict[str, Any]) -> None:
        if prompts_dict:
            raise ValueError(
                "ClaraSynthesizer has no editable prompts (CLaRa's prompt is fixed by training)"
            )

    # ------------------------------------------------------------------ memory
    def _lookup(self, item: Item) -> Item:
        if item.memory is not None or self._memory_lookup is None:
            return item
        try:
            vector = self._memory_lookup(item.id)
        except KeyError:
            return item
        return replace(item, memory=vector_to_memory(vector, self._llm.model))

    def node_memories(self, nodes: Sequence[NodeWithScore]) -> torch.Tensor:
        """(k, n_mem, H) memory of `nodes`, in order (see the class docstring for where
        each comes from)."""
        items = [self._lookup(node_item(n, self._llm.model)) for n in nodes]
        missing = [i for i in items if i.memory is None]
        if missing:
            if not self._compress_missing:
                raise ValueError(
                    f"{len(missing)} node(s) carry no CLaRa memory (e.g. {missing[0].id!r}); "
                    "retrieve with ClaraRetriever / ClaraVectorStore, use a vector store that returns "
                    "embeddings with query results, pass memory_lookup=, or set compress_missing=True"
                )
            logger.info(
                "ClaraSynthesizer: %d of %d nodes carry no memory; compressing their text",
                len(missing),
                len(items),
            )
        return self._pipeline.memories(items)

    # ------------------------------------------------------------------ answering
    def _answer(self, query_str: str, memory: torch.Tensor) -> str | Generator[str, None, None]:
        if self._streaming:
            return (r.delta or "" for r in self._llm.stream_complete(query_str, memory=memory))
        return self._llm.complete(query_str, memory=memory).text

    async def _aanswer(
        self, query_str: str, memory: torch.Tensor
    ) -> str | AsyncGenerator[str, None]:
        if self._streaming:
            chunks = await self._llm.astream_complete(query_str, memory=memory)

            async def deltas() -> AsyncGenerator[str, None]:
                async for r in chunks:
                    yield r.delta or ""

            return deltas()
        return (await self._llm.acomplete(query_str, memory=memory)).text

    def _chunk_memories(self, text_chunks: Sequence[str]) -> torch.Tensor:
        return self._pipeline.memories([Item(None, t) for t in text_chunks])

    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> Any:
        """Answer from `text_chunks` compressed into memory now (the generator still reads
        memory, not text). Query engines call `synthesize`, which uses stored memory."""
        return self._answer(query_str, self._chunk_memories(text_chunks))

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> Any:
        memory = await asyncio.to_thread(self._chunk_memories, text_chunks)
        return await self._aanswer(query_str, memory)

    def _empty(self, query: QueryTextType, asynchronous: bool) -> RESPONSE_TYPE:
        """LlamaIndex's answer to no nodes (its base class does the same)."""
        if not self._streaming:
            response: RESPONSE_TYPE = Response(EMPTY_RESPONSE)
        elif asynchronous:
            response = AsyncStreamingResponse(response_gen=_agen(EMPTY_RESPONSE))
        else:
            response = StreamingResponse(response_gen=(t for t in [EMPTY_RESPONSE]))
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    def synthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        dispatcher.event(SynthesizeStartEvent(query=query))
        if not nodes:
            return self._empty(query, asynchronous=False)
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as event:
            answer = self._answer(query.query_str, self.node_memories(nodes))
            sources = list(nodes) + list(additional_source_nodes or [])
            response = self._prepare_response_output(answer, sources)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    async def asynthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        dispatcher.event(SynthesizeStartEvent(query=query))
        if not nodes:
            return self._empty(query, asynchronous=True)
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as event:
            memory = await asyncio.to_thread(self.node_memories, nodes)
            answer = await self._aanswer(query.query_str, memory)
            sources = list(nodes) + list(additional_source_nodes or [])
            response = self._prepare_response_output(answer, sources)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response
