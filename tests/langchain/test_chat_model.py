"""ChatClara: memory in, answers out; base chat without documents; streaming; stop; usage."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from clara_integrations.langchain import ChatClara, ClaraRetriever
from clara_integrations.store import MemoryStore, StoreMismatchError


@pytest.fixture(scope="module")
def llm(e2e_model, doc_store):
    return ChatClara(model=e2e_model, store=doc_store, max_new_tokens=8)


def _docs(ids, reference):
    return [Document(page_content=reference["docs"][i], id=str(i)) for i in ids]


def test_answers_from_memory_like_the_model(llm, e2e_model, doc_store, reference):
    question = reference["questions"][0]
    docs = _docs(reference["e2e.topk_idx"][0], reference)
    expected = e2e_model.generate_from_compressed_documents_and_questions(
        [question], doc_store.get_memories([d.id for d in docs]), max_new_tokens=8
    )[0]
    message = llm.invoke(question, documents=docs)
    assert isinstance(message, AIMessage)
    assert message.content == expected == reference["e2e.generate_from_questions"][0]
    assert (
        llm.invoke(question, documents=doc_store.get_memories([d.id for d in docs])).content
        == expected
    )


def test_generator_reads_memory_not_document_text(
    llm, e2e_model, doc_store, reference, monkeypatch
):
    """The documents' text never reaches the model: the prompt holds memory placeholders
    and the spliced embeddings are the stored memory rows, read without compressing
    anything (an id whose text differs from the stored text is compressed from its own
    text instead: tests/pipeline/test_pipeline.py)."""
    question = reference["questions"][1]
    ids = [str(i) for i in reference["e2e.topk_idx"][1]]
    captured = {}
    original = e2e_model.prepare_generation_inputs

    def spy(questions, memories, k=None):
        captured["questions"] = list(questions)
        captured["inputs"] = original(questions, memories, k)
        return captured["inputs"]

    def no_compression(*args, **kwargs):
        raise AssertionError("stored documents must not be compressed again")

    monkeypatch.setattr(e2e_model, "prepare_generation_inputs", spy)
    monkeypatch.setattr(e2e_model, "compress_documents", no_compression)
    stored = [Document(page_content=n.text, id=n.id) for n in doc_store.get_nodes(ids)]
    answer = llm.invoke(question, documents=stored).content
    assert answer == reference["e2e.generate_from_questions"][1]

    assert captured["questions"] == [question]
    inputs = captured["inputs"]
    prompt = e2e_model.tokenizer.decode(inputs["input_ids"][0])
    assert question in prompt
    for text in [reference["docs"][int(i)] for i in ids]:
        assert text not in prompt
    slots = torch.isin(inputs["input_ids"][0], torch.tensor(e2e_model.special.mem_token_ids))
    spliced = inputs["inputs_embeds"][0][slots].reshape(len(ids), e2e_model.n_mem, -1)
    torch.testing.assert_close(spliced, doc_store.get_memories(ids), rtol=0, atol=0)


def test_documents_outside_the_store_are_compressed(e2e_model, reference):
    llm = ChatClara(model=e2e_model, max_new_tokens=8)  # no store
    question = reference["questions"][0]
    docs = [Document(page_content=reference["docs"][i]) for i in reference["e2e.topk_idx"][0]]
    assert (
        llm.invoke(question, documents=docs).content == reference["e2e.generate_from_questions"][0]
    )
    with pytest.raises(ValueError, match="empty page_content"):
        llm.invoke(question, documents=[Document(page_content=" ")])


def test_without_documents_it_is_the_base_chat_model(llm, e2e_model):
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Hello"),
        AIMessage("Hi"),
        HumanMessage("How are you?"),
    ]
    expected = e2e_model.generate_from_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "How are you?"},
        ],
        max_new_tokens=8,
    )
    assert llm.invoke(messages).content == expected
    assert llm.invoke(messages, documents=[]).content == expected


def test_stream_matches_invoke_and_reports_usage(llm, reference):
    question = reference["questions"][0]
    docs = _docs(reference["e2e.topk_idx"][0], reference)
    for kwargs in ({"documents": docs}, {}):
        message = llm.invoke(question, **kwargs)
        chunks = list(llm.stream(question, **kwargs))
        full = chunks[0]
        for chunk in chunks[1:]:
            full = full + chunk
        assert full.content == message.content
        assert chunks[-1].chunk_position == "last"
        assert full.usage_metadata == message.usage_metadata
        assert message.usage_metadata["output_tokens"] == 8
        assert full.response_metadata["model_name"] == "clara/tiny-llama-base"
        assert message.response_metadata["finish_reason"] == "length"
        async_chunks = asyncio.run(_collect(llm.astream(question, **kwargs)))
        assert "".join(c.content for c in async_chunks) == message.content
    # With documents the prompt is CLaRa's answer prompt: k * n_mem memory slots, not text.
    usage = llm.invoke(question, documents=docs).usage_metadata
    assert usage["input_tokens"] < sum(len(d.page_content) for d in docs)


async def _collect(aiter):
    return [chunk async for chunk in aiter]


def test_stop_sequences_and_max_tokens(llm, e2e_model):
    full = llm.invoke("Hello").content
    assert full == "\n" * 8  # the tiny random model's greedy text: one "\n" token at a time
    cut = llm.invoke("Hello", stop=["\n\n\n"])
    # The text is cut before the first stop sequence (here at 0), and decoding stops there.
    assert cut.content == "" and cut.response_metadata["finish_reason"] == "stop"
    assert cut.usage_metadata["output_tokens"] == 3
    assert "".join(c.content for c in llm.stream("Hello", stop=["\n\n\n"])) == ""
    assert (
        ChatClara(model=e2e_model, stop=["\n\n\n"]).invoke("Hello").usage_metadata["output_tokens"]
        == 3
    )
    assert llm.invoke("Hello", max_tokens=3).content == "\n\n\n"
    assert llm.invoke("Hello", max_new_tokens=2).usage_metadata["output_tokens"] == 2


def test_stop_sequence_cut_and_stream_holdback(llm, e2e_model):
    """Text assembly on real tokens: cut before a stop sequence, never stream a partial one."""
    job = llm._job([HumanMessage("Hello")], [" nice"], {})
    ids = e2e_model.tokenizer("Paris is nice. Yes it is.", add_special_tokens=False)["input_ids"]
    assert job.decode(ids) == ("Paris is", True)
    pieces = [job.stable_text(ids[:n])[0] for n in range(1, len(ids) + 1)]
    # Every streamed prefix is a prefix of the final answer: nothing is ever retracted,
    # and no partial " nice" is emitted before it is known to be the stop sequence.
    assert all("Paris is".startswith(p) for p in pieces)
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))


def test_sampling_is_opt_in(llm):
    torch.manual_seed(0)
    assert isinstance(llm.invoke("Hello", temperature=0.7).content, str)
    with pytest.raises(ValueError, match="temperature"):
        llm.invoke("Hello", temperature=-1)


def test_bad_input(llm, e2e_model, reference):
    docs = _docs([0], reference)
    with pytest.raises(ValueError, match="question .* is empty"):
        llm.invoke("   ", documents=docs)
    with pytest.raises(ValueError, match="human message"):
        llm.invoke([SystemMessage("only a system message")], documents=docs)
    with pytest.raises(ValueError, match="per-call `model=`"):
        llm.invoke("Hello", model="other")
    with pytest.raises(TypeError, match="unexpected keyword"):
        llm.invoke("Hello", top_q=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm.invoke("Hello", max_tokens=0)
    with pytest.raises(ValueError, match=r"memory tensor must be \(k, 4, 64\)"):
        llm.invoke("Hello", documents=torch.zeros(2, 3, 64))
    with pytest.raises(TypeError, match="Document"):
        llm.invoke("Hello", documents=["plain string"])
    with pytest.raises(ValueError, match="text only"):
        llm.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "x"}}])])
    calls = [{"name": "search", "args": {"q": "x"}, "id": "1"}]
    with pytest.raises(ValueError, match=r"tool calls \['search'\]"):  # used to vanish
        llm.invoke([HumanMessage("Hi"), AIMessage("", tool_calls=calls), HumanMessage("And?")])


def test_mismatched_store_is_a_clear_error(e2e_model):
    with pytest.raises(StoreMismatchError, match="n_mem=2"):
        ChatClara(model=e2e_model, store=MemoryStore(n_mem=2, hidden_size=e2e_model.hidden_size))


def test_standard_params_and_tracing(llm, e2e_model):
    chat = ChatClara(model=e2e_model, max_tokens=10, stop=["x"], temperature=0)
    assert chat.max_new_tokens == 10
    params = chat._get_ls_params()
    assert params["ls_provider"] == "clara" and params["ls_max_tokens"] == 10
    assert params["ls_stop"] == ["x"] and params["ls_model_name"] == "clara/tiny-llama-base"
    assert (
        ChatClara(model=e2e_model, model_name="my-clara")._get_ls_params()["ls_model_name"]
        == "my-clara"
    )


def test_concurrent_calls_are_safe(e2e_model, doc_store, reference):
    """Retrieval (query reasoner), compression (compressor) and generation (generator)
    from several threads at once, as LangChain's batch / ainvoke do, give the results of
    one-at-a-time calls: the model's adapter switching must not leak across threads."""
    retriever = ClaraRetriever(model=e2e_model, store=doc_store, k=2)
    llm = ChatClara(model=e2e_model, max_new_tokens=2)  # no store: documents get compressed
    docs = [Document(page_content=t) for t in reference["docs"][:2]]
    questions = reference["questions"] * 2

    def scores(q):
        return [d.metadata["score"] for d in retriever.invoke(q)]

    def answer(q):
        return llm.invoke(q, documents=docs).usage_metadata

    serial = [scores(q) for q in questions] + [answer(q) for q in questions]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(scores, q) for q in questions] + [
            pool.submit(answer, q) for q in questions
        ]
        assert [f.result() for f in futures] == serial
    assert retriever.batch(questions, config={"max_concurrency": 4}) == [
        retriever.invoke(q) for q in questions
    ]


