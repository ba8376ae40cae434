"""LlamaIndex adapters for CLaRa: retrieval, generation from memory, reranking, indexing.

Needs the optional extra: ``pip install "clara-integrations[llama-index]"``.

How memory travels: every node that a CLaRa component returns (`ClaraRetriever`,
`ClaraReranker`, `ClaraVectorStore` queries) carries its document memory as
``node.embedding`` — the ``[n_mem, H]`` memory flattened to ``n_mem * H`` floats (a
lossless copy of the stored values). `ClaraSynthesizer` reads it from there and hands it
to `ClaraLLM`, whose generator reads the memory vectors in place of the text. Any text LLM
just reads ``node.text`` as usual.

Without `ClaraSynthesizer` (e.g. ``index.as_query_engine(llm=ClaraLLM(model))``, which
builds LlamaIndex's default text synthesizer), `ClaraLLM` recognises the nodes those
components returned in the context text it is given and still answers from their memory;
a context it cannot account for entirely is read as text, with a warning (see `ClaraLLM`).

Example:
    >>> from llama_index.core.query_engine import RetrieverQueryEngine  # doctest: +SKIP
    >>> engine = RetrieverQueryEngine(
    ...     retriever=ClaraRetriever(model=model, store=store, similarity_top_k=2),
    ...     response_synthesizer=ClaraSynthesizer(llm=ClaraLLM(model=model)),
    ... )  # doctest: +SKIP
    >>> print(engine.query("Who is the Eiffel Tower named after?"))  # doctest: +SKIP
    >>> index = VectorStoreIndex.from_documents(
    ...     docs, storage_context=StorageContext.from_defaults(vector_store=ClaraVectorStore(model=model)),
    ...     embed_model=ClaraEmbedding(model))  # doctest: +SKIP
    >>> print(index.as_query_engine(llm=ClaraLLM(model=model), similarity_top_k=2).query(
    ...     "Who is the Eiffel Tower named after?"))  # from memory  # doctest: +SKIP
"""

from __future__ import annotations

from ..errors import missing_extra

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise missing_extra(__name__, "llama-index-core", extra="llama-index") from exc

from .chunking import clara_node_parser
from .embedding import ClaraEmbedding
from .llm import ClaraLLM
from .reranker import ClaraReranker
from .retriever import ClaraRetriever
from .synthesizer import ClaraSynthesizer
from .vector_store import ClaraVectorStore

__all__ = [
    "ClaraEmbedding",
    "ClaraLLM",
    "ClaraReranker",
    "ClaraRetriever",
    "ClaraSynthesizer",
    "ClaraVectorStore",
    "clara_node_parser",
]
