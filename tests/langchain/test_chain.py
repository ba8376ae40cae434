"""create_clara_rag_chain: reference parity, runnable protocol, text LLMs, bad input."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from clara_integrations.langchain import (
    ChatClara,
    ClaraRetriever,
    ClaraVectorStore,
    create_clara_rag_chain,
)
from clara_integrations.store import MemoryStore, StoreMismatchError

# The fixture's reference outputs were generated greedily with 8 new tokens.
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def chain(e2e_model, doc_store):
    k = e2e_model.config.generation_top_k
    retriever = ClaraRetriever(model=e2e_model, store=doc_store, k=k)
    return create_clara_rag_chain(
        retriever, ChatClara(model=e2e_model, max_new_tokens=MAX_NEW_TOKENS)
    )


def test_chain_reproduces_reference_generate_from_questions(chain, reference):
    """Same documents and same greedy answer as the reference `generate_from_questions`
    (all docs as candidates, k = generation_top_k), question by question."""
    for i, question in enumerate(reference["questions"]):
        out = chain.invoke(question)
        assert set(out) == {"answer", "documents"}
        assert [int(d.id) for d in out["documents"]] == reference["e2e.topk_idx"][i]
        assert [d.page_content for d in out["documents"]] == [
            reference["docs"][j] for j in reference["e2e.topk_idx"][i]
        ]
        assert out["answer"] == reference["e2e.generate_from_questions"][i]


def test_batch_stream_ainvoke_agree_with_invoke(chain, reference):
    questions = reference["questions"]
    expected = [chain.invoke(q) for q in questions]
    assert chain.batch(questions) == expected
    assert asyncio.run(chain.ainvoke(questions[1])) == expected[1]
    parts = list(chain.stream(questions[0]))
    assert any(set(p) == {"answer"} for p in parts), "answer tokens should stream"
    assert "".join(p.get("answer", "") for p in parts) == expected[0]["answer"]
    assert [p["documents"] for p in parts if "documents" in p] == [expected[0]["documents"]]


def test_empty_question_is_rejected(chain):
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="question is empty"):
            chain.invoke(bad)


def test_chain_binds_the_retrievers_store_and_checks_it(e2e_model, doc_store):
    llm = ChatClara(model=e2e_model)
    create_clara_rag_chain(ClaraRetriever(model=e2e_model, store=doc_store), llm)
    assert llm.store is None, "the caller's ChatClara must not be mutated"
    # Memory written by another compressor (same shapes, other identity): refused when
    # the chain is built, not silently read as noise.
    foreign = MemoryStore(
        e2e_model.n_mem, e2e_model.hidden_size, model_identity="clara-0123456789abcdef"
    )
    retriever = ClaraRetriever.model_construct(
        model=e2e_model, store=foreign, k=2
    )  # bypass its own check
    with pytest.raises(StoreMismatchError, match="clara-0123456789abcdef"):
        create_clara_rag_chain(retriever, llm)


def test_vector_store_retriever_feeds_stored_memory(e2e_model, reference):
    vs = ClaraVectorStore.from_texts(
        reference["docs"], vs_embedding(e2e_model), ids=[str(i) for i in range(5)], dtype="float32"
    )
    chain = create_clara_rag_chain(
        vs.as_retriever(search_kwargs={"k": 2}),
        ChatClara(model=e2e_model, max_new_tokens=MAX_NEW_TOKENS),
    )
    out = chain.invoke(reference["questions"][1])
    assert [int(d.id) for d in out["documents"]] == reference["e2e.topk_idx"][1]
    assert out["answer"] == reference["e2e.generate_from_questions"][1]


def vs_embedding(model):
    from clara_integrations.langchain import ClaraEmbeddings

    return ClaraEmbeddings(model)


def test_any_chat_model_reads_document_text(e2e_model, doc_store, reference):
    seen = []

    class Recorder(GenericFakeChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            seen.append(messages)
            return super()._generate(messages, stop, run_manager, **kwargs)

    llm = Recorder(messages=iter([AIMessage("Gustave Eiffel")]))
    chain = create_clara_rag_chain(ClaraRetriever(model=e2e_model, store=doc_store, k=2), llm)
    out = chain.invoke(reference["questions"][1])
    assert out["answer"] == "Gustave Eiffel"
    prompt = "\n".join(m.text for m in seen[0])
    for doc in out["documents"]:
        assert doc.page_content in prompt
    assert reference["questions"][1] in prompt


def test_no_documents_found_falls_back_to_the_chat_model(e2e_model, doc_store, reference):
    llm = ChatClara(model=e2e_model, max_new_tokens=MAX_NEW_TOKENS)
    retriever = ClaraRetriever(model=e2e_model, store=doc_store, filters={"source": "nowhere"})
    out = create_clara_rag_chain(retriever, llm).invoke(reference["questions"][0])
    assert out["documents"] == []
    assert out["answer"] == llm.invoke(reference["questions"][0]).content


def test_constructor_rejects_wrong_types(e2e_model, doc_store):
    with pytest.raises(TypeError, match="BaseRetriever"):
        create_clara_rag_chain(object(), ChatClara(model=e2e_model))
    with pytest.raises(TypeError, match="chat model"):
        create_clara_rag_chain(ClaraRetriever(model=e2e_model, store=doc_store), object())


def test_a_chat_history_in_the_input_is_said_once_to_be_left_out(
    e2e_model, doc_store, reference, caplog
):
    """LangChain's retrieval chains pass `chat_history` on; this chain answers the question
    alone, which used to be silent."""
    import logging

    from langchain_core.messages import HumanMessage

    chain = create_clara_rag_chain(
        ClaraRetriever(model=e2e_model, store=doc_store, k=2),
        ChatClara(model=e2e_model, max_new_tokens=2),
    )
    question = reference["questions"][0]
    with caplog.at_level(logging.WARNING, logger="clara_integrations.langchain"):
        chain.invoke({"input": question, "chat_history": []})  # empty: nothing left out
        assert caplog.text == ""
        history = [HumanMessage("Who built it?"), AIMessage("Gustave Eiffel's company.")]
        out = chain.invoke({"input": question, "chat_history": history})
        chain.invoke({"input": question, "chat_history": history})
    assert out == chain.invoke(question)  # answered from the question alone
    assert caplog.text.count("'chat_history' is not used") == 1
    assert "create_history_aware_retriever" in caplog.text
