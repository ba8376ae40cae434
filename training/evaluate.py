"""Evaluate a CLaRa checkpoint on QA data with candidates: retrieval and answers.

For every question the query reasoner ranks the question's candidate documents (cosine
between its vector and each compressed candidate), the top `k` memories go to the
generator, and the answer is scored against the reference answers (spec §8):
recall@1/3/5 and precision@k of the ranking against ``pos_index`` / ``gold``, EM, F1 and
acc (coverage) of the answer, and the compression ratio (document tokens per memory
vector). A model without a query reasoner ranks with its compressor instead (that is what
the reference's end-to-end stage starts from: a copy of the compressor).

    python -m training.evaluate --model ./my-clara --data dev.jsonl
    python -m training.evaluate --model ./my-clara --data ../shared/data/hotpotqa_dev.jsonl \
        --max-examples 100 --k 5 --output predictions.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clara_integrations import ClaraModel
from clara_integrations.modeling.adapters import ENCODER_ADAPTER, QUERY_ADAPTER
from clara_integrations.modeling.layout import encoder_token_ids

from .data import DataError, Example, load_examples, summarize_issues, write_jsonl
from .metrics import answer_scores, retrieval_scores

__all__ = ["evaluate_model", "main"]

logger = logging.getLogger(__name__)


def _query_vectors(model: ClaraModel, questions: list[str], batch_size: int) -> torch.Tensor:
    if QUERY_ADAPTER in model.adapters:
        return model.encode_queries(questions, batch_size=batch_size)
    model.eval()
    with torch.no_grad():
        vectors, _ = model.encode_texts(questions, ENCODER_ADAPTER, batch_size)
    return vectors.flatten(1)  # (B, n_mem * H)


def _evaluate_batch(
    model: ClaraModel,
    batch: list[Example],
    k: int,
    max_new_tokens: int,
    batch_size: int,
    generate: bool,
) -> tuple[list[list[int]], list[str]]:
    questions = [ex.question for ex in batch]
    flat = [d for ex in batch for d in ex.docs]
    unique = list(dict.fromkeys(flat))
    memory = model.compress_documents(unique, batch_size=batch_size, show_progress=False)
    position = {t: i for i, t in enumerate(unique)}
    where = torch.as_tensor([position[t] for t in flat], device=memory.device)
    n = len(batch[0].docs)
    candidates = memory[where].reshape(len(batch), n, model.n_mem, model.hidden_size)
    queries = _query_vectors(model, questions, batch_size)
    with torch.no_grad():
        selected, _, scores = model.select(queries, candidates, min(k, n))
    rankings = scores.argsort(dim=1, descending=True).tolist()  # (B, N)
    answers = [""] * len(batch)
    if generate:
        answers = model.generate_from_compressed_documents_and_questions(
            questions, selected, max_new_tokens=max_new_tokens
        )
    return rankings, answers


def evaluate_model(
    model: ClaraModel,
    examples: Sequence[Example],
    *,
    k: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    generate: bool = True,
    show_progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Retrieval and answer metrics of `model` on `examples` (each with candidates).

    Args:
        k: documents the generator reads (default `model.config.generation_top_k`).
        generate: False skips generation (retrieval metrics only).

    Returns:
        (metrics, one prediction record per example).

    Example:
        >>> metrics, preds = evaluate_model(model, load_examples(["dev.jsonl"]).examples)  # doctest: +SKIP
        >>> metrics["recall@1"], metrics["em"]                                            # doctest: +SKIP
    """
    k = k or model.config.generation_top_k
    rankings: list[list[int]] = []
    predictions: list[str] = []
    todo = list(examples)
    bar = tqdm(total=len(todo), desc="evaluating", unit="q", disable=not show_progress)
    # A forward needs one candidate count; consecutive examples with the same count go together.
    for _, group in groupby(todo, key=lambda ex: len(ex.docs)):
        group = list(group)
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            ranks, answers = _evaluate_batch(model, batch, k, max_new_tokens, batch_size, generate)
            rankings += ranks
            predictions += answers
            bar.update(len(batch))
    bar.close()
    metrics: dict[str, Any] = {
        "n": len(todo),
        "k": k,
        "query_adapter": QUERY_ADAPTER if QUERY_ADAPTER in model.adapters else ENCODER_ADAPTER,
    }
    metrics.update(retrieval_scores(rankings, [ex.pos_index for ex in todo]))
    if generate:
        metrics.update(answer_scores(predictions, [ex.answers or ex.targets for ex in todo]))
    metrics["compression_ratio"] = compression_ratio(model, todo)
    records = [
        {
            "question": ex.question,
            "answers": list(ex.answers or ex.targets),
            "prediction": p,
            "ranking": r,
            "topk_idx": r[:k],
            "pos_index": list(ex.pos_index),
        }
        for ex, p, r in zip(todo, predictions, rankings)
    ]
    return metrics, records


