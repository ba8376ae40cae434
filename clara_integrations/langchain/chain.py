"""`create_clara_rag_chain`: question -> {"answer", "documents"} as one LCEL runnable."""

from __future__ import annotations

import logging
import threading
from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough

from ..pipeline import ClaraPipeline, MemoryStoreProtocol, check_question
from .chat_model import ChatClara

__all__ = ["create_clara_rag_chain"]

logger = logging.getLogger(__name__)

# Used only when `llm` is not ChatClara: a text LLM then reads the documents' text.
_TEXT_PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "Answer the question as briefly as possible, using only the documents below.\n\n"
            "{context}",
        ),
        ("human", "{question}"),
    ]
)


def create_clara_rag_chain(
    retriever: BaseRetriever, llm: BaseChatModel
) -> Runnable[str | dict[str, Any], dict[str, Any]]:
    """Retrieve, then answer: maps a question (a string, or `{"input": question}` as
    LangChain's retrieval chains take it) to `{"answer": str, "documents": [...]}`.

    With `ChatClara` the answer is generated from the retrieved documents' memory
    tokens: if the chat model has no `store`, it is given the retriever's (found
    through `ClaraRetriever`, `ClaraVectorStore.as_retriever()` and a
    `ContextualCompressionRetriever` around either). Any other chat model reads the
    documents' text. When the retriever finds nothing, `ChatClara` answers as the plain
    chat model. `invoke`, `batch`, `stream` (answer tokens as they come) and the async
    variants work as for any runnable.

    Args:
        retriever: any LangChain retriever, typically `ClaraRetriever`.
        llm: `ChatClara` (memory) or any chat model (text).

    Returns:
        The runnable.

    Raises:
        StoreMismatchError: the retriever's store was built by another compressor than
            `llm.model` (at construction).
        ValueError: an empty question (at call time).

    Example:
        >>> chain = create_clara_rag_chain(ClaraRetriever(model=model, store=store, k=2),
        ...                                ChatClara(model=model, max_new_tokens=64))  # doctest: +SKIP
        >>> out = chain.invoke("Who is the Eiffel Tower named after?")  # doctest: +SKIP
        >>> out["answer"], [d.id for d in out["documents"]]  # doctest: +SKIP
        >>> for part in chain.stream("Who is the Eiffel Tower named after?"):  # doctest: +SKIP
        ...     part.get("answer", "")
    """
    if not isinstance(retriever, BaseRetriever):
        raise TypeError(
            f"retriever must be a LangChain BaseRetriever, got {type(retriever).__name__}"
        )
    if not isinstance(llm, BaseChatModel):
        raise TypeError(f"llm must be a LangChain chat model, got {type(llm).__name__}")
    if isinstance(llm, ChatClara) and llm.store is None:
        store = _find_store(retriever)
        if store is not None:
            ClaraPipeline(llm.model, store)  # StoreMismatchError now, not at the first question
            llm = llm.model_copy(update={"store": store})
    answer = (
        RunnableLambda(_memory_answer(llm), name="answer")
        if isinstance(llm, ChatClara)
        else _text_answer(llm)
    )
    chain = (
        RunnableLambda(_QuestionOf(), name="question")
        | RunnableParallel(question=RunnablePassthrough(), documents=retriever)
        | RunnablePassthrough.assign(answer=answer)
    ).pick(["answer", "documents"])
    return chain.with_config(run_name="clara_rag_chain")


#: Keys a dict input may carry its question under (LangChain's retrieval chains: "input").
QUESTION_KEYS = ("input", "question", "query")


class _QuestionOf:
    """The question of a chain input: a string, or a dict with one of `QUESTION_KEYS`.
    The answer is built from the question and the documents only: other keys with a value
    (a retrieval chain's ``chat_history``) are said once per chain to be left out."""

    def __init__(self) -> None:
        self._warned = False
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> str:
        if isinstance(value, dict):
            key = next((k for k in QUESTION_KEYS if k in value), None)
            if key is None:
                raise ValueError(
                    f"a dict input needs the question under one of {list(QUESTION_KEYS)}, got "
                    f"keys {sorted(value)}"
                )
            unused = sorted(k for k, v in value.items() if k != key and v not in (None, "", [], {}))
            if unused:
                self._warn_unused(key, unused)
            value = value[key]
        return check_question(value)

    def _warn_unused(self, key: str, unused: list[str]) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        logger.warning(
            "create_clara_rag_chain answers the %r question alone: the input's %s %s not "
            "used (retrieval and CLaRa's answer prompt read one question). Rewrite a "
            "follow-up into a standalone question first, e.g. with LangChain's "
            "create_history_aware_retriever (shown once per chain)",
            key,
            ", ".join(repr(k) for k in unused),
            "is" if len(unused) == 1 else "are",
        )


def _memory_answer(llm: ChatClara) -> Any:
    def route(inputs: dict[str, Any]) -> Runnable:
        # Bound per question: the documents travel as ChatClara's `documents=` keyword.
        return itemgetter("question") | llm.bind(documents=inputs["documents"]) | StrOutputParser()

    return route


def _text_answer(llm: BaseChatModel) -> Runnable:
    return (
        RunnablePassthrough.assign(context=lambda x: _format(x["documents"]))
        | _TEXT_PROMPT
        | llm
        | StrOutputParser()
    )


def _format(documents: list[Document]) -> str:
    return "\n\n".join(f"[{i + 1}] {d.page_content}" for i, d in enumerate(documents))


def _find_store(retriever: Any) -> MemoryStoreProtocol | None:
    """The store behind a retriever, looking through the wrappers we know."""
    for owner in (retriever, getattr(retriever, "vectorstore", None)):  # VectorStoreRetriever
        store = getattr(owner, "store", None)
        if isinstance(store, MemoryStoreProtocol):
            return store
    base = getattr(retriever, "base_retriever", None)  # ContextualCompressionRetriever
    return _find_store(base) if isinstance(base, BaseRetriever) else None
