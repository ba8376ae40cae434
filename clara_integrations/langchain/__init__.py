"""LangChain adapters for CLaRa: retriever, chat model, RAG chain, reranker, vector store.

Only this subpackage imports `langchain-core`; install it with
``pip install "clara-integrations[langchain]"``.

How memory reaches the chat model: documents are passed to `ChatClara` as a call
keyword, `llm.invoke(question, documents=docs)`. A document whose `id` is in the
chat model's `MemoryStore` with the same text is read from its stored memory tokens; any
other document is compressed from its text on the fly. `create_clara_rag_chain` wires this up for you.

Example:
    >>> from clara_integrations.langchain import ChatClara, ClaraRetriever, create_clara_rag_chain
    >>> retriever = ClaraRetriever(model=model, store=store, k=2)  # doctest: +SKIP
    >>> chain = create_clara_rag_chain(retriever, ChatClara(model=model))  # doctest: +SKIP
    >>> chain.invoke("Who is the Eiffel Tower named after?")  # doctest: +SKIP
    {'answer': '...', 'documents': [Document(...), Document(...)]}
"""

from __future__ import annotations

from ..errors import missing_extra

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra(__name__, "langchain-core", extra="langchain") from exc

from .chain import create_clara_rag_chain
from .chat_model import ChatClara
from .chunking import clara_text_splitter
from .compressor import ClaraDocumentCompressor
from .retriever import ClaraRetriever
from .vector_store import ClaraEmbeddings, ClaraVectorStore

__all__ = [
    "ChatClara",
    "ClaraDocumentCompressor",
    "ClaraEmbeddings",
    "ClaraRetriever",
    "ClaraVectorStore",
    "clara_text_splitter",
    "create_clara_rag_chain",
]
