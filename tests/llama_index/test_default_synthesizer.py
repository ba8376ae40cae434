"""`index.as_query_engine(llm=ClaraLLM(...))` with no response_synthesizer: LlamaIndex
builds its default text synthesizer, and ClaraLLM still answers from memory (the nodes'
text never reaches the decoder); contexts it cannot account for are read as text."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.prompts import PromptTemplate
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode

from clara_integrations.llama_index import (
    ClaraEmbedding,
    ClaraLLM,
    ClaraReranker,
    ClaraRetriever,
    ClaraSynthesizer,
    ClaraVectorStore,
)
from tests.llama_index.conftest import REFERENCE_MAX_NEW_TOKENS, DecoderSpy, documents

K = 2  # similarity_top_k, = the fixture's generation_top_k
TEXT_WARNING = "read the retrieved documents as plain text"


class GenerationSpy:
    """Records every generation: from memory (the inputs_embeds the generator got) or
    from text (the plain chat model)."""

    def __init__(self, model, monkeypatch):
        self.memory_calls: list[torch.Tensor] = []
        self.text_calls = 0
        from_embeddings, from_messages = (
            model.generate_from_embeddings,
            model.generate_from_messages,
        )

        def embeddings(inputs_embeds, attention_mask, *args, **kwargs):
            self.memory_calls.append(inputs_embeds.detach().clone())
            return from_embeddings(inputs_embeds, attention_mask, *args, **kwargs)

        def messages(*args, **kwargs):
            self.text_calls += 1
            return from_messages(*args, **kwargs)

        monkeypatch.setattr(model, "generate_from_embeddings", embeddings)
        monkeypatch.setattr(model, "generate_from_messages", messages)

    @property
    def prefills(self) -> list[int]:
        return [c.shape[1] for c in self.memory_calls]


@pytest.fixture()
def spy(e2e_model, monkeypatch):
    return GenerationSpy(e2e_model, monkeypatch)


@pytest.fixture(scope="module")
def index(e2e_model, reference):
    vector_store = ClaraVectorStore(model=e2e_model, dtype=torch.float32)
    return VectorStoreIndex.from_documents(
        documents(reference),
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=ClaraEmbedding(e2e_model),
    )


def clara_llm(model, **kwargs) -> ClaraLLM:
    return ClaraLLM(model=model, max_new_tokens=REFERENCE_MAX_NEW_TOKENS, **kwargs)


def ranks(response) -> list[int]:
    return [n.node.metadata["i"] for n in response.source_nodes]


def generator_input(model, question, memory) -> torch.Tensor:
    """What the generator is fed for `question` over `memory` (k, n_mem, H) — the
    ClaraSynthesizer / ClaraLLM(memory=...) path."""
    return model.prepare_generation_inputs([question], memory)["inputs_embeds"]


def test_as_query_engine_answers_from_memory(index, e2e_model, reference, doc_memory, spy, caplog):
    model, tok = e2e_model, e2e_model.tokenizer
    question = reference["questions"][0]
    engine = index.as_query_engine(
        llm=clara_llm(model), similarity_top_k=K
    )  # no response_synthesizer
    decoder = DecoderSpy(model)
    try:
        with caplog.at_level(logging.WARNING, logger="clara_integrations.llama_index"):
            response = engine.query(question)
    finally:
        decoder.close()
    assert TEXT_WARNING not in caplog.text
    assert ranks(response) == reference["e2e.topk_idx"][0]
    # One generation, from memory; the base model never read the context as text.
    assert spy.text_calls == 0 and len(spy.memory_calls) == 1
    # Prefill = the reference answer prompt: its text tokens + k * n_mem memory slots ...
    prompt_ids = tok(reference["e2e.prompt0"], add_special_tokens=False)["input_ids"]
    mem_ids = set(model.special.mem_token_ids)
    assert sum(i in mem_ids for i in prompt_ids) == K * model.n_mem
    assert decoder.prefill == spy.prefills == [len(prompt_ids)]
    # ... whose memory slots hold exactly the retrieved documents' stored memory ...
    positions = [j for j, i in enumerate(prompt_ids) if i in mem_ids]
    want = torch.cat([doc_memory[i] for i in ranks(response)])
    torch.testing.assert_close(decoder.spliced[0, positions], want, rtol=0, atol=0)
    # ... and no token that only the documents contain was ever embedded.
    allowed = set(prompt_ids) | set(tok(question, add_special_tokens=False)["input_ids"])
    doc_only = (
        set().union(*(tok(d, add_special_tokens=False)["input_ids"] for d in reference["docs"]))
        - allowed
    )
    assert doc_only and not (doc_only & set().union(*map(set, decoder.embedded)))
    # ClaraSynthesizer over the same nodes: the same generator input, the same answer.
    synthesized = ClaraSynthesizer(llm=clara_llm(model)).synthesize(question, response.source_nodes)
    assert len(spy.memory_calls) == 2 and torch.equal(spy.memory_calls[0], spy.memory_calls[1])
    assert response.response == synthesized.response == reference["e2e.generate_from_questions"][0]


def test_streaming_query_answers_from_memory(index, e2e_model, reference, doc_memory, spy):
    question = reference["questions"][1]
    response = index.as_query_engine(
        llm=clara_llm(e2e_model), similarity_top_k=K, streaming=True
    ).query(question)
    text = "".join(response.response_gen)
    assert ranks(response) == reference["e2e.topk_idx"][1]
    assert spy.text_calls == 0 and len(spy.memory_calls) == 1
    assert torch.equal(
        spy.memory_calls[0], generator_input(e2e_model, question, doc_memory[ranks(response)])
    )
    synthesized = ClaraSynthesizer(llm=clara_llm(e2e_model)).synthesize(
        question, response.source_nodes
    )
    assert text == synthesized.response == reference["e2e.generate_from_questions"][1]


def test_async_queries_answer_from_memory(index, e2e_model, reference, doc_memory, spy):
    llm = clara_llm(e2e_model)
    plain = index.as_query_engine(llm=llm, similarity_top_k=K)
    streaming = index.as_query_engine(llm=llm, similarity_top_k=K, streaming=True)
    questions = reference["questions"]

    async def run():
        answers = await asyncio.gather(*(plain.aquery(q) for q in questions))
        streamed = await streaming.aquery(questions[0])
        return answers, streamed, "".join([t async for t in streamed.async_response_gen()])

    answers, streamed, text = asyncio.run(run())
    assert [ranks(a) for a in answers] == reference["e2e.topk_idx"]
    assert [a.response for a in answers] == reference["e2e.generate_from_questions"]
    assert (
        text == reference["e2e.generate_from_questions"][0]
        and ranks(streamed) == reference["e2e.topk_idx"][0]
    )
    assert spy.text_calls == 0 and len(spy.memory_calls) == 3
    expected = [
        generator_input(e2e_model, q, doc_memory[t])
        for q, t in zip(
            [*questions, questions[0]], [*reference["e2e.topk_idx"], reference["e2e.topk_idx"][0]]
        )
    ]
    for got in spy.memory_calls:  # the two plain queries ran concurrently: any order
        assert any(torch.equal(got, want) for want in expected)
    assert torch.equal(spy.memory_calls[-1], expected[-1])


@pytest.mark.parametrize(
    ("mode", "streaming", "ks"),
    [
        ("refine", False, [1, 2]),  # one node per call; each refine re-answers over all so far
        ("refine", True, [1, 2]),
        ("tree_summarize", False, [2]),
        ("simple_summarize", False, [2]),
        ("accumulate", False, [1, 1]),  # one answer per node, by design of the mode
    ],
)
def test_other_response_modes(index, e2e_model, reference, doc_memory, spy, mode, streaming, ks):
    question = reference["questions"][0]
    response = index.as_query_engine(
        llm=clara_llm(e2e_model), similarity_top_k=K, response_mode=mode, streaming=streaming
    ).query(question)
    if streaming:
        "".join(response.response_gen)
    topk = ranks(response)
    assert spy.text_calls == 0
    assert spy.prefills == [
        generator_input(e2e_model, question, doc_memory[topk[:k]]).shape[1] for k in ks
    ]
    if mode != "accumulate":  # the final answer is the one over all k nodes, in order
        assert torch.equal(
            spy.memory_calls[-1], generator_input(e2e_model, question, doc_memory[topk])
        )


def test_clara_retriever_and_reranker_nodes_answer_from_memory(e2e_model, store32, reference, spy):
    question = reference["questions"][1]
    # ClaraRetriever in a default RetrieverQueryEngine (memory found even when not attached).
    for attach in (True, False):
        retriever = ClaraRetriever(
            model=e2e_model, store=store32, similarity_top_k=K, attach_memory=attach
        )
        RetrieverQueryEngine.from_args(retriever, llm=clara_llm(e2e_model)).query(question)
    # Any retriever's nodes (SimpleVectorStore returns no memory), reranked by ClaraReranker.
    docs = [Document(text=f"{t} (reranked copy)") for t in reference["docs"]]
    simple = VectorStoreIndex.from_documents(docs, embed_model=ClaraEmbedding(e2e_model))
    engine = simple.as_query_engine(
        llm=clara_llm(e2e_model),
        similarity_top_k=5,
        node_postprocessors=[ClaraReranker(model=e2e_model, top_n=K)],
    )
    response = engine.query(question)
    assert len(response.source_nodes) == K
    assert spy.text_calls == 0 and len(spy.memory_calls) == 3
    memory = torch.stack(
        [torch.tensor(n.node.embedding).reshape(e2e_model.n_mem, -1) for n in response.source_nodes]
    )
    assert torch.equal(spy.memory_calls[-1], generator_input(e2e_model, question, memory))


def test_context_it_cannot_account_for_is_read_as_text(e2e_model, reference, spy, caplog):
    docs = [Document(text=f"{t} (copy no CLaRa component returned)") for t in reference["docs"]]
    simple = VectorStoreIndex.from_documents(docs, embed_model=ClaraEmbedding(e2e_model))
    llm = ClaraLLM(model=e2e_model, max_new_tokens=2)
    with caplog.at_level(logging.WARNING, logger="clara_integrations.llama_index.llm"):
        response = simple.as_query_engine(llm=llm, similarity_top_k=K).query(
            reference["questions"][0]
        )
    assert isinstance(response.response, str)
    assert TEXT_WARNING in caplog.text and "ClaraSynthesizer" in caplog.text
    assert spy.text_calls == 1 and not spy.memory_calls


def test_only_whole_registered_contexts_answer_from_memory(
    index, e2e_model, reference, doc_memory, spy
):
    question = reference["questions"][0]
    nodes = index.as_retriever(similarity_top_k=K).retrieve(question)
    contents = [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes]
    topk = [n.node.metadata["i"] for n in nodes]
    qa = PromptTemplate("{context_str}\n{query_str}")
    refine = PromptTemplate("{query_str} {existing_answer} {context_msg}")
    llm = ClaraLLM(model=e2e_model, max_new_tokens=2)
    answer = llm.predict(qa, context_str="\n".join(contents), query_str=question)  # memory, k=2
    assert spy.prefills == [generator_input(e2e_model, question, doc_memory[topk]).shape[1]]
    for context in (
        contents[0] + "\n\nA sentence no retriever returned.",  # extra text
        contents[0][:-4],  # a node cut short
        "",
    ):
        llm.predict(qa, context_str=context, query_str=question)
    llm.predict(refine, query_str=question, existing_answer="not ours", context_msg=contents[1])
    ClaraLLM(model=e2e_model, max_new_tokens=2, use_context_memory=False).predict(
        qa, context_str=contents[0], query_str=question
    )
    llm.predict(PromptTemplate("Say {word}."), word="hi")  # not a retrieval prompt at all
    assert spy.text_calls == 6 and len(spy.memory_calls) == 1
    # A refine of an answer it gave from memory re-answers over the earlier and new nodes.
    llm.predict(refine, query_str=question, existing_answer=answer, context_msg=contents[0])
    assert torch.equal(
        spy.memory_calls[-1], generator_input(e2e_model, question, doc_memory[[*topk, topk[0]]])
    )


# ---------------------------------------------------------------------- the registry
def _memory(value: float) -> torch.Tensor:
    return torch.full((2, 3), float(value))


def test_a_custom_template_on_the_memory_path_is_said_once(index, e2e_model, reference, caplog):
    """A user's text_qa_template cannot shape CLaRa's answer prompt: that used to be silent."""
    from llama_index.core import PromptTemplate

    template = PromptTemplate("Reply in French.\n{context_str}\nQ: {query_str}\nA: ")
    llm = clara_llm(e2e_model)
    with caplog.at_level(logging.WARNING, logger="clara_integrations.llama_index"):
        index.as_query_engine(llm=llm, similarity_top_k=K).query(reference["questions"][0])
        assert "custom template" not in caplog.text  # LlamaIndex's own: nothing to say
        engine = index.as_query_engine(llm=llm, similarity_top_k=K, text_qa_template=template)
        engine.query(reference["questions"][0])
        engine.query(reference["questions"][1])
    assert caplog.text.count("the custom template 'Reply in French.") == 1


HISTORY_WARNING = "earlier chat message(s) in its prompt are not part of it"


def test_a_context_chat_engine_answers_from_memory_and_says_once_it_drops_history(
    index, e2e_model, reference, spy, caplog
):
    """``as_chat_engine(chat_mode="context")`` puts earlier turns into the synthesizer's chat
    template; CLaRa's single-turn prompt has no place for them. Turn 1 is answered from
    memory with nothing to say (the engine's own template); from turn 2 on the history is
    left out, which used to be silent, and is now said once with the count."""
    llm = clara_llm(e2e_model)
    engine = index.as_chat_engine(chat_mode="context", llm=llm, similarity_top_k=K)
    with caplog.at_level(logging.WARNING, logger="clara_integrations.llama_index"):
        engine.chat(reference["questions"][0])
        assert caplog.text == ""  # the engine's default template: nothing is lost
        engine.chat(reference["questions"][1])
        engine.chat(reference["questions"][0])
    assert spy.text_calls == 0 and len(spy.memory_calls) == 3  # every turn from memory
    assert caplog.text.count(HISTORY_WARNING) == 1
    assert "the 2 earlier chat message(s)" in caplog.text  # turn 2: one question, one answer
    assert 'chat_mode="condense_question"' in caplog.text
    assert "custom template" not in caplog.text


def test_a_chat_engine_system_prompt_is_a_custom_template(index, e2e_model, reference, caplog):
    """A system prompt given to the chat engine is appended to its context message: it is
    not applied on the memory path, which the custom-template warning says."""
    llm = clara_llm(e2e_model)
    engine = index.as_chat_engine(
        chat_mode="context", llm=llm, similarity_top_k=K, system_prompt="Answer like a pirate."
    )
    with caplog.at_level(logging.WARNING, logger="clara_integrations.llama_index"):
        engine.chat(reference["questions"][0])
    assert caplog.text.count("custom template") == 1 and HISTORY_WARNING not in caplog.text


def test_nodes_whose_text_reads_the_same_but_whose_memories_differ_are_read_as_text(
    e2e_model, spy, caplog
):
    """Text that the LLM sees identically can carry different metadata into the memory
    (excluded_llm_metadata_keys): looked up by content, both nodes used to get one of the
    two memories. No single memory answers for such a content: the text path, warned."""
    text = "The quarterly meeting takes place on Monday at ten in room four."
    docs = [
        Document(
            id_=f"d{i}", text=text, metadata={"team": team}, excluded_llm_metadata_keys=["team"]
        )
        for i, team in enumerate(("Alsobia botany group", "Python compiler group"))
    ]
    index = VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(
            vector_store=ClaraVectorStore(model=e2e_model, dtype=torch.float32)
        ),
        embed_model=ClaraEmbedding(e2e_model),
    )
    with caplog.at_level(logging.WARNING, logger="clara_integrations.llama_index"):
        response = index.as_query_engine(llm=clara_llm(e2e_model), similarity_top_k=2).query(
            "When is the meeting?"
        )
    memories = [n.node.embedding for n in response.source_nodes]
    assert len(memories) == 2 and memories[0] != memories[1]
    assert spy.memory_calls == [] and spy.text_calls == 1
    assert TEXT_WARNING in caplog.text and "memories differ" in caplog.text
