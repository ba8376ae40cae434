"""Answer quality: EM/F1 of CLaRa answering from memory vs the same base model answering
from the same documents' text, on the held-out part of each shared QA set.

    python -m benchmarks.answer_quality                      # 15 questions per set
    python -m benchmarks.answer_quality --quick              # 4 questions per set
    python -m benchmarks.answer_quality --checkpoint ./my-clara

Two document settings, k = 5 documents per question (the checkpoint's generation_top_k):
  * gold: the question's gold passages first, then the other candidates in file order;
  * retrieved: CLaRa's query reasoner ranks the candidates; both systems read its top k.
CLaRa reads each document as n_mem memory vectors (generator adapter); text RAG is the
base model with no adapter, reading the documents' text in the same prompt layout
(`prompts.text_rag_prompt`). Greedy decoding, at most 32 new tokens, for both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from benchmarks._paths import RESULTS
from benchmarks.retrieval_quality import SETS, clara_order, load_set, passage
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


def evaluate_set(
    model: ClaraModel, rows: list[dict], k: int, max_new_tokens: int
) -> dict[str, dict]:
    questions = [row["question"] for row in rows]
    answers = [row["answers"] for row in rows]
    texts = [[passage(d) for d in row["docs"]] for row in rows]
    memories = [model.compress_documents(t) for t in texts]  # (N_i, n_mem, H) per question
    queries = model.encode_queries(questions)
    picks = {"gold": [gold_first(row, k) for row in rows]}
    picks["retrieved"] = [
        clara_order(query, memory)[:k] for query, memory in zip(queries, memories)
    ]
    result: dict[str, dict] = {}
    for setting in SETTINGS:
        chosen = torch.cat([memories[i][idx] for i, idx in enumerate(picks[setting])])
        clara = model.generate_from_compressed_documents_and_questions(
            questions, chosen, max_new_tokens=max_new_tokens
        )
        text = [
            text_rag_answer(model, q, [texts[i][j] for j in picks[setting][i]], max_new_tokens)
            for i, q in enumerate(questions)
        ]
        result[setting] = {
            "clara": answer_scores(clara, answers),
            "text_rag": answer_scores(text, answers),
            "examples": [
                {"question": q, "answers": a, "clara": c, "text_rag": t}
                for q, a, c, t in list(zip(questions, answers, clara, text))[:3]
            ],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", default=None, help="CLaRa checkpoint (default: the shipped one)"
    )
    parser.add_argument("--base-model", default=None, help="override the checkpoint's base model")
    parser.add_argument("--questions", type=int, default=15, help="per set")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="4 questions per set")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions = 4
    logging.basicConfig(level=logging.WARNING)
    model = ClaraModel.from_pretrained(
        args.checkpoint, base_model=args.base_model, dtype=torch.float32
    )
    k = model.config.generation_top_k
    table = {"k": k, "checkpoint": args.checkpoint or "shipped default", "sets": {}}
    for name in SETS:
        rows = load_set(name, args.questions)
        table["sets"][name] = {
            "questions": len(rows),
            **evaluate_set(model, rows, k, args.max_new_tokens),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "answer_quality.json").write_text(json.dumps(table, indent=2) + "\n")
    sys.stdout.write(f"{'set':16}{'documents':11}{'CLaRa EM':>9}{'F1':>7}{'text EM':>9}{'F1':>7}\n")
    for name, by_setting in table["sets"].items():
        for setting in SETTINGS:
            c, t = by_setting[setting]["clara"], by_setting[setting]["text_rag"]
            sys.stdout.write(
                f"{name:16}{setting:11}{c['em']:>9.3f}{c['f1']:>7.3f}{t['em']:>9.3f}{t['f1']:>7.3f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
