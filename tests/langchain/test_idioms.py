"""LangChain idioms as users write them (issue: chunking, pickling, prompt chains,
reloading, token counting)."""

from __future__ import annotations

import pickle

import pytest

from clara_integrations.errors import NotPicklableError
from clara_integrations.langchain import (
    ChatClara,
    ClaraEmbeddings,
    ClaraRetriever,
    ClaraVectorStore,
)

TEXTS = ["Paris is the capital of France.", "Rome is the capital of Italy."]


def test_pickled_components_keep_their_model(e2e_model):
    for component in (ChatClara(model=e2e_model), ClaraEmbeddings(e2e_model)):
        again = pickle.loads(pickle.dumps(component))
        assert again.model is e2e_model  # not the shipped default


def test_vector_store_and_retriever_pickle_once_saved(e2e_model, tmp_path):
    vs = ClaraVectorStore(model=e2e_model)
    vs.add_texts(TEXTS, ids=["paris", "rome"])
    retriever = ClaraRetriever(model=e2e_model, store=vs.store, k=1)
    with pytest.raises(NotPicklableError, match="persist"):
        pickle.dumps(retriever)
    vs.save_local(tmp_path / "index")
    again = pickle.loads(pickle.dumps(retriever))
    assert again.store is vs.store and again.model is e2e_model
    assert [d.id for d in again.invoke("capital of Italy")] == [
        d.id for d in retriever.invoke("capital of Italy")
    ]


def test_save_local_then_load_local(e2e_model, tmp_path):
    vs = ClaraVectorStore(model=e2e_model)
    vs.add_texts(TEXTS, ids=["paris", "rome"], metadatas=[{"c": "fr"}, {"c": "it"}])
    vs.save_local(tmp_path / "index")
    again = ClaraVectorStore.load_local(
        tmp_path / "index", ClaraEmbeddings(e2e_model), allow_dangerous_deserialization=True
    )
    before = vs.similarity_search_with_score("capital of France", k=2)
    after = again.similarity_search_with_score("capital of France", k=2)
    assert [(d.id, d.metadata["c"]) for d, _ in after] == [
        (d.id, d.metadata["c"]) for d, _ in before
    ]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-5)


LONG = " ".join(f"Fact number {i} is that the sky was clear on day {i}." for i in range(60))


def test_long_texts_warn_and_the_clara_splitter_fits_them(fixture_dir):
    import warnings

    import torch
    from langchain_core.documents import Document

    from clara_integrations import ClaraModel
    from clara_integrations.errors import DocumentTruncatedWarning
    from clara_integrations.langchain import clara_text_splitter
    from tests.conftest import TINY_BASE

    model = ClaraModel.from_pretrained(  # its own: the warning is shown once per model
        fixture_dir / "ckpt-e2e", base_model=TINY_BASE, dtype=torch.float32
    )
    chunks = clara_text_splitter(model).split_documents([Document(page_content=LONG)])
    vs = ClaraVectorStore(model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DocumentTruncatedWarning)
        vs.add_documents(chunks)
    assert len(vs.store) == len(chunks) > 5
    with pytest.warns(DocumentTruncatedWarning, match="longer than the 65 tokens"):
        vs.add_texts([LONG])


def test_token_counting_uses_the_models_tokenizer_without_network(e2e_model, monkeypatch):
    """It fell back to a GPT-2 tokenizer from the hub, retried for minutes, returned 0."""
    from langchain_core.messages import HumanMessage, SystemMessage, trim_messages

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llm = ChatClara(model=e2e_model)
    text = "Paris is the capital of France."
    assert (
        llm.get_num_tokens(text)
        == len(e2e_model.tokenizer.encode(text, add_special_tokens=False))
        > 0
    )
    messages = [SystemMessage("Be brief."), HumanMessage(text), HumanMessage("And Italy?")]
    kept = trim_messages(
        messages,
        max_tokens=llm.get_num_tokens_from_messages(messages[-1:]) + 1,
        token_counter=llm,
        strategy="last",
    )
    assert kept == messages[-1:]


