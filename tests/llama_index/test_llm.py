"""ClaraLLM: memory and plain generation, every sync/stream/async form, metadata, errors."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.schema import NodeWithScore, TextNode

from clara_integrations.llama_index import ClaraLLM
from clara_integrations.modeling.tokens import reference_decode
from clara_integrations.pipeline import Generation

N_NEW = 6


@pytest.fixture(scope="module")
def llm(e2e_model):
    return ClaraLLM(model=e2e_model, max_new_tokens=N_NEW)


@pytest.fixture(scope="module")
def memory(doc_memory):
    return doc_memory[[3, 1]]  # (k=2, n_mem, H)


def test_complete_with_memory_is_the_reference_generation(llm, e2e_model, reference, memory):
    question = reference["questions"][0]
    response = llm.complete(question, memory=memory)
    assert (
        response.text
        == e2e_model.generate_from_compressed_documents_and_questions(
            [question], memory, max_new_tokens=N_NEW
        )[0]
    )
    prefill = e2e_model.prepare_generation_inputs([question], memory)["attention_mask"].shape[1]
    assert response.additional_kwargs == {
        "prefill_tokens": prefill,
        "num_documents": 2,
        "memory_tokens": 2 * e2e_model.n_mem,
    }


def test_memory_accepts_tensors_vectors_and_nodes(llm, reference, memory):
    question = reference["questions"][0]
    want = llm.complete(question, memory=memory).text
    nodes = [NodeWithScore(node=TextNode(text="x", embedding=m.flatten().tolist())) for m in memory]
    for form in (
        memory.flatten(1),
        [m for m in memory],
        [m.flatten().tolist() for m in memory],
        nodes,
        [n.node for n in nodes],
    ):
        assert llm.complete(question, memory=form).text == want
    assert llm.memory_batch(memory[0]).shape == (1, *memory.shape[1:])


def test_without_memory_it_is_the_base_chat_model(llm, e2e_model):
    assert llm.complete("Say hello.").text == e2e_model.generate_from_messages(
        [{"role": "user", "content": "Say hello."}], max_new_tokens=N_NEW
    )
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="Hi!"),
    ]
    chat = llm.chat(messages)
    assert chat.message.role == MessageRole.ASSISTANT
    assert chat.message.content == e2e_model.generate_from_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        max_new_tokens=N_NEW,
    )


def test_chat_with_memory_answers_the_last_user_message(llm, reference, memory):
    question = reference["questions"][1]
    messages = [
        ChatMessage(role=MessageRole.USER, content="earlier turn"),
        ChatMessage(role=MessageRole.ASSISTANT, content="ok"),
        ChatMessage(role=MessageRole.USER, content=question),
    ]
    assert (
        llm.chat(messages, memory=memory).message.content
        == llm.complete(question, memory=memory).text
    )


def test_streaming_and_async_forms_agree(llm, reference, memory):
    question = reference["questions"][0]
    want = llm.complete(question, memory=memory).text
    chunks = list(llm.stream_complete(question, memory=memory))
    assert "".join(c.delta for c in chunks) == want and chunks[-1].text == want
    chat_msgs = [ChatMessage(role=MessageRole.USER, content=question)]
    assert "".join(c.delta for c in llm.stream_chat(chat_msgs, memory=memory)) == want

    async def run():
        a = (await llm.acomplete(question, memory=memory)).text
        b = "".join([c.delta async for c in await llm.astream_complete(question, memory=memory)])
        c = (await llm.achat(chat_msgs, memory=memory)).message.content
        d = "".join([c.delta async for c in await llm.astream_chat(chat_msgs, memory=memory)])
        e, f = await asyncio.gather(
            llm.acomplete(question, memory=memory), llm.acomplete("Say hello.")
        )
        return [a, b, c, d, e.text], f.text

    texts, plain = asyncio.run(run())
    assert texts == [want] * 5
    assert plain == llm.complete("Say hello.").text


def test_closing_a_stream_early_releases_the_model(llm, reference, memory):
    stream = llm.stream_complete(reference["questions"][0], memory=memory, max_new_tokens=64)
    next(stream)
    stream.close()
    done = threading.Event()
    threading.Thread(target=lambda: (llm.complete("Say hello."), done.set()), daemon=True).start()
    assert done.wait(60)


def test_metadata(llm, e2e_model):
    meta = llm.metadata
    assert meta.context_window == e2e_model.decoder.config.max_position_embeddings
    assert meta.num_output == N_NEW
    assert meta.model_name == "clara/tiny-llama-base"
    assert meta.is_chat_model
    assert (
        ClaraLLM(model=e2e_model, model_name="mine", context_window=512).metadata.context_window
        == 512
    )


def test_sampling_when_temperature_is_positive(e2e_model, reference, memory):
    llm = ClaraLLM(model=e2e_model, max_new_tokens=3, temperature=0.7, top_p=0.9)
    assert llm._generate_kwargs({}) == (3, {"do_sample": True, "temperature": 0.7, "top_p": 0.9})
    torch.manual_seed(0)
    assert isinstance(llm.complete(reference["questions"][0], memory=memory).text, str)
    assert ClaraLLM(model=e2e_model)._generate_kwargs({"max_new_tokens": 2}) == (2, {})


def test_bad_input(llm, e2e_model, memory):
    with pytest.raises(ValueError, match="memory must be"):
        llm.complete("q?", memory=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="carries no CLaRa memory"):
        llm.complete("q?", memory=[TextNode(text="plain")])
    with pytest.raises(ValueError, match="memory is empty"):
        llm.complete("q?", memory=[])
    with pytest.raises(ValueError, match="empty"):
        llm.complete("  ", memory=memory)
    with pytest.raises(ValueError, match="empty prompt"):
        llm.complete("")
    with pytest.raises(ValueError, match="user message"):
        llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="s")], memory=memory)
    with pytest.raises(ValueError):
        llm.stream_complete("", memory=memory)  # raised eagerly, not on first iteration


def test_stream_deltas_survive_the_reference_space_cleanup(e2e_model):
    tok = e2e_model.tokenizer
    ids = tok("Hello , world . I 'm fine ! Isn 't it ? é à ü 日本", add_special_tokens=False)[
        "input_ids"
    ]

    def run(streamer, stopping_criteria):
        streamer.put(torch.empty(1, 0, dtype=torch.long))  # the prompt (empty with inputs_embeds)
        for i in ids:
            streamer.put(torch.tensor([i]))
        streamer.end()

    stream = Generation(tok, run).stream()  # the one streamer both adapters use
    pieces = [(stream.text, delta) for delta in stream]
    final = reference_decode(tok, [ids])[0]
    assert "".join(d for _, d in pieces) == final and pieces[-1][0] == final
    assert all("\ufffd" not in d for _, d in pieces)
    assert len(pieces) > 3  # it really streamed


def test_generation_errors_reach_the_consumer(e2e_model):
    def run(streamer, stopping_criteria):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(Generation(e2e_model.tokenizer, run).stream())


def test_per_call_temperature_is_applied_like_the_fields(e2e_model, reference, memory):
    greedy = ClaraLLM(model=e2e_model, max_new_tokens=3)
    max_new, kwargs = greedy._generate_kwargs({"temperature": 0.7})
    assert max_new == 3 and kwargs["do_sample"] is True and kwargs["temperature"] == 0.7
    sampling = ClaraLLM(model=e2e_model, max_new_tokens=3, temperature=0.7, top_p=0.9)
    assert sampling._generate_kwargs({"temperature": 0}) == (3, {})  # greedy, not an error
    question = reference["questions"][0]
    assert (
        sampling.complete(question, memory=memory, temperature=0).text
        == greedy.complete(question, memory=memory).text
    )


def test_chat_with_memory_says_once_which_messages_it_leaves_out(
    e2e_model, reference, memory, caplog
):
    llm = ClaraLLM(model=e2e_model, max_new_tokens=2)
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer in French."),
        ChatMessage(role=MessageRole.USER, content="earlier turn"),
        ChatMessage(role=MessageRole.ASSISTANT, content="ok"),
        ChatMessage(role=MessageRole.USER, content=reference["questions"][1]),
    ]
    with caplog.at_level("WARNING", logger="clara_integrations.llama_index.llm"):
        llm.chat(messages, memory=memory)
        llm.chat(messages, memory=memory)
    said = [r.getMessage() for r in caplog.records if "single-turn prompt" in r.getMessage()]
    assert said == [said[0]] and "3 of the 4 messages" in said[0]


def test_non_text_content_is_refused_not_dropped(llm, memory):
    from llama_index.core.base.llms.types import ImageBlock, TextBlock

    message = ChatMessage(
        role=MessageRole.USER,
        blocks=[
            TextBlock(text="What is in this picture?"),
            ImageBlock(url="http://x.invalid/a.png"),
        ],
    )
    for kwargs in ({}, {"memory": memory}):
        with pytest.raises(ValueError, match="reads text only; message 0 has a ImageBlock"):
            llm.chat([message], **kwargs)
