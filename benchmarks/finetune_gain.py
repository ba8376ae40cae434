"""Does `python -m training.finetune --docs` improve a model on a collection? Before/after.

    python -m benchmarks.finetune_gain                   # 60 CPU-minutes of training
    python -m benchmarks.finetune_gain --minutes 120 --workdir ~/clara-runs/fg

The collection: the 364 documents of ``../shared/data/clara_pretrain_example.jsonl``,
written as plain ``{"text"}`` lines (no questions, no labels) and given to the user's
command. Training starts from the shipped default and runs, label-free:

  1. ``--stages instruct,retrieval``: the generator learns the self teacher's answers to
     cloze questions from memory (compressor frozen, so memories are cached); the query
     reasoner learns the same questions and cropped spans against every cached document
     (``--retrieval-negatives bank``);
  2. ``--stages e2e`` from run 1, on run 1's synthesised e2e rows (generator loss through
     the differentiable top-k).

The budget (``--minutes``) is split 45/30/25 % over instruct, retrieval and e2e through
``--max-minutes``; synthesis (the self teacher) and evaluation come on top and are timed.

Evaluation on the held-out questions of ``clara_qa_dev.jsonl`` (about these documents;
training never sees them), for the shipped default ("before"), after run 1 and after
run 2: recall@1/2/5 among each question's candidates (and BM25's), and, with the gold
passages first among k = 5 documents, answers' EM, F1 and cover-EM from memory beside the
base model reading the same documents' text. Results: ``benchmarks/results/finetune_gain.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._paths import RESULTS, ROOT
from benchmarks.answer_quality import evaluate_set
from benchmarks.retrieval_quality import DATA, KS, bm25_ranker, load_set, model_ranker, recalls
from clara_integrations import ClaraModel

SHARES = {"instruct": 0.45, "retrieval": 0.30, "e2e": 0.25}

logger = logging.getLogger(__name__)


def write_corpus(source: Path, out: Path, limit: int = 0) -> int:
    """The source's distinct documents (the first `limit`; 0: all) as ``{"text"}`` lines;
    returns how many."""
    texts: dict[str, None] = {}
    for line in source.open(encoding="utf-8"):
        docs = json.loads(line)["docs"]
        for doc in docs if isinstance(docs, list) else [docs]:
            texts[doc.strip()] = None
    kept = list(texts)[:limit] if limit else list(texts)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "documents.jsonl").open("w", encoding="utf-8") as f:
        for text in kept:
            f.write(json.dumps({"text": text}) + "\n")
    return len(kept)


def _finetune(flags: list[str], log: Path) -> float:
    """One `python -m training.finetune` run, its output in `log`; returns minutes."""
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(
            [sys.executable, "-m", "training.finetune", "--quiet", *flags],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"training.finetune failed ({done.returncode}); see {log}")
    return (time.perf_counter() - started) / 60


def train(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Runs 1 and 2 into `work/run1` and `work/run2`; returns minutes per run."""
    n = write_corpus(DATA / "clara_pretrain_example.jsonl", work / "corpus", args.documents)
    logger.info("corpus: %d documents", n)
    budget = {s: round(args.minutes * share, 2) for s, share in SHARES.items()}
    common = [
        "--init-from",
        args.init_from,
        "--eval-max-examples",
        "0",
        "--seed",
        str(args.seed),
        *(["--base", args.base] if args.base else []),
        *args.extra,
    ]
    run1 = [
        "--docs",
        str(work / "corpus"),
        "--output",
        str(work / "run1"),
        "--stages",
        "instruct,retrieval",
        "--instruct-compressor",
        "frozen",
        "--instruct-decoder",
        "continue",
        "--retrieval-negatives",
        "bank",
        "--qa-per-chunk",
        str(args.questions_per_chunk + 1),
        "--questions-per-chunk",
        str(args.questions_per_chunk),
        "--epochs",
        f"instruct={args.epochs},retrieval={args.epochs}",
        "--learning-rate",
        "instruct=1e-4,retrieval=2e-4",
        "--train-batch-size",
        "instruct=16,retrieval=16",
        "--max-minutes",
        f"instruct={budget['instruct']},retrieval={budget['retrieval']}",
        *common,
    ]
    run2 = [
        "--data",
        f"e2e={work / 'run1' / 'data' / 'e2e.jsonl'}",
        "--output",
        str(work / "run2"),
        "--init-from",
        str(work / "run1"),
        "--stages",
        "e2e",
        "--epochs",
        f"e2e={args.epochs}",
        "--learning-rate",
        "e2e=5e-5",
        "--train-batch-size",
        "e2e=16",
        "--max-minutes",
        f"e2e={budget['e2e']}",
        *common[2:],  # run 2 starts from run 1, not from --init-from
    ]
    return {
        "documents": n,
        "run1_minutes": _finetune(run1, work / "run1.log"),
        "run2_minutes": _finetune(run2, work / "run2.log"),
        **{f"budget_{s}_minutes": m for s, m in budget.items()},
    }


