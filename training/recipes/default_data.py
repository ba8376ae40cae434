"""Training and held-out splits for the shipped default checkpoint.

The shared QA dev sets are split per source by ``sha256(id)`` (the same ordering the
shared data README uses): the first ``train_fraction`` trains stages 2-3, the rest is
never trained on and is what the README's quality table is measured on.  Stage 1 reads
the reference pretraining sample, plus one reconstruction (``paraphrase``) row per
document, as the reference's stage 1 mixes QA and paraphrase rows.

    python -m training.recipes.default_data --shared ../shared/data --output build/default-data
    python -m training.recipes.default_data --output build/default-data --demo-excerpt clara_integrations/assets/demo/demo_qa.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from clara_integrations.answers import normalize_answer
from training.data import doc_text
from training.pseudo_queries import pseudo_query_rows, retrieval_rows, title_query_rows

#: QA sets with candidates and gold labels (shared data README).
QA_SOURCES = ("hotpotqa", "musique", "2wikimultihopqa", "squad", "nq", "clara_qa")
#: Candidates per retrieval row (the labeled sets have 9-20; added rows get 9).
MIN_CANDIDATES = 9
#: Share of each QA set used for training; the rest is held out for evaluation.
TRAIN_FRACTION = 0.75


def _sha(record_id: str) -> str:
    return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


def split_qa(rows: list[dict], train_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic split on ``sha256(id)``.  Questions linked through a shared gold passage
    form one group and stay on one side, so no held-out gold passage was trained on; groups
    are taken in order of their smallest hash until the training side is full."""
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, row in enumerate(rows):
        for g in row.get("gold", []):
            j = first_with.setdefault(row["docs"][g]["text"], i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(root(i), []).append(i)
    ordered = sorted(
        groups.values(), key=lambda members: min(_sha(str(rows[m]["id"])) for m in members)
    )
    n_train = round(len(rows) * train_fraction)
    train: list[dict] = []
    held: list[dict] = []
    for members in ordered:
        side = train if len(train) < n_train else held
        side.extend(rows[m] for m in sorted(members, key=lambda m: _sha(str(rows[m]["id"]))))
    return train, held


def stage1_rows(pretrain_rows: list[dict]) -> list[dict]:
    rows = []
    for row in pretrain_rows:
        rows.append(row)
        if row.get("data_type", "qa") == "qa":  # add the document's reconstruction row
            rows.append({"data_type": "paraphrase", "docs": row["docs"], "answer": row["docs"][0]})
    return rows


def answer_passage(row: dict) -> str:
    """The gold passage a labeled question's answer is read from: the first gold passage
    that contains a reference answer (multi-hop questions have two, and the answer is
    usually in one), else the first gold passage."""
    golds = [doc_text(row["docs"][g]) for g in row["gold"]]
    answers = [normalize_answer(a) for a in row["answers"]]
    for gold in golds:
        if any(a and a in normalize_answer(gold) for a in answers):
            return gold
    return golds[0]


def compress_qa_rows(qa_train: list[dict], seed: int = 0) -> list[dict]:
    """Stage-1 rows from the labeled training questions: each question with the one gold
    passage that answers it (stage 1 reads one document), and one reconstruction row per
    distinct passage, so that the compressor learns to keep what questions ask about."""
    rows, passages = [], {}
    for row in qa_train:
        if not row.get("gold") or not row.get("answers"):
            continue
        passage = answer_passage(row)
        passages.setdefault(passage, None)
        rows.append({"question": row["question"], "docs": [passage], "answer": row["answers"][0]})
    rows += [{"data_type": "paraphrase", "docs": [p], "answer": p} for p in passages]
    random.Random(seed).shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def without_heldout_questions(
    pretrain_rows: list[dict], held_questions: set[str], held_gold: set[str] = frozenset()
) -> list[dict]:
    """The pretraining sample without held-out material: rows whose document is a held-out
    question's gold passage are dropped, and the held-out questions from the others (every
    clara_qa question is one of the sample's, so stage 1 would otherwise learn the held-out
    answers; the checkpoint of 2026-11-26 did)."""
    rows = []
    for row in pretrain_rows:
        if row.get("docs") and doc_text(row["docs"][0]) in held_gold:
            continue
        if row.get("data_type", "qa") != "qa" or not isinstance(row.get("question"), list):
            rows.append(row)
            continue
        if len(row["question"]) != len(row["answers"]):
            raise ValueError(
                f"a pretraining row has {len(row['question'])} questions but "
                f"{len(row['answers'])} answers"
            )
        kept = [
            (q, a)
            for q, a in zip(row["question"], row["answers"])
            if q.strip().lower() not in held_questions
        ]
        if kept:
            rows.append({**row, "question": [q for q, _ in kept], "answers": [a for _, a in kept]})
    return rows


def retrieval_data(
    qa_train: list[dict],
    pretrain_rows: list[dict],
    unlabeled: list[str],
    held_docs: set[str],
    seed: int = 0,
    crops_per_doc: int = 1,
    title_queries: int = 0,
) -> list[dict]:
    """The query reasoner's data (`--retrieval-negatives bank`): the labeled training
    questions, the pretraining sample's questions with their document, `crops_per_doc`
    cropped pseudo-queries per training-side document (training/pseudo_queries.py), 9
    candidates each (BM25 negatives), and `title_queries` two-title pseudo-queries per
    labeled question among its titled candidates (`title_query_rows`). No held-out
    candidate passage appears in the added rows, as query source or candidate."""
    collection = [doc_text(d) for row in qa_train for d in row["docs"]]
    pairs = []
    for row in pretrain_rows:
        questions = row.get("question")
        if row.get("data_type", "qa") != "qa" or not questions:
            continue
        doc = doc_text(row["docs"][0])
        collection.append(doc)
        pairs += [(q, doc) for q in ([questions] if isinstance(questions, str) else questions)]
    collection += unlabeled
    collection = [d for d in dict.fromkeys(collection) if d not in held_docs]
    pairs = [(q, d) for q, d in pairs if d not in held_docs]
    rows = list(qa_train)
    rows += retrieval_rows(pairs, collection, seed=seed)
    rows += pseudo_query_rows(collection, per_doc=crops_per_doc, seed=seed)
    groups = [
        [(d["title"], d["text"]) for d in row["docs"] if doc_text(d) not in held_docs]
        for row in qa_train
        if all(isinstance(d, dict) and d.get("title") for d in row["docs"])
    ]
    # As many candidates as the labeled rows (9 or more): a stage keeps the smallest
    # count of the whole set for every row, so a short group would cut all the others.
    groups = [g for g in groups if len({t for t, _ in g}) >= MIN_CANDIDATES]
    rows += title_query_rows(groups, per_group=title_queries, seed=seed)
    random.Random(seed).shuffle(rows)
    return rows


def generator_data(
    qa_train: list[dict], pretrain_rows: list[dict], held_docs: set[str], seed: int = 0
) -> list[dict]:
    """The generator's answer data (`--stages instruct --instruct-compressor frozen`): the
    labeled training questions, and each pretraining-sample question with its document
    among 4 BM25 negatives from the other sample documents (the k = 5 of inference), the
    reference answer as target. No held-out candidate passage appears in the added rows."""
    documents = [
        doc_text(row["docs"][0])
        for row in pretrain_rows
        if row.get("data_type", "qa") == "qa" and row.get("docs")
    ]
    documents = [d for d in dict.fromkeys(documents) if d not in held_docs]
    pairs, answers = [], []
    for row in pretrain_rows:
        if row.get("data_type", "qa") != "qa" or not isinstance(row.get("question"), list):
            continue
        doc = doc_text(row["docs"][0])
        if doc in held_docs:
            continue
        for question, answer in zip(row["question"], row["answers"]):
            pairs.append((question, doc))
            answers.append(answer)
    added = retrieval_rows(pairs, documents, n_candidates=5, seed=seed)
    rows = list(qa_train) + [{**row, "answer": a} for row, a in zip(added, answers)]
    random.Random(seed).shuffle(rows)
    return rows


def build(
    shared: Path,
    output: Path,
    train_fraction: float = TRAIN_FRACTION,
    seed: int = 0,
    crops_per_doc: int = 1,
    title_queries: int = 0,
) -> dict[str, int]:
    output.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    train_all: list[dict] = []
    held_questions: set[str] = set()
    held_docs: set[str] = set()
    held_gold: set[str] = set()
    for source in QA_SOURCES:
        train, held = split_qa(read_jsonl(shared / f"{source}_dev.jsonl"), train_fraction)
        write_jsonl(output / f"heldout_{source}.jsonl", held)
        counts[f"train_{source}"], counts[f"heldout_{source}"] = len(train), len(held)
        train_all.extend(train)
        held_questions.update(row["question"].strip().lower() for row in held)
        held_docs.update(doc_text(d) for row in held for d in row["docs"])
        held_gold.update(doc_text(row["docs"][g]) for row in held for g in row["gold"])
    random.Random(seed).shuffle(train_all)  # sources interleaved, so any prefix mixes them
    write_jsonl(output / "qa_train.jsonl", train_all)
    pretrain = without_heldout_questions(
        read_jsonl(shared / "clara_pretrain_example.jsonl"), held_questions, held_gold
    )
    stage1 = stage1_rows(pretrain)
    random.Random(seed).shuffle(stage1)
    write_jsonl(output / "compress.jsonl", stage1)
    counts["compress"] = len(stage1)
    compress_qa = stage1 + compress_qa_rows(train_all, seed)
    random.Random(seed).shuffle(compress_qa)
    write_jsonl(output / "compress_qa.jsonl", compress_qa)
    counts["compress_qa"] = len(compress_qa)
    handbook = [doc_text(r) for r in read_jsonl(shared / "handbook_18f_docs.jsonl")]
    retrieval = retrieval_data(
        train_all, pretrain, handbook, held_docs, seed, crops_per_doc, title_queries
    )
    write_jsonl(output / "retrieval.jsonl", retrieval)
    counts["retrieval"] = len(retrieval)
    generator = generator_data(train_all, pretrain, held_docs, seed)
    write_jsonl(output / "generator.jsonl", generator)
    counts["generator"] = len(generator)
    return counts


#: The demo's excerpt: the first held-out questions (in hash order) of these sources.
DEMO_EXCERPT = (("squad", 3), ("nq", 3), ("hotpotqa", 2))


def demo_excerpt(shared: Path, train_fraction: float = TRAIN_FRACTION) -> list[dict]:
    """Held-out questions (never trained on) with all their candidate passages, for the
    README demo's bundled corpus (`clara_integrations/assets/demo/`)."""
    rows = []
    for source, count in DEMO_EXCERPT:
        _, held = split_qa(read_jsonl(shared / f"{source}_dev.jsonl"), train_fraction)
        rows.extend(held[:count])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--output", type=Path, required=True)
    p.add_argument(
        "--demo-excerpt",
        type=Path,
        default=None,
        help="also write the demo's bundled QA excerpt to this file",
    )
    p.add_argument("--train-fraction", type=float, default=TRAIN_FRACTION)
    p.add_argument(
        "--crops-per-doc",
        type=int,
        default=1,
        help="cropped pseudo-queries per training-side document in retrieval.jsonl",
    )
    p.add_argument(
        "--title-queries",
        type=int,
        default=0,
        help="two-title pseudo-queries per labeled training question in retrieval.jsonl "
        "(both titled candidates positive; training/pseudo_queries.py)",
    )
    args = p.parse_args(argv)
    counts = build(
        args.shared,
        args.output,
        args.train_fraction,
        crops_per_doc=args.crops_per_doc,
        title_queries=args.title_queries,
    )
    for name, n in counts.items():
        print(f"{name}: {n}")
    if args.demo_excerpt is not None:
        write_jsonl(args.demo_excerpt, demo_excerpt(args.shared, args.train_fraction))


if __name__ == "__main__":
    main()
