"""From a folder of raw documents to training data for every stage.

1. Read ``.txt``, ``.md``/``.markdown`` files and ``.jsonl`` files (one object per line with
   ``"text"``, optional ``"title"``/``"id"``) under the folder.
2. Chunk each document into pieces of at most `doc_max_length` tokens of the model's
   tokenizer, on paragraph and sentence boundaries where possible.
3. Ask the teacher for QA pairs and a paraphrase per chunk, and write, in the reference
   formats (so users can inspect, edit and reuse them with ``--data``):
   ``compress.jsonl`` (stage-1 QA rows and paraphrase rows), ``instruct.jsonl`` (question,
   k documents: the source chunk and BM25 hard negatives), ``e2e.jsonl`` and
   ``retrieval.jsonl`` (question, N candidates, ``pos_index``; plus cropped spans of each
   chunk as label-free pseudo-queries), ``eval.jsonl`` (held-out
   questions, same layout as e2e) and ``chunks.jsonl``.

Hard negatives are the chunks BM25 ranks highest for the question, skipping the source
chunk and any chunk that contains the answer (it would be a false negative).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from clara_integrations.pipeline.bm25 import BM25

from .data import DataError, iter_jsonl, iter_text_lines, summarize_issues, write_jsonl
from .metrics import normalize_answer
from .pseudo_queries import pseudo_query_rows
from .teachers import Teacher

__all__ = ["Chunk", "SynthesisConfig", "chunk_text", "read_documents", "synthesize"]

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}


@dataclass(frozen=True)
class Chunk:
    """A piece of a source document, at most `doc_max_length` tokens."""

    id: str
    source: str
    text: str


@dataclass(frozen=True)
class SynthesisConfig:
    """How much data to write per chunk; saved as ``data/manifest.json``."""

    doc_max_length: int = 256
    qa_per_chunk: int = 5  # stage-1 QA pairs in one row
    questions_per_chunk: int = 2  # stage 2/3 questions
    instruct_k: int = 5  # documents per instruct example
    num_candidates: int = 10  # candidates per e2e/retrieval example
    crops_per_chunk: int = 1  # label-free retrieval rows: cropped spans (pseudo_queries.py)
    eval_fraction: float = 0.1
    max_eval: int = 200
    seed: int = 42
    teacher: str = "offline"


def _read_text_file(path: Path, issues: list[str], strict: bool) -> str:
    lines = []
    for _, line in iter_text_lines(path, strict=strict):
        if isinstance(line, DataError):
            issues.append(str(line))
        else:
            lines.append(line)
    # Universal newlines, as text-mode reading gave: no stray "\r" in Windows-edited files.
    return "".join(lines).replace("\r\n", "\n").replace("\r", "\n")


def _read_jsonl_file(path: Path, issues: list[str], strict: bool) -> Iterator[tuple[str, str]]:
    for origin, obj in iter_jsonl(path, strict=strict):
        if isinstance(obj, DataError):
            issues.append(str(obj))
        elif isinstance(obj, dict) and isinstance(obj.get("text"), str) and obj["text"].strip():
            title = obj.get("title") if isinstance(obj.get("title"), str) else ""
            yield (
                str(obj.get("id") or origin),
                f"# {title}\n\n{obj['text']}" if title else obj["text"],
            )
        else:
            problem = DataError(f"{origin}: needs a non-empty string 'text'")
            if strict:
                raise problem
            issues.append(str(problem))


def read_documents(folder: str | Path, *, strict: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (source name, text) for every readable document under `folder` (or a file).

    Files are UTF-8 (a BOM is dropped). Lines that are not valid UTF-8, and ``.jsonl``
    lines that are not JSON objects with ``"text"``, are skipped; one warning at the end
    counts them and shows the first few with ``file:line``.

    Raises:
        FileNotFoundError: `folder` does not exist or holds no usable document.
        DataError: with `strict`, the first skipped line.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"--docs {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    found, issues = 0, []
    for path in files:
        suffix, before, seen = path.suffix.lower(), len(issues), found
        if suffix in TEXT_SUFFIXES:
            text = _read_text_file(path, issues, strict)
            if text.strip():
                found += 1
                yield str(path), text
        elif suffix == ".jsonl":
            for source, text in _read_jsonl_file(path, issues, strict):
                found += 1
                yield source, text
        else:
            continue
        if found == seen and len(issues) == before:  # nothing read, nothing wrong: no text
            empty = DataError(f"{path}:1: the file is empty")
            if strict:
                raise empty
            issues.append(str(empty))
    if not found:
        why = f"; {summarize_issues(issues)}" if issues else ""
        raise FileNotFoundError(f"no usable .txt, .md or .jsonl document under --docs {root}{why}")
    if issues:
        logger.warning(
            "--docs %s (--strict stops at the first): %s", root, summarize_issues(issues)
        )


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _pieces(
    text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> Iterator[tuple[str, int]]:
    """Paragraphs, else sentences, else token windows, each with its token count."""
    for paragraph in _PARAGRAPH.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        n = len(tokenizer(paragraph, add_special_tokens=False)["input_ids"])
        if n <= max_tokens:
            yield paragraph, n
            continue
        for sentence in _SENTENCE.split(paragraph):
            enc = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            for start in range(0, len(offsets), max_tokens):
                window = offsets[start : start + max_tokens]
                yield sentence[window[0][0] : window[-1][1]], len(window)


def chunk_text(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[str]:
    """Greedy packing of paragraphs/sentences into chunks of at most `max_tokens` tokens.

    Example:
        >>> chunk_text("One.\\n\\nTwo.", tokenizer, 256)  # doctest: +SKIP
        ['One.\\n\\nTwo.']
    """
    chunks, current, used = [], [], 0
    for piece, n in _pieces(text, tokenizer, max_tokens):
        if current and used + n + 1 > max_tokens:
            chunks.append("\n\n".join(current))
            current, used = [], 0
        current.append(piece)
        used += n + (1 if used else 0)
    if current:
        chunks.append("\n\n".join(current))
    return [c for c in chunks if c.strip()]


def _negatives(
    index: BM25,
    chunks: list[Chunk],
    source: int,
    question: str,
    answer: str,
    n: int,
    rng: random.Random,
) -> list[int]:
    """`n` hard negatives for `question`: BM25 order, no source, no chunk with the answer."""
    norm_answer = normalize_answer(answer)

    def ok(i: int) -> bool:
        return i != source and not (norm_answer and norm_answer in normalize_answer(chunks[i].text))

    picked = [i for i in index.top(question, 4 * n + 8, exclude=frozenset({source})) if ok(i)][:n]
    if len(picked) < n:  # small corpus: fill with random chunks
        rest = [i for i in range(len(chunks)) if i not in picked and ok(i)]
        rng.shuffle(rest)
        picked += rest[: n - len(picked)]
    if len(picked) < n:
        rest = [i for i in range(len(chunks)) if i != source and i not in picked]
        picked += rest[: n - len(picked)]
    return picked


def _candidates(
    chunks: list[Chunk], source: int, negatives: list[int], rng: random.Random
) -> tuple[list[str], int]:
    order = [source] + negatives
    rng.shuffle(order)
    return [chunks[i].text for i in order], order.index(source)


def _make_chunks(
    folder: str | Path, tokenizer: PreTrainedTokenizerBase, max_tokens: int, strict: bool = False
) -> list[Chunk]:
    chunks = []
    for source, text in read_documents(folder, strict=strict):
        for j, piece in enumerate(chunk_text(text, tokenizer, max_tokens)):
            chunks.append(Chunk(f"{source}#{j}", source, piece))
    return chunks


def _drop_shared_questions(rows: dict[str, list[dict[str, Any]]]) -> None:
    """Remove from the retrieval and e2e rows every question asked of several chunks (a
    document's template sentence such as "This a document about ____." is): it names no
    single positive, so it teaches the query reasoner nothing. Instruct keeps them (from
    its memory the generator can still answer what the document is about)."""
    counts = Counter(row["question"] for row in rows["e2e"])
    shared = {q for q, n in counts.items() if n > 1}
    if not shared:
        return
    for name in ("retrieval", "e2e"):
        before = len(rows[name])
        rows[name] = [row for row in rows[name] if row["question"] not in shared]
        logger.info(
            "%s: %d of %d rows dropped: their question (%d distinct) is asked of several "
            "chunks, so it has no single positive",
            name,
            before - len(rows[name]),
            before,
            len(shared),
        )


def synthesize(
    folder: str | Path,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    teacher: Teacher,
    config: SynthesisConfig,
    show_progress: bool = True,
    write: bool = True,
    strict: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Chunk the documents under `folder` and write every stage's JSONL into `out_dir`.

    Args:
        strict: raise on the first unreadable document line instead of skipping it.

    Returns:
        {"compress", "instruct", "retrieval", "e2e", "eval", "chunks"} -> rows written.

    Raises:
        FileNotFoundError: no usable document found.
        DataError: with `strict`, the first unreadable line.
        ValueError: fewer than 2 chunks (nothing to use as a negative).
    """
    chunks = _make_chunks(folder, tokenizer, config.doc_max_length, strict)
    if len(chunks) < 2:
        raise ValueError(f"--docs {folder} gives {len(chunks)} chunk(s); need at least 2")
    index = BM25([c.text for c in chunks])
    rng = random.Random(config.seed)
    n_neg = min(config.num_candidates, len(chunks)) - 1
    k_neg = min(config.instruct_k, len(chunks)) - 1
    rows: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("compress", "instruct", "retrieval", "e2e", "eval")
    }
    # Every `stride`-th chunk with questions gives one held-out question (deterministic).
    stride = max(1, round(1 / config.eval_fraction)) if config.eval_fraction > 0 else 0
    with_pairs = 0
    n_pairs = max(config.qa_per_chunk, config.questions_per_chunk + 1)
    prepare = getattr(teacher, "prepare", None)
    if prepare is not None:  # a batching teacher answers every chunk's questions at once
        prepare([c.text for c in chunks], n_pairs)
    for i, chunk in enumerate(
        tqdm(chunks, desc="synthesising", disable=not show_progress, unit="chunk")
    ):
        pairs = list(teacher.qa_pairs(chunk.text, n_pairs))
        with_pairs += bool(pairs)
        held_out = stride and pairs and (with_pairs - 1) % stride == stride // 2
        if held_out and len(rows["eval"]) < config.max_eval:
            q, a = pairs.pop(0)
            docs, pos = _candidates(chunks, i, _negatives(index, chunks, i, q, a, n_neg, rng), rng)
            rows["eval"].append(
                {"question": q, "answers": [a], "docs": docs, "pos_index": [pos], "chunk": chunk.id}
            )
        if pairs:
            qa = pairs[: config.qa_per_chunk]
            rows["compress"].append(
                {
                    "data_type": "qa",
                    "question": [q for q, _ in qa],
                    "answers": [a for _, a in qa],
                    "docs": [chunk.text],
                }
            )
        rows["compress"].append(
            {
                "data_type": "paraphrase",
                "answers": [teacher.paraphrase(chunk.text)],
                "docs": [chunk.text],
            }
        )
        for q, a in pairs[: config.questions_per_chunk]:
            docs, pos = _candidates(chunks, i, _negatives(index, chunks, i, q, a, k_neg, rng), rng)
            rows["instruct"].append({"question": q, "answer": a, "docs": docs, "pos_index": [pos]})
            docs, pos = _candidates(chunks, i, _negatives(index, chunks, i, q, a, n_neg, rng), rng)
            row = {"question": q, "answer": a, "docs": docs, "pos_index": [pos]}
            rows["e2e"].append(row)
            rows["retrieval"].append(row)
    _drop_shared_questions(rows)
    if config.crops_per_chunk > 0:  # label-free query reasoner pairs; eval chunks kept out
        held = {row["chunk"] for row in rows["eval"]}
        rows["retrieval"] += pseudo_query_rows(
            [c.text for c in chunks if c.id not in held],
            per_doc=config.crops_per_chunk,
            n_candidates=n_neg + 1,
            window_words=config.doc_max_length * 3 // 4,  # ~tokens the compressor reads
            seed=config.seed,
        )
    rows["chunks"] = [asdict(c) for c in chunks]
    if write:
        out = Path(out_dir)
        for name, data in rows.items():
            write_jsonl(out / f"{name}.jsonl", data)
        (out / "manifest.json").write_text(
            json.dumps(
                {
                    **asdict(config),
                    "documents": str(folder),
                    "chunks": len(chunks),
                    "rows": {k: len(v) for k, v in rows.items()},
                    **({"teacher_stats": teacher.stats()} if hasattr(teacher, "stats") else {}),
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        logger.info("wrote synthetic data to %s: %s", out, {k: len(v) for k, v in rows.items()})
    return rows
