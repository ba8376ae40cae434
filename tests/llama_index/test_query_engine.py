"""Acceptance: CLaRa inside LlamaIndex query engines (parity, drop-in, memory not text,
streaming, async, instrumentation)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine

from clara_integrations.llama_index import ClaraLLM, ClaraRetriever, ClaraSynthesizer
from tests.llama_index.conftest import REFERENCE_MAX_NEW_TOKENS, DecoderSpy


def reference_engine(model, store, n_docs, **synth_kwargs):
    """The reference setting: all documents are candidates, k = generation_top_k, greedy."""
    retriever = ClaraRetriever(
        model=model,
        store=store,
        similarity_top_k=model.config.generation_top_k,
        candidate_pool=n_docs,
    )
    llm = ClaraLLM(model=model, max_new_tokens=REFERENCE_MAX_NEW_TOKENS, temperature=0.0)
    return RetrieverQueryEngine(
        retriever=retriever, response_synthesizer=ClaraSynthesizer(llm=llm, **synth_kwargs)
    )


def source_indices(response) -> list[int]:
    return [int(n.node.node_id.removeprefix("doc-")) for n in response.source_nodes]


def test_query_engine_matches_reference_generate_from_questions(e2e_model, store32, reference):
    engine = reference_engine(e2e_model, store32, len(reference["docs"]))
    for question, answer, topk in zip(
        reference["questions"], reference["e2e.generate_from_questions"], reference["e2e.topk_idx"]
    ):
        response = engine.query(question)
        assert source_indices(response) == topk
        assert response.response == answer
        scores = [n.score for n in response.source_nodes]
        assert scores == sorted(scores, reverse=True)


def test_retriever_is_a_drop_in_for_any_text_llm(e2e_model, store32, reference):
    retriever = ClaraRetriever(model=e2e_model, store=store32, similarity_top_k=2)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=5))
    response = engine.query(reference["questions"][1])
    assert source_indices(response) == reference["e2e.topk_idx"][1]
    assert [n.node.text for n in response.source_nodes] == [
        reference["docs"][i] for i in reference["e2e.topk_idx"][1]
    ]
    assert response.response  # MockLLM answered from the retrieved text


def test_generator_reads_memory_not_text(e2e_model, store32, reference, doc_memory):
    model, tok = e2e_model, e2e_model.tokenizer
    engine = reference_engine(model, store32, len(reference["docs"]))
    question = reference["questions"][0]
    spy = DecoderSpy(model)
    try:
        response = engine.query(question)
    finally:
        spy.close()
    k = model.config.generation_top_k
    # The full reference prompt for question 0 (k memory slots) tokenizes to exactly the
    # prefill the decoder saw: prompt tokens + k * memory slots, and no document tokens.
    prompt_ids = tok(reference["e2e.prompt0"], add_special_tokens=False)["input_ids"]
    mem_ids = set(model.special.mem_token_ids)
    n_mem_slots = sum(i in mem_ids for i in prompt_ids)
    assert n_mem_slots == k * model.n_mem
    assert spy.prefill == [len(prompt_ids)]
    assert spy.prefill[0] == (len(prompt_ids) - n_mem_slots) + k * model.n_mem
    # The spliced memory rows are exactly the retrieved documents' stored memory.
    positions = [j for j, i in enumerate(prompt_ids) if i in mem_ids]
    want = torch.cat([doc_memory[i] for i in source_indices(response)])  # (k * n_mem, H)
    torch.testing.assert_close(spy.spliced[0, positions], want, rtol=0, atol=0)
    # No token that only the documents contain was ever embedded (query encoding included).
    allowed = set(prompt_ids) | set(tok(question, add_special_tokens=False)["input_ids"])
    doc_only = (
        set().union(*(tok(d, add_special_tokens=False)["input_ids"] for d in reference["docs"]))
        - allowed
    )
    seen = set().union(*map(set, spy.embedded))
    assert doc_only and not (doc_only & seen)


def test_streaming_query_yields_the_same_answer(e2e_model, store32, reference):
    engine = reference_engine(e2e_model, store32, len(reference["docs"]), streaming=True)
    response = engine.query(reference["questions"][0])
    assert "".join(response.response_gen) == reference["e2e.generate_from_questions"][0]
    assert source_indices(response) == reference["e2e.topk_idx"][0]


def test_async_queries_plain_and_streaming(e2e_model, store32, reference):
    plain = reference_engine(e2e_model, store32, len(reference["docs"]))
    streaming = reference_engine(e2e_model, store32, len(reference["docs"]), streaming=True)

    async def run():
        questions = reference["questions"]
        answers = await asyncio.gather(*(plain.aquery(q) for q in questions))
        streamed = await streaming.aquery(questions[1])
        text = "".join([t async for t in streamed.async_response_gen()])
        return answers, text, streamed

    answers, text, streamed = asyncio.run(run())
    assert [a.response for a in answers] == reference["e2e.generate_from_questions"]
    assert [source_indices(a) for a in answers] == reference["e2e.topk_idx"]
    assert text == reference["e2e.generate_from_questions"][1]
    assert source_indices(streamed) == reference["e2e.topk_idx"][1]


class _Events(BaseEventHandler):
    names: list = []

    @classmethod
    def class_name(cls) -> str:
        return "_Events"

    def handle(self, event, **kwargs):
        self.names.append(event.class_name())


def test_instrumentation_and_callbacks_fire(e2e_model, store32, reference):
    debug = LlamaDebugHandler()
    callbacks = CallbackManager([debug])
    retriever = ClaraRetriever(
        model=e2e_model, store=store32, similarity_top_k=2, callback_manager=callbacks
    )
    llm = ClaraLLM(model=e2e_model, max_new_tokens=2)
    engine = RetrieverQueryEngine(
        retriever=retriever,
        response_synthesizer=ClaraSynthesizer(llm=llm, callback_manager=callbacks),
    )
    root = get_dispatcher()
    handler = _Events(names=[])
    root.add_event_handler(handler)
    try:
        engine.query(reference["questions"][0])
    finally:
        root.event_handlers.remove(handler)
    for name in (
        "QueryStartEvent",
        "RetrievalStartEvent",
        "RetrievalEndEvent",
        "SynthesizeStartEvent",
        "LLMCompletionStartEvent",
        "LLMCompletionEndEvent",
        "SynthesizeEndEvent",
        "QueryEndEvent",
    ):
        assert name in handler.names, name
    for kind in (CBEventType.RETRIEVE, CBEventType.SYNTHESIZE, CBEventType.LLM):
        assert debug.get_event_pairs(kind), kind


def test_empty_query_is_rejected(e2e_model, store32):
    engine = reference_engine(e2e_model, store32, 5)
    with pytest.raises(ValueError, match="empty query"):
        engine.query("   ")
    with pytest.raises(ValueError, match="empty query"):
        asyncio.run(engine.aquery(""))


def test_no_nodes_gives_the_llamaindex_empty_response(e2e_model):
    llm = ClaraLLM(model=e2e_model, max_new_tokens=2)
    assert ClaraSynthesizer(llm=llm).synthesize("anything?", nodes=[]).response == "Empty Response"
    streaming = ClaraSynthesizer(llm=llm, streaming=True)
    assert "".join(streaming.synthesize("anything?", nodes=[]).response_gen) == "Empty Response"

    async def run():
        response = await streaming.asynthesize("anything?", nodes=[])
        return "".join([t async for t in response.async_response_gen()])

    assert asyncio.run(run()) == "Empty Response"
