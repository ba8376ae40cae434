"""The recipe that rebuilds the shipped default checkpoint: data splits and the export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from clara_integrations import ClaraModel
from tests.conftest import SHARED, TINY_BASE
from training.data import doc_text
from training.recipes import default_data
from training.recipes.export_default import export


def _gold_texts(rows):
    return {row["docs"][g]["text"] for row in rows for g in row["gold"]}


@pytest.mark.parametrize("source", ["hotpotqa", "squad", "nq", "musique"])
def test_split_keeps_every_gold_passage_on_one_side(source):
    rows = default_data.read_jsonl(SHARED / "data" / f"{source}_dev.jsonl")
    train, held = default_data.split_qa(rows, default_data.TRAIN_FRACTION)
    assert len(train) + len(held) == len(rows)
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in held)
    assert _gold_texts(train).isdisjoint(_gold_texts(held))
    assert 0.6 < len(train) / len(rows) < 0.9  # near the fraction despite grouping
    again, _ = default_data.split_qa(list(reversed(rows)), default_data.TRAIN_FRACTION)
    assert [r["id"] for r in again] == [r["id"] for r in train]  # file order does not matter


def test_build_writes_stage_files_and_demo_excerpt_is_held_out(tmp_path):
    counts = default_data.build(SHARED / "data", tmp_path)
    stage1 = default_data.read_jsonl(tmp_path / "compress.jsonl")
    assert counts["compress"] == len(stage1)
    paraphrases = [r for r in stage1 if r["data_type"] == "paraphrase"]
    assert paraphrases and all(r["answer"] == r["docs"][0] for r in paraphrases)
    trained = {r["id"] for r in default_data.read_jsonl(tmp_path / "qa_train.jsonl")}
    excerpt = default_data.demo_excerpt(SHARED / "data")
    assert len(excerpt) == sum(n for _, n in default_data.DEMO_EXCERPT)
    assert trained.isdisjoint(r["id"] for r in excerpt)


def test_no_held_out_question_or_passage_reaches_the_training_files(tmp_path):
    """Every clara_qa question is also in the pretraining sample: stage 1 must not learn
    the held-out ones, and the rows added for the query reasoner (pretraining questions,
    crops) hold no held-out passage. (A labeled training question may have a held-out
    question's passage among its negatives, as in the shared files.)"""
    counts = default_data.build(SHARED / "data", tmp_path)
    held_questions, held_docs = set(), set()
    for source in default_data.QA_SOURCES:
        for row in default_data.read_jsonl(tmp_path / f"heldout_{source}.jsonl"):
            held_questions.add(row["question"].strip().lower())
            held_docs.update(doc_text(d) for d in row["docs"])
    held_gold = set()
    for source in default_data.QA_SOURCES:
        for row in default_data.read_jsonl(tmp_path / f"heldout_{source}.jsonl"):
            held_gold.update(doc_text(row["docs"][g]) for g in row["gold"])
    stage1 = default_data.read_jsonl(tmp_path / "compress.jsonl")
    asked = {q.strip().lower() for r in stage1 for q in r.get("question", [])}
    assert asked and asked.isdisjoint(held_questions)
    assert not {doc_text(r["docs"][0]) for r in stage1} & held_gold
    retrieval = default_data.read_jsonl(tmp_path / "retrieval.jsonl")
    assert len(retrieval) == counts["retrieval"] > counts["train_nq"]
    added = [r for r in retrieval if "gold" not in r]  # beside the labeled training rows
    assert added and all(doc_text(d) not in held_docs for r in added for d in r["docs"])
    generator = default_data.read_jsonl(tmp_path / "generator.jsonl")
    assert len(generator) == counts["generator"]
    added = [r for r in generator if "gold" not in r]  # the pretraining questions
    assert added and all(len(r["docs"]) == 5 and r["answer"] for r in added)
    assert all(doc_text(d) not in held_docs for r in added for d in r["docs"])
    assert {r["question"].strip().lower() for r in generator}.isdisjoint(held_questions)


def test_bundled_demo_corpus_is_the_recipes_excerpt():
    from tests.conftest import REPO_ROOT

    bundled = default_data.read_jsonl(
        REPO_ROOT / "clara_integrations" / "assets" / "demo" / "demo_qa.jsonl"
    )
    assert bundled == default_data.demo_excerpt(SHARED / "data")


def test_export_writes_float16_model_files_that_load(tmp_path, e2e_model):
    run = tmp_path / "run"
    e2e_model.save_pretrained(run)
    (run / "checkpoints").mkdir()  # training leftovers are not copied
    size = export(run, tmp_path / "default")
    files = sorted(p.name for p in (tmp_path / "default").iterdir())
    assert "checkpoints" not in files and "config.json" in files
    assert size == sum(p.stat().st_size for p in (tmp_path / "default").iterdir())
    for path in (tmp_path / "default").glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert dtypes <= {torch.float16, torch.int64}, (path.name, dtypes)
    assert json.loads((tmp_path / "default" / "config.json").read_text()) == json.loads(
        (run / "config.json").read_text()
    )
    loaded = ClaraModel.from_pretrained(
        tmp_path / "default", base_model=TINY_BASE, dtype=torch.float32
    )
    docs = ["Paris is the capital of France.", "Weldenia is a genus of plants."]
    diff = (loaded.compress_documents(docs) - e2e_model.compress_documents(docs)).abs().max()
    assert diff < 5e-2  # float16 rounding of adapters only
    assert diff > 0  # and it really was rounded


def test_export_refuses_a_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no native CLaRa checkpoint"):
        export(tmp_path, tmp_path / "out")


def test_crops_per_doc_adds_that_many_pseudo_queries_per_document():
    rows = default_data.read_jsonl(SHARED / "data" / "squad_dev.jsonl")[:12]
    handbook = [
        doc_text(r) for r in default_data.read_jsonl(SHARED / "data" / "handbook_18f_docs.jsonl")
    ][:6]
    held = {doc_text(rows[-1]["docs"][0])}
    added = {}
    for n in (1, 3):
        built = default_data.retrieval_data(rows[:-1], [], handbook, held, crops_per_doc=n)
        added[n] = [r for r in built if "gold" not in r]
        assert all(doc_text(d) not in held for r in added[n] for d in r["docs"])
    assert added[1] and len(added[3]) == 3 * len(added[1])
    assert len({r["question"] for r in added[3]}) > len({r["question"] for r in added[1]})


def test_compress_qa_rows_pair_each_question_with_the_gold_passage_that_answers_it():
    doc = lambda text: {"title": "", "text": text}  # noqa: E731
    qa = [
        {
            "question": "Where?",
            "answers": ["Paris"],
            "gold": [0, 2],
            "docs": [doc("A bridge in Rome."), doc("Noise."), doc("The tower is in Paris.")],
        },
        {
            "question": "Who?",
            "answers": ["nobody named"],
            "gold": [1],
            "docs": [doc("Noise."), doc("A passage without it.")],
        },
        {"question": "Unlabeled?", "answers": ["x"], "docs": [doc("Noise.")]},
    ]
    rows = default_data.compress_qa_rows(qa)
    questions = {r["question"]: r for r in rows if r.get("data_type", "qa") == "qa"}
    assert set(questions) == {"Where?", "Who?"}  # a row without gold labels is left out
    assert questions["Where?"]["docs"] == [doc_text(doc("The tower is in Paris."))]
    assert questions["Who?"]["docs"] == [doc_text(doc("A passage without it."))]  # first gold
    assert questions["Where?"]["answer"] == "Paris"
    paraphrases = [r for r in rows if r.get("data_type") == "paraphrase"]
    assert sorted(r["answer"] for r in paraphrases) == sorted(
        [questions["Where?"]["docs"][0], questions["Who?"]["docs"][0]]
    )
    assert all(r["docs"] == [r["answer"]] for r in paraphrases)


def test_compress_qa_file_holds_no_held_out_gold_passage(tmp_path):
    counts = default_data.build(SHARED / "data", tmp_path, crops_per_doc=0)
    rows = default_data.read_jsonl(tmp_path / "compress_qa.jsonl")
    assert len(rows) == counts["compress_qa"] > counts["compress"]
    assert all(len(r["docs"]) == 1 for r in rows)  # stage 1 reads one document
    held_gold, held_questions = set(), set()
    for source in default_data.QA_SOURCES:
        for row in default_data.read_jsonl(tmp_path / f"heldout_{source}.jsonl"):
            held_gold.update(doc_text(row["docs"][g]) for g in row["gold"])
            held_questions.add(row["question"].strip().lower())
    assert not {doc_text(r["docs"][0]) for r in rows} & held_gold
    asked = {
        q.strip().lower()
        for r in rows
        for q in (r["question"] if isinstance(r.get("question"), list) else [r.get("question", "")])
    }
    assert asked.isdisjoint(held_questions)


def test_title_queries_name_two_candidates_and_keep_held_out_passages_out():
    """`--title-queries`: per labeled multi-hop question, a query naming two of its titled
    candidates (both positive) among the rest; no held-out passage, and every row keeps at
    least the 9 candidates of the labeled rows (a stage cuts all rows to the smallest)."""
    rows = default_data.read_jsonl(SHARED / "data" / "hotpotqa_dev.jsonl")[:12]
    held = {doc_text(d) for d in rows[-1]["docs"]} | {doc_text(rows[0]["docs"][3])}
    built = default_data.retrieval_data(rows[:-1], [], [], held, crops_per_doc=0, title_queries=2)
    added = [r for r in built if "gold" not in r]
    assert len(added) == 2 * 11
    for r in added:
        assert len(r["docs"]) >= default_data.MIN_CANDIDATES and len(r["pos_index"]) == 2
        assert all(doc_text(d) not in held for d in r["docs"])
        titles = [r["docs"][i].split("\n", 1)[0] for i in r["pos_index"]]
        assert all(t in r["question"] for t in titles)
    none = default_data.retrieval_data(rows[:-1], [], [], held, crops_per_doc=0)
    assert len(none) == 11  # off by default: the labeled rows alone
