"""CLaRa inside LlamaIndex: retrieve with the query reasoner, answer from memory tokens.

Runs on the tiny parity-fixture model by default (random weights: the answers are
gibberish, the plumbing is real):

    python examples/llama_index_query_engine.py
    python examples/llama_index_query_engine.py --checkpoint path/to/clara-e2e --base-model path/to/base-lm

Sections:
  store     MemoryStore + ClaraRetriever + ClaraSynthesizer(ClaraLLM): the reference setting
  stream    the same engine, streaming tokens
  index     VectorStoreIndex over ClaraVectorStore, embed_model=ClaraEmbedding, and a plain
            index.as_query_engine(llm=ClaraLLM): still answered from memory
  simple    CLaRa memory kept in LlamaIndex's in-memory SimpleVectorStore
  text-llm  ClaraRetriever as a drop-in retriever for any text LLM (MockLLM here)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine

from clara_integrations import ClaraModel
from clara_integrations.llama_index import (
    ClaraEmbedding,
    ClaraLLM,
    ClaraRetriever,
    ClaraSynthesizer,
    ClaraVectorStore,
)
from clara_integrations.store import MemoryStore

FIXTURE = (
    Path(os.environ.get("CLARA_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    / "fixtures"
    / "clara-official-tiny"
)

DOCS = [
    "Weldenia is a monotypic genus of flowering plant in the family Commelinaceae, first described in 1829. "
    "It has one single species: Weldenia candida, which grows originally in Mexico and Guatemala.",
    "Hagsatera is a genus of flowering plants from the orchid family, Orchidaceae. There are two known "
    "species, native to Mexico and Guatemala.",
    "Alsobia is a genus of flowering plants in the family Gesneriaceae, native to Mexico, Guatemala and Costa Rica.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel.",
    "Python is a high-level, general-purpose programming language. Its design philosophy emphasizes code "
    "readability with the use of significant indentation.",
]
QUESTIONS = [
    "Which genus of plant grows originally in Mexico and Guatemala, Phylica or Weldenia?",
    "Who is the Eiffel Tower named after?",
]


def report(section: str, j: int, response) -> None:
    sources = ",".join(n.node.ref_doc_id or n.node.node_id for n in response.source_nodes)
    print(f"[{section}] q{j} sources={sources} answer={str(response)!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        default=str(FIXTURE / "ckpt-e2e"),
        help="CLaRa checkpoint with a query reasoner (native or released format)",
    )
    parser.add_argument(
        "--base-model", default=str(FIXTURE / "tiny-llama-base"), help="base LM folder or hub id"
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    model = ClaraModel.from_pretrained(
        args.checkpoint, base_model=args.base_model, dtype=getattr(torch, args.dtype)
    )
    k = model.config.generation_top_k
    llm = ClaraLLM(model=model, max_new_tokens=args.max_new_tokens)  # temperature 0: greedy

    # 1. Compress the documents once into a MemoryStore; retrieve among all of them and
    #    let the generator read the top-k memories (the reference's generate_from_questions).
    store = MemoryStore.for_model(model, dtype=torch.float32)
    store.add_documents(
        DOCS, model, ids=[f"doc-{i}" for i in range(len(DOCS))], show_progress=False
    )
    retriever = ClaraRetriever(
        model=model, store=store, similarity_top_k=k, candidate_pool=len(DOCS)
    )
    engine = RetrieverQueryEngine(
        retriever=retriever, response_synthesizer=ClaraSynthesizer(llm=llm)
    )
    for j, question in enumerate(QUESTIONS):
        response = engine.query(question)
        report("store", j, response)
        info = llm.complete(question, memory=response.source_nodes).additional_kwargs
        print(
            f"[store] q{j} prefill={info['prefill_tokens']} tokens "
            f"({info['memory_tokens']} of them memory for {info['num_documents']} documents)"
        )

    # 2. Streaming: the same answer, token by token.
    streaming = RetrieverQueryEngine(
        retriever=retriever, response_synthesizer=ClaraSynthesizer(llm=llm, streaming=True)
    )
    for j, question in enumerate(QUESTIONS):
        response = streaming.query(question)
        text = "".join(response.response_gen)
        sources = ",".join(n.node.node_id for n in response.source_nodes)
        print(f"[stream] q{j} sources={sources} answer={text!r}")

    # 3. A LlamaIndex VectorStoreIndex whose vectors are CLaRa memory, in a ClaraVectorStore.
    #    Keep metadata out of the compressed text, as step 1 did. No response_synthesizer:
    #    LlamaIndex's default synthesizer hands ClaraLLM the nodes' text, and ClaraLLM
    #    recognises the nodes ClaraVectorStore returned and answers from their memory.
    documents = [
        Document(id_=f"doc-{i}", text=t, metadata={"i": i}, excluded_embed_metadata_keys=["i"])
        for i, t in enumerate(DOCS)
    ]
    embed_model = ClaraEmbedding(model=model)
    index = VectorStoreIndex.from_documents(
        documents,
        embed_model=embed_model,
        storage_context=StorageContext.from_defaults(
            vector_store=ClaraVectorStore(model=model, dtype=torch.float32)
        ),
    )
    index_engine = index.as_query_engine(llm=llm, similarity_top_k=k)
    for j, question in enumerate(QUESTIONS):
        report("index", j, index_engine.query(question))

    # 4. Any other LlamaIndex vector store can hold the memory (here the in-memory
    #    SimpleVectorStore). It does not return embeddings with query results, so the
    #    synthesizer reads the memory back by node id (memory_lookup).
    simple_index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)
    simple_engine = simple_index.as_query_engine(
        llm=llm,
        similarity_top_k=k,
        response_synthesizer=ClaraSynthesizer(
            llm=llm, memory_lookup=simple_index.vector_store.get, compress_missing=False
        ),
    )
    for j, question in enumerate(QUESTIONS):
        report("simple", j, simple_engine.query(question))

    # 5. ClaraRetriever is a drop-in retriever: any text LLM reads the retrieved text.
    text_engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=4))
    for j, question in enumerate(QUESTIONS):
        report("text-llm", j, text_engine.query(question))


if __name__ == "__main__":
    main()