def evaluate(
    checkpoints: dict[str, str],
    base: str | None,
    questions: int,
    answer_questions: int,
    k: int,
) -> dict[str, Any]:
    """Retrieval of every checkpoint and BM25 on the first `questions` (0: all) held-out
    clara_qa questions; answers on the first `answer_questions` of them."""
    rows = load_set("clara_qa", questions)
    models = {
        label: ClaraModel.from_pretrained(
            None if path == "default" else path, base_model=base, dtype=torch.float32
        )
        for label, path in checkpoints.items()
    }
    retrieval = {label: recalls(rows, model_ranker(m)) for label, m in models.items()}
    retrieval["bm25"] = recalls(rows, bm25_ranker())
    labels = list(models)
    answering = {"clara": models[labels[-1]], "before": models[labels[0]]}
    answering.update({label: models[label] for label in labels[1:-1]})
    answers = evaluate_set(answering, rows[:answer_questions], k, 32, ("gold",))["gold"]
    answers[labels[-1]] = answers.pop("clara")
    answers[labels[0]] = answers.pop("before")
    return {
        "questions": len(rows),
        "answer_questions": min(answer_questions, len(rows)),
        "retrieval": retrieval,
        "answers_gold_k5": answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget")
    parser.add_argument(
        "--workdir", type=Path, default=Path.home() / "clara-runs" / "finetune-gain"
    )
    parser.add_argument("--init-from", default=None, help="default: the shipped checkpoint")
    parser.add_argument("--base", default=None, help="base model, if not the checkpoint's own")
    parser.add_argument("--documents", type=int, default=0, help="first N documents (0: all)")
    parser.add_argument("--questions-per-chunk", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=1.0, help="per stage, within budget")
    parser.add_argument("--questions", type=int, default=0, help="retrieval; 0: all (257)")
    parser.add_argument("--answer-questions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--skip-training", action="store_true", help="evaluate the runs already in --workdir"
    )
    parser.add_argument(
        "extra", nargs="*", help="more training.finetune flags for both runs (after --)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 minutes, 48 documents, 40 questions"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.documents, args.questions = 5.0, 48, 40
        args.answer_questions = min(args.answer_questions, 20)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    if args.init_from is None:
        from clara_integrations.modeling.assets import default_checkpoint_dir  # noqa: PLC0415

        args.init_from = str(default_checkpoint_dir())
    work = args.workdir.expanduser()
    timings = {} if args.skip_training else train(args, work)
    started = time.perf_counter()
    checkpoints = {"before": args.init_from, "run1": str(work / "run1"), "run2": str(work / "run2")}
    result = evaluate(checkpoints, args.base, args.questions, args.answer_questions, k=5)
    timings["eval_minutes"] = (time.perf_counter() - started) / 60
    synth = work / "run1" / "data" / "manifest.json"
    result.update(
        minutes=args.minutes,
        init_from=args.init_from,
        timings=timings,
        synthesis=json.loads(synth.read_text()) if synth.is_file() else None,
        command="python -m benchmarks.finetune_gain " + " ".join(argv or sys.argv[1:]),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune_gain.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"{'ranker':10}" + "".join(f"{f'R@{k}':>8}" for k in KS) + "\n")
    for label, scores in result["retrieval"].items():
        sys.stdout.write(
            f"{label:10}" + "".join(f"{scores[f'recall@{k}']:>8.3f}" for k in KS) + "\n"
        )
    for label, scores in result["answers_gold_k5"].items():
        if label != "examples":
            sys.stdout.write(f"answers {label:10} {json.dumps(scores)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
