"""The README's first command: the shipped CLaRa checkpoint answering questions over a small
bundled corpus through a LlamaIndex query engine, from memory tokens instead of text.

    python -m clara_integrations demo                 # the bundled demo corpus
    python -m clara_integrations demo --corpus my_qa.jsonl --top-k 3

For every question it prints the answer, the sources with their scores, how many tokens
the generator read compared with what text RAG would have sent the same base model for
the same passages, and the time taken.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .answers import normalize_answer

__all__ = ["DEFAULT_CORPUS", "DemoQuestion", "load_corpus", "run_demo"]

#: The corpus shipped inside the package (see assets/demo/README.md), so that `clara demo`
#: works from an installed wheel, not only from a checkout.
DEFAULT_CORPUS = Path(__file__).resolve().parent / "assets" / "demo" / "demo_qa.jsonl"


@dataclass(frozen=True)
class DemoQuestion:
    question: str
    answers: tuple[str, ...]


def load_corpus(path: str | Path) -> tuple[list[tuple[str, str]], list[DemoQuestion]]:
    """Passages ``(title, text)`` (deduplicated, file order) and questions from a JSONL file
    in the shared QA schema (``question``, ``answers``, ``docs: [{"title", "text"}]``).

    Raises:
        FileNotFoundError: no such file (the message names the ``--corpus`` option).
        ValueError: a line is not a QA record (the message gives ``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo corpus {path} not found; pass --corpus FILE (QA JSONL)")
    passages: dict[tuple[str, str], None] = {}
    questions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(DemoQuestion(row["question"], tuple(row.get("answers", ()))))
            for doc in row["docs"]:
                passages[(doc.get("title", ""), doc["text"])] = None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a QA record ({err})") from err
    return list(passages), questions


def matches(answer: str, references: Sequence[str]) -> bool:
    """The answer contains a reference answer (SQuAD normalisation) - shown, not judged."""
    got = normalize_answer(answer)
    return any(normalize_answer(ref) and normalize_answer(ref) in got for ref in references)


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.perf_counter()

    def step(self, text: str) -> None:
        self.out.write(f"[{time.perf_counter() - self.start:6.1f}s] {text}\n")
        self.out.flush()

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _context_tokens(model: Any, question: str, memory: Any, texts: list[str]) -> tuple[int, int]:
    """(tokens CLaRa's generator reads, tokens text RAG's prompt has) for the same passages."""
    from .modeling import prompts  # noqa: PLC0415

    inputs = model.prepare_generation_inputs([question], memory)
    text_prompt = prompts.text_rag_prompt(model.tokenizer, question, texts)
    return int(inputs["attention_mask"].sum()), len(
        model.tokenizer(text_prompt, add_special_tokens=False)["input_ids"]
    )


def run_demo(
    model: Any,
    corpus: str | Path = DEFAULT_CORPUS,
    top_k: int = 5,
    max_new_tokens: int = 32,
    out: TextIO = sys.stdout,
    questions: int | None = None,
) -> dict[str, float]:
    """Build a LlamaIndex query engine over `corpus` with CLaRa memory and answer its questions
    (the first `questions` of them if given; every passage is compressed either way).

    Returns a summary: questions, mean context tokens (CLaRa and text RAG), seconds.
    """
    if questions is not None and questions < 1:
        raise ValueError(f"questions must be at least 1, got {questions}")
    import torch  # noqa: PLC0415 - keep `clara --help` fast
    from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: PLC0415

    from .llama_index import ClaraEmbedding, ClaraLLM, ClaraVectorStore  # noqa: PLC0415
    from .llama_index._memory import node_memory  # noqa: PLC0415

    p = _Printer(out)
    passages, all_questions = load_corpus(corpus)
    questions = all_questions[:questions] if questions is not None else all_questions
    p.step(f"corpus {corpus}: {len(passages)} passages, {len(questions)} questions")
    documents = [
        Document(
            text=f"{title}\n{text}" if title else text,
            metadata={"title": title},
            excluded_embed_metadata_keys=["title"],
            excluded_llm_metadata_keys=["title"],
        )
        for title, text in passages
    ]
    p.step(
        f"compressing {len(documents)} passages into {model.n_mem} memory vectors each "
        f"(LlamaIndex VectorStoreIndex over ClaraVectorStore)"
    )
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        documents,
        embed_model=ClaraEmbedding(model=model),
        show_progress=True,
        storage_context=StorageContext.from_defaults(
            vector_store=ClaraVectorStore(model=model, dtype=torch.float32)
        ),
    )
    p.step(f"store built in {time.perf_counter() - start:.1f} s")
    lengths = [
        len(model.tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in documents
    ]
    mean_len = sum(lengths) / len(lengths)
    p.line(
        f"memory shape: ({len(documents)}, {model.n_mem}, {model.hidden_size})  (passages, memory "
        f"vectors, hidden size); mean passage {mean_len:.0f} tokens -> {model.n_mem} vectors "
        f"(compression ratio {mean_len / model.n_mem:.1f}x, configured {model.compression_rate}x)"
    )
    engine = index.as_query_engine(
        llm=ClaraLLM(model=model, max_new_tokens=max_new_tokens), similarity_top_k=top_k
    )
    clara_total = text_total = 0
    answered = 0
    for i, q in enumerate(questions, 1):
        start = time.perf_counter()
        response = engine.query(q.question)
        seconds = time.perf_counter() - start
        nodes = response.source_nodes
        memory = torch.stack([node_memory(n, model) for n in nodes]).to(model.device, model.dtype)
        clara_tokens, text_tokens = _context_tokens(
            model, q.question, memory, [n.node.get_content() for n in nodes]
        )
        clara_total, text_total = clara_total + clara_tokens, text_total + text_tokens
        hit = matches(str(response), q.answers)
        answered += hit
        p.line()
        p.line(f"Q{i}: {q.question.strip()}")
        p.line(
            f"  answer:    {str(response).strip()!r}   (reference: {' | '.join(q.answers[:3])}; "
            f"{'contains it' if hit else 'does not contain it'})"
        )
        for rank, node in enumerate(nodes, 1):
            title = node.node.metadata.get("title") or node.node.get_content()[:40]
            p.line(f"  source {rank}: score {node.score:.3f}  {title}")
        p.line(
            f"  generator context: {clara_tokens} tokens (text RAG: {text_tokens}, "
            f"{text_tokens / clara_tokens:.1f}x more)   time {seconds:.2f} s"
        )
    n = max(len(questions), 1)
    summary = {
        "questions": len(questions),
        "clara_context_tokens": clara_total / n,
        "text_rag_context_tokens": text_total / n,
        "contains_reference": answered,
        "seconds": time.perf_counter() - p.start,
    }
    p.line()
    p.step(
        f"done: {len(questions)} questions, mean generator context {summary['clara_context_tokens']:.0f} "
        f"tokens vs {summary['text_rag_context_tokens']:.0f} for text RAG "
        f"({summary['text_rag_context_tokens'] / max(summary['clara_context_tokens'], 1):.1f}x fewer); "
        f"{answered}/{len(questions)} answers contain a reference answer"
    )
    return summary
