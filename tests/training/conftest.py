"""Fixtures for the training tests: tiny base model, small data files, a runner."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from training.finetune import main

# Fixture base, 4 memory tokens of 64 dims, rank-4 LoRA, 2 documents per question.
TINY_FLAGS = [
    "--doc-max-length",
    "64",
    "--compress-rate",
    "16",
    "--lora-r",
    "4",
    "--generation-top-k",
    "2",
]


def retrieval_run_flags(
    tiny_base: Path, tiny_data: dict[str, Path], max_steps: int = 2
) -> list[str]:
    """Flags of a short retrieval run on the tiny base (no evaluation, no output folder)."""
    return [
        "--data",
        f"retrieval={tiny_data['qa']}",
        "--stages",
        "retrieval",
        "--base",
        str(tiny_base),
        *TINY_FLAGS,
        "--max-steps",
        str(max_steps),
        "--train-batch-size",
        "2",
        "--eval-max-examples",
        "0",
    ]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on busy shared cores OpenMP's
    thread synchronisation makes them ~20x slower: run the training tests single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base(fixture_dir) -> Path:
    return fixture_dir / "tiny-llama-base"


@pytest.fixture(scope="session")
def tiny_data(shared_dir, tmp_path_factory) -> dict[str, Path]:
    """Small files in the reference formats, cut from ../shared/data."""
    out = tmp_path_factory.mktemp("tiny-data")
    data = shared_dir / "data"
    files = {}
    for name, source, n in (
        ("compress", "clara_pretrain_example.jsonl", 8),
        ("qa", "clara_qa_dev.jsonl", 8),
        ("eval", "clara_qa_dev.jsonl", 2),
    ):
        with (data / source).open(encoding="utf-8") as handle:
            lines = list(
                itertools.islice(handle, 100, 100 + n)
                if name == "eval"
                else itertools.islice(handle, n)
            )
        rows = [json.loads(line) for line in lines]
        if name == "compress":  # 2 QA pairs on a short document keep stage 1 fast
            for row in rows:
                row.update(
                    question=row["question"][:2],
                    answers=row["answers"][:2],
                    docs=[row["docs"][0][:300]],
                )
        else:  # 4 candidates keep the e2e forward small
            for row in rows:
                gold = row["gold"][0]
                keep = [gold] + [i for i in range(len(row["docs"])) if i != gold][:3]
                row["docs"] = [row["docs"][i] for i in sorted(keep)]
                row["gold"] = [sorted(keep).index(gold)]
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        files[name] = path
    docs = out / "docs"
    docs.mkdir()
    with (data / "handbook_18f_docs.jsonl").open(encoding="utf-8") as handle:
        for i, line in enumerate(itertools.islice(handle, 3)):
            row = json.loads(line)
            (docs / f"page{i}.md").write_text(
                f"# {row['title']}\n\n{row['text'][:700]}", encoding="utf-8"
            )
    files["docs"] = docs
    return files


@pytest.fixture(scope="session")
def finetune():
    """Run `python -m training.finetune` in-process; returns its exit code."""

    def run(*args: object) -> int:
        return main([str(a) for a in args])

    return run
