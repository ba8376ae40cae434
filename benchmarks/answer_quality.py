"""Answer quality: EM/F1 of CLaRa answering from memory vs the same base model answering
from the same documents' text, on the held-out part of each shared QA set.

    python -m benchmarks.answer_quality                      # 15 questions per set
    python -m benchmarks.answer_quality --quick              # 4 questions per set
    python -m benchmarks.answer_quality --checkpoint ./my-clara
    python -m benchmarks.answer_quality --checkpoint ./my-clara --compare default --questions 100 --settings gold

Two document settings, k = 5 documents per question (the checkpoint's generation_top_k):
  * gold: the question's gold passages first, then the other candidates in file order;
  * retrieved: CLaRa's query reasoner ranks the candidates; both systems read its top k.
CLaRa reads each document as n_mem memory vectors (generator adapter); text RAG is the
base model with no adapter, reading the documents' text in the same prompt layout
(`prompts.text_rag_prompt`). Greedy decoding, at most 32 new tokens, for both. Scores:
EM, F1 and cover-EM (``acc``: a reference answer occurs in the normalised prediction).
`--compare` scores a second checkpoint (the "before") on the same questions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from benchmarks._paths import RESULTS
from benchmarks.retrieval_quality import SETS, clara_order, load_set, memories_of, passage
from clara_integrations import ClaraModel
from clara_integrations.modeling import prompts
from clara_integrations.modeling.tokens import reference_decode
from training.metrics import answer_scores

SETTINGS = ("gold", "retrieved")


def gold_first(row: dict, k: int) -> list[int]:
    """Indices of k documents: the gold ones first, then the others in file order."""
    rest = [i for i in range(len(row["docs"])) if i not in row["gold"]]
    return (list(row["gold"]) + rest)[:k]


@torch.no_grad()
def text_rag_answer(model: ClaraModel, question: str, docs: list[str], max_new_tokens: int) -> str:
    """The base model alone (no adapter active) reading the documents' text."""
    text = prompts.text_rag_prompt(model.tokenizer, question, docs)
    enc = model.tokenizer([text], add_special_tokens=False, return_tensors="pt").to(model.device)
    out = model.decoder.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        top_p=None,
        temperature=None,
        top_k=None,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    return reference_decode(model.tokenizer, out[:, enc["input_ids"].shape[1] :])[0].strip()


def _load(path: str | None, base_model: str | None) -> ClaraModel:
    path = None if path in (None, "default") else path
    return ClaraModel.from_pretrained(path, base_model=base_model, dtype=torch.float32)


def evaluate_set(
    models: dict[str, ClaraModel],
    rows: list[dict],
    k: int,
    max_new_tokens: int,
    settings: tuple[str, ...] = SETTINGS,
) -> dict[str, dict]:
    """Scores per setting: each CLaRa model reading memory (``clara``, and ``before`` for
    a compared checkpoint) and the base model reading the same documents' text."""
    questions = [row["question"] for row in rows]
    answers = [row["answers"] for row in rows]
    texts = [[passage(d) for d in row["docs"]] for row in rows]
    base = models["clara"]
    result: dict[str, dict] = {}
    for setting in settings:
        scores: dict[str, dict] = {}
        outputs: dict[str, list[str]] = {}
        picks = [gold_first(row, k) for row in rows]
        for name, model in models.items():
            if setting == "retrieved":  # every candidate is compressed, ranked by the model
                memories_of(model, [d for t in texts for d in t])  # one batched call
                queries = model.encode_queries(questions)
                picks = [
                    clara_order(query, memories_of(model, t))[:k]
                    for query, t in zip(queries, texts)
                ]
            if name == "clara":
                main_picks = picks
            # One batched compression of every document read (not 5 per call).
            memories_of(model, [texts[i][j] for i, idx in enumerate(picks) for j in idx])
            chosen = torch.cat(
                [memories_of(model, [texts[i][j] for j in idx]) for i, idx in enumerate(picks)]
            )  # only the documents read are compressed (each once per compressor)
            outputs[name] = model.generate_from_compressed_documents_and_questions(
                questions, chosen, max_new_tokens=max_new_tokens
            )
            scores[name] = answer_scores(outputs[name], answers)
        outputs["text_rag"] = [
            text_rag_answer(base, q, [texts[i][j] for j in main_picks[i]], max_new_tokens)
            for i, q in enumerate(questions)
        ]
        scores["text_rag"] = answer_scores(outputs["text_rag"], answers)
        examples = [
            {"question": q, "answers": a, **{name: out[i] for name, out in outputs.items()}}
            for i, (q, a) in enumerate(list(zip(questions, answers))[:3])
        ]
        result[setting] = {**scores, "examples": examples}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", default=None, help="CLaRa checkpoint (default: the shipped one)"
    )
    parser.add_argument(
        "--compare",
        default=None,
        help="a second checkpoint scored on the same questions as 'before' ('default': the "
        "shipped one)",
    )
    parser.add_argument("--base-model", default=None, help="override the checkpoint's base model")
    parser.add_argument("--questions", type=int, default=15, help="per set (0: every held-out one)")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help="comma-separated: gold, retrieved"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="4 questions per set")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions = 4
    settings = tuple(s for s in args.settings.split(",") if s)
    if not settings or set(settings) - set(SETTINGS):
        parser.error(f"--settings: choose from {', '.join(SETTINGS)}")
    logging.basicConfig(level=logging.WARNING)
    models = {"clara": _load(args.checkpoint, args.base_model)}
    if args.compare:
        models["before"] = _load(args.compare, args.base_model)
    k = models["clara"].config.generation_top_k
    table = {
        "k": k,
        "checkpoint": args.checkpoint or "shipped default",
        "compare": args.compare,
        "settings": list(settings),
        "sets": {},
    }
    for name in SETS:
        rows = load_set(name, args.questions)
        table["sets"][name] = {
            "questions": len(rows),
            **evaluate_set(models, rows, k, args.max_new_tokens, settings),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "answer_quality.json").write_text(json.dumps(table, indent=2) + "\n")
    who = [w for w in ("before", "clara", "text_rag") if w in models or w == "text_rag"]
    sys.stdout.write(
        f"{'set':16}{'documents':11}" + "".join(f"{w + ' EM/F1/cover':>26}" for w in who) + "\n"
    )
    for name, by_setting in table["sets"].items():
        for setting in settings:
            cells = "".join(
                f"{by_setting[setting][w]['em']:>10.3f}{by_setting[setting][w]['f1']:>8.3f}"
                f"{by_setting[setting][w]['acc']:>8.3f}"
                for w in who
            )
            sys.stdout.write(f"{name:16}{setting:11}{cells}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