def test_prompt_chain_answers_from_the_retrieved_memory(e2e_model, caplog):
    """The LCEL pattern of LangChain's RAG tutorial: ChatClara used to read the prompt
    text (documents included) with no memory at all."""
    import logging

    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    vs = ClaraVectorStore(model=e2e_model)
    vs.add_texts(TEXTS, ids=["paris", "rome"])
    retriever = vs.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_template(
        "Answer using only this context:\n{context}\n\nQuestion: {question}"
    )
    llm = ChatClara(model=e2e_model, max_new_tokens=6)

    def format_docs(docs):
        return "\n\n".join(d.page_content for d in docs)

    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    question = "What is the capital of Italy?"
    with caplog.at_level(logging.INFO, logger="clara_integrations.langchain.chat_model"):
        via_prompt = chain.invoke(question)
    assert "answering from their memory" in caplog.text
    docs = retriever.invoke(question)
    rest = f"Answer using only this context: Question: {question}"
    direct = llm.invoke(rest, documents=docs)
    assert via_prompt == direct.content


def test_context_in_a_system_message_reads_memory_too(e2e_model, caplog):
    """create_stuff_documents_chain's prompt shape: the context in the system message."""
    import logging

    from langchain_core.messages import HumanMessage, SystemMessage

    vs = ClaraVectorStore(model=e2e_model)
    vs.add_texts(TEXTS, ids=["paris", "rome"])
    docs = vs.similarity_search("Italy", k=2)
    context = "\n\n".join(d.page_content for d in docs)
    llm = ChatClara(model=e2e_model, max_new_tokens=4)
    with caplog.at_level(logging.INFO, logger="clara_integrations.langchain.chat_model"):
        answer = llm.invoke(
            [SystemMessage(f"Use this context:\n{context}"), HumanMessage("Capital of Italy?")]
        )
    assert "answering from their memory" in caplog.text
    assert answer.content == llm.invoke("Capital of Italy?", documents=docs).content
    with caplog.at_level(logging.WARNING, logger="clara_integrations.langchain.chat_model"):
        llm.invoke(context)  # nothing but the documents: no question to ask
    assert "no question left" in caplog.text


def test_dropped_system_messages_are_said_once(e2e_model, caplog):
    from langchain_core.messages import HumanMessage, SystemMessage

    vs = ClaraVectorStore(model=e2e_model)
    vs.add_texts(TEXTS)
    docs = vs.similarity_search("Italy", k=1)
    llm = ChatClara(model=e2e_model, max_new_tokens=2)
    messages = [SystemMessage("Answer in French."), HumanMessage("Capital of Italy?")]
    llm.invoke(messages, documents=docs)
    llm.invoke(messages, documents=docs)
    assert caplog.text.count("1 of the 2 messages") == 1


def test_loud_failures_become_conventions(e2e_model):
    """`{"input": q}` as LangChain's retrieval chains take it, the retriever built on the
    vector store, Chroma's `embedding_function=`, and a short repr."""
    from clara_integrations.langchain import create_clara_rag_chain

    vs = ClaraVectorStore(embedding_function=ClaraEmbeddings(e2e_model))
    vs.add_texts(TEXTS, ids=["paris", "rome"])
    retriever = ClaraRetriever(model=e2e_model, store=vs, k=1)
    assert retriever.store is vs.store
    chain = create_clara_rag_chain(retriever, ChatClara(model=e2e_model, max_new_tokens=3))
    by_dict = chain.invoke({"input": "capital of Italy?"})
    assert by_dict == chain.invoke("capital of Italy?")
    with pytest.raises(ValueError, match="'input'"):
        chain.invoke({"text": "capital of Italy?"})
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['colour'\\]"):
        ClaraVectorStore(model=e2e_model, colour="red")
    assert len(repr(ChatClara(model=e2e_model))) < 300
    with pytest.raises(ValueError, match="empty"):
        ChatClara(model=e2e_model).invoke("")  # the same rule as ClaraLLM.complete("")


def test_range_and_or_filters(e2e_model):
    vs = ClaraVectorStore(model=e2e_model)
    vs.add_texts(
        ["A 1999 report.", "A 2005 report.", "A 2020 report."],
        metadatas=[
            {"year": 1999, "kind": "a"},
            {"year": 2005, "kind": "b"},
            {"year": 2020, "kind": "c"},
        ],
    )
    newer = vs.similarity_search("report", k=3, filter={"year": {"$gte": 2005}})
    assert sorted(d.metadata["year"] for d in newer) == [2005, 2020]
    either = vs.similarity_search(
        "report", k=3, filter={"$or": [{"kind": "a"}, {"year": {"$gt": 2010}}]}
    )
    assert sorted(d.metadata["year"] for d in either) == [1999, 2020]