def compression_ratio(model: ClaraModel, examples: Sequence[Example]) -> float:
    """Mean document tokens the compressor reads (up to doc_max_length) per memory vector."""
    docs = list(dict.fromkeys(d for ex in examples for d in ex.docs))
    if not docs:
        return 0.0
    rows = encoder_token_ids(model.tokenizer, model.special, docs, model.config.doc_max_length)
    # Minus <ENC>, bos, eos: only the document's own tokens count.
    text_tokens = [min(len(r) - 3, model.config.doc_max_length) for r in rows]
    return sum(max(t, 1) for t in text_tokens) / len(docs) / model.n_mem


def format_metrics(metrics: dict[str, Any]) -> str:
    keys = [
        k
        for k in ("recall@1", "recall@3", "recall@5", "em", "f1", "acc", "compression_ratio")
        if k in metrics
    ]
    return (
        " ".join(f"{k} {metrics[k]:.4f}" for k in keys)
        + f" (n={metrics.get('n')}, k={metrics.get('k')})"
    )


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a record is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def results_logger() -> logging.Logger:
    """A logger for a command's results: shown on stdout even under --quiet."""
    log = logging.getLogger("training.results")
    if not log.handlers:
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="CLaRa checkpoint folder (ours or released format)"
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="JSONL with question, answers, docs, pos_index/gold",
    )
    p.add_argument(
        "--base", default=None, help="base LM (default: the checkpoint's decoder_model_name)"
    )
    p.add_argument(
        "--adapter-policy",
        default="all",
        choices=("reference", "all"),
        help="which adapters of a released checkpoint to use (reference evaluation: all)",
    )
    p.add_argument(
        "--k", type=int, default=None, help="documents read per question (default: config)"
    )
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-generate", action="store_true", help="retrieval metrics only")
    p.add_argument("--output", default=None, help="write one prediction per line (JSONL)")
    p.add_argument("--json", default=None, help="write the metrics as JSON")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed line")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stdout,
    )
    try:
        loaded = load_examples(args.data, strict=args.strict, max_examples=args.max_examples)
    except (DataError, FileNotFoundError) as exc:  # DataError: --strict
        logger.error("%s", exc)
        return 2
    if not loaded.examples:
        why = summarize_issues(loaded.issues) if loaded.issues else "no line was read"
        logger.error("no usable example in %s; %s", ", ".join(args.data), why)
        return 2
    if loaded.issues:
        logger.warning(
            "%s (--strict stops at the first)", summarize_issues(loaded.issues, first=20)
        )
    model = ClaraModel.from_pretrained(
        args.model, base_model=args.base, adapter_policy=args.adapter_policy
    )
    metrics, records = evaluate_model(
        model,
        loaded.examples,
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        generate=not args.no_generate,
        show_progress=not args.quiet,
    )
    results_logger().info("%s\n%s", json.dumps(metrics, indent=1), format_metrics(metrics))
    if args.output:
        write_jsonl(args.output, records)
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