def test_cache_keys_tell_memory_tensors_apart(llm, doc_store):
    a, b = doc_store.get_memories(["0", "1"]), doc_store.get_memories(["0", "2"])
    assert llm._get_llm_string(documents=a) != llm._get_llm_string(documents=b)
    assert llm._get_llm_string(documents=a) == llm._get_llm_string(documents=a.clone())


def test_empty_documents_say_once_that_the_base_model_answers(e2e_model, caplog):
    llm = ChatClara(model=e2e_model, max_new_tokens=2)
    with caplog.at_level("WARNING", logger="clara_integrations.langchain.chat_model"):
        llm.invoke("Hello")  # plain chat: nothing to say
        assert not caplog.records
        llm.invoke("Who?", documents=[])
        llm.invoke("Who?", documents=[])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "documents=[] (0 documents)" in said[0]


def test_a_retrieved_text_inside_an_ordinary_sentence_is_not_taken_for_a_document(
    e2e_model, monkeypatch
):
    """After any retrieval in the process, a plain call whose sentence merely contains a
    retrieved document's text was answered from that document's memory, the text cut out
    of the question. Only a document set apart in the prompt (a filled-in template) is."""
    from clara_integrations.langchain import ClaraRetriever
    from clara_integrations.pipeline import ClaraPipeline
    from clara_integrations.store import MemoryStore

    with MemoryStore.for_model(e2e_model, dtype=torch.float32) as store:
        store.add_documents(["Python", "Mexico"], e2e_model, show_progress=False)
        ClaraRetriever(model=e2e_model, store=store, k=2).invoke("Which language?")
    answers = []
    real = ClaraPipeline.prepare_answer

    def spy(self, question, memories, **kwargs):
        answers.append((question, memories.shape[0]))
        return real(self, question, memories, **kwargs)

    monkeypatch.setattr(ClaraPipeline, "prepare_answer", spy)
    chat = ChatClara(model=e2e_model, max_new_tokens=3)
    chat.invoke("Is Python faster than Mexico?")
    assert answers == []  # the plain chat model
    chat.invoke("Answer from the context.\nContext: Python\n\nMexico\nQuestion: Which one?")
    assert answers == [("Answer from the context. Context: Question: Which one?", 2)]
