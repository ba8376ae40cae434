"""CLaRa in LangChain: retrieve by the query reasoner, answer from memory tokens.

Runs as is on the tiny parity fixture (random weights: its answers are newlines, the
retrieval is real). With a released checkpoint the answers become meaningful:

    python examples/langchain_runnable.py
    python examples/langchain_runnable.py --checkpoint apple/CLaRa-7B-E2E --subfolder compression-16 \
        --base-model mistralai/Mistral-7B-Instruct-v0.2 --allow-network --max-new-tokens 64

Needs `pip install clara-integrations[langchain]`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from clara_integrations import ClaraModel
from clara_integrations.langchain import (
    ChatClara,
    ClaraDocumentCompressor,
    ClaraRetriever,
    create_clara_rag_chain,
)
from clara_integrations.store import MemoryStore

_SHARED = Path(os.environ.get("CLARA_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FIXTURE = _SHARED / "fixtures" / "clara-official-tiny"

DOCUMENTS = [
    "Weldenia is a monotypic genus of flowering plant in the family Commelinaceae, first described "
    "in 1829. It has one single species: Weldenia candida, which grows originally in Mexico and Guatemala.",
    "Hagsatera is a genus of flowering plants from the orchid family, Orchidaceae. There are two known "
    "species, native to Mexico and Guatemala.",
    "Alsobia is a genus of flowering plants in the family Gesneriaceae, native to Mexico, Guatemala and Costa Rica.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel.",
    "Python is a high-level, general-purpose programming language. Its design philosophy emphasizes code "
    "readability with the use of significant indentation.",
]
QUESTIONS = [
    "Which genus of plant grows originally in Mexico and Guatemala, Phylica or Weldenia?",
    "Who is the Eiffel Tower named after?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        default=str(FIXTURE / "ckpt-e2e"),
        help="CLaRa checkpoint folder or hub id (default: the tiny fixture)",
    )
    parser.add_argument(
        "--subfolder", default=None, help="e.g. compression-16 in the released repos"
    )
    parser.add_argument(
        "--base-model",
        default=str(FIXTURE / "tiny-llama-base"),
        help="base LM folder or hub id (default: the tiny fixture's)",
    )
    parser.add_argument("--allow-network", action="store_true", help="allow hub downloads")
    parser.add_argument("--k", type=int, default=2, help="documents per question")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()

    model = ClaraModel.from_pretrained(
        args.checkpoint,
        base_model=args.base_model,
        subfolder=args.subfolder,
        allow_network=args.allow_network or None,
    )
    # Compress once, offline: every document becomes n_mem memory vectors.
    store = MemoryStore.for_model(model, dtype=torch.float32)
    ids = store.add_documents(
        DOCUMENTS,
        model,
        metadata=[{"source": f"doc{i}"} for i in range(len(DOCUMENTS))],
        ids=[f"doc{i}" for i in range(len(DOCUMENTS))],
        show_progress=False,
    )
    print(
        f"stored {len(ids)} documents as {model.n_mem} memory vectors each (H={model.hidden_size})"
    )

    retriever = ClaraRetriever(model=model, store=store, k=args.k)
    llm = ChatClara(model=model, max_new_tokens=args.max_new_tokens)
    chain = create_clara_rag_chain(retriever, llm)

    # invoke: question -> {"answer", "documents"}; the answer is read from memory tokens.
    for question, out in zip(QUESTIONS, chain.batch(QUESTIONS)):
        print(f"question: {question}")
        for doc in out["documents"]:
            print(
                f"  document {doc.id} score={doc.metadata['score']:.4f}: {doc.page_content[:60]}..."
            )
        print(f"  answer: {out['answer']!r}")

    # stream: the documents arrive first, then the answer token by token.
    pieces = [part["answer"] for part in chain.stream(QUESTIONS[1]) if "answer" in part]
    print(f"streamed answer in {len(pieces)} pieces: {''.join(pieces)!r}")

    # rerank another retriever's candidates with CLaRa's query reasoner.
    reranker = ClaraDocumentCompressor(model=model, store=store, top_n=1)
    best = reranker.compress_documents(retriever.invoke(QUESTIONS[1], k=5), QUESTIONS[1])
    print(f"reranked best: {best[0].id} relevance={best[0].metadata['relevance_score']:.4f}")


if __name__ == "__main__":
    main()
