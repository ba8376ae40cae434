"""Rerun the benchmarks side by side and rewrite BENCHMARKS.md.

    python -m benchmarks.run            # full sizes (long on a CPU)
    python -m benchmarks.run --quick    # small sizes, minutes
    python -m benchmarks.run --only answer_quality   # rerun one, re-render all
    python -m benchmarks.run --only finetune_gain    # an hour of fine-tuning, before/after

Each benchmark is its own module (`benchmarks.<name>`), run here in a subprocess so that
one's memory or threads do not disturb the next; each writes
`benchmarks/results/<name>.json`, from which the tables and PNG charts (same folder) are made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from benchmarks import charts
from benchmarks._paths import RESULTS, ROOT

BENCHMARKS = (
    "compress_throughput",
    "answer_latency",
    "retrieval_quality",
    "answer_quality",
    "store_scale",
    "training_throughput",
    "ray_compress",
)
# Run only when named with --only (an hour of training by default).
LONG = ("finetune_gain",)


def run(name: str, quick: bool) -> None:
    """Run one benchmark and record its command, wall time and end in commands.json."""
    command = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    record(name, " ".join(["python"] + command[1:]), time.perf_counter() - start)


def record(name: str, command: str, seconds: float) -> None:
    path = RESULTS / "commands.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs[name] = {
        "command": command,
        "seconds": round(seconds),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=2) + "\n")


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _chart(path: Path | None) -> list[str]:
    """Markdown image line for a chart written next to the results (none: nothing)."""
    if path is None:
        return []
    target = ROOT / "BENCHMARKS.md" if RESULTS.is_relative_to(ROOT) else RESULTS / "BENCHMARKS.md"
    return ["", f"![{path.stem}]({path.relative_to(target.parent).as_posix()})"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def _versions() -> str:
    names = ("transformers", "peft", "accelerate", "faiss-cpu", "sentence-transformers", "bm25s")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _cpu() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _header(commands: dict[str, dict]) -> list[str]:
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {_cpu()} ({platform.machine()}, {os.cpu_count()} CPUs), {torch.get_num_threads()} "
        f"torch threads, Python {platform.python_version()}, torch {torch.__version__}, {_versions()}.",
        "",
        "Produced by `python -m benchmarks.run` (each benchmark in its own process, one after "
        "another); the command, wall time and end of each table's run "
        "(`benchmarks/results/commands.json`):",
        "",
    ]

    def wall(seconds: int | None) -> str:
        return "wall time not recorded" if seconds is None else f"{seconds} s"

    return lines + (
        [
            f"- {name}: `{commands[name]['command']}` ({wall(commands[name]['seconds'])}, finished "
            f"{commands[name]['finished']})"
            for name in BENCHMARKS
            if name in commands
        ]
        or ["- (no record of the runs)"]
    )


def _compress_section(c: dict) -> list[str]:
    lines = [
        "## Compression throughput (ours vs the reference)",
        "",
        f"Ratios first: ours is **{c['speedup']:.2f}x** the padded layout and "
        f"**{c.get('speedup_vs_reference_forward', float('nan')):.2f}x** the reference's whole "
        f"forward (padded rows + causal-LM logits), medians of {c.get('repeats', '?')} "
        f"interleaved repeats, {c['threads']} threads.",
        "",
    ]
    lines += _table(
        [
            "documents",
            "mean tokens",
            "ours docs/s",
            "padded layout docs/s",
            "reference forward docs/s",
            "max abs diff",
        ],
        [
            [
                str(c["documents"]),
                f"{c['mean_tokens']:.0f}",
                f"{c['ours_docs_per_s']:.2f}",
                f"{c['reference_layout_docs_per_s']:.2f}",
                f"{c.get('reference_forward_docs_per_s', float('nan')):.2f}",
                f"{c['max_abs_diff']:.1e}",
            ]
        ],
    )
    lines += [
        "",
        "The padded layout runs our forward on rows padded to doc_max_length + 3 (what "
        "padding alone costs); the reference forward also computes vocabulary logits for "
        "every position, which it never uses. Mean ~90-token documents bound the padding "
        "gain near (259 + 8) / (90 + 11) = 2.6x.",
    ]
    return lines + _chart(charts.compress_chart(c, RESULTS))


def _latency_section(a: dict) -> list[str]:
    lines = [
        "## Answer latency: CLaRa (memory) vs text RAG, same base, k = 5",
        "",
        f"Ratios first: prefill **{a['prefill_ratio']:.1f}x** fewer tokens, time to first token "
        f"**{a['ttft_speedup']:.1f}x** (target 8x), 32 new tokens **{a['total_speedup']:.1f}x** "
        f"({a['questions']} questions x {a['repeats']} repeats, medians).",
        "",
    ]
    lines += _table(
        ["", "prefill tokens", "TTFT s", "32 tokens s"],
        [
            [label, f"{a[key]['prefill']:.0f}", f"{a[key]['ttft']:.3f}", f"{a[key]['total']:.3f}"]
            for label, key in (("CLaRa", "clara"), ("text RAG", "text_rag"))
        ],
    )
    lines += [
        "",
        "Time to first token gains less than the token count: the prompt's fixed part "
        "(template and question, ~70 tokens) is read by both, and CLaRa's generator is a LoRA "
        "adapter whose extra matrix products cost ~20 % of a 135M model's prefill on a CPU "
        "(text RAG runs the bare base). Decoding 32 tokens is dominated by per-token cost, "
        "which memory does not shrink, so the total gains less still.",
    ]
    return lines + _chart(charts.latency_chart(a, RESULTS))


def _retrieval_section(r: dict) -> list[str]:
    rankers = list(next(iter(r.values())))
    means = {name: sum(r[s][name]["recall@5"] for s in r) / len(r) for name in rankers}
    lines = [
        "## Retrieval quality (recall@k among each question's candidates, held-out questions)",
        "",
        "Ratios first, mean recall@5 over the sets: "
        + ", ".join(f"{name} **{value:.3f}**" for name, value in means.items())
        + ".",
        "",
    ]
    lines += _table(
        ["set", "ranker", "R@1", "R@2", "R@5", "questions"],
        [
            [
                dataset,
                label,
                f"{sc['recall@1']:.3f}",
                f"{sc['recall@2']:.3f}",
                f"{sc['recall@5']:.3f}",
                str(sc["questions"]),
            ]
            for dataset, by_ranker in r.items()
            for label, sc in by_ranker.items()
        ],
    )
    lines += [
        "",
        "Questions are the part of each set the shipped checkpoint was not trained on "
        "(`training/recipes/default_data.py`). `clara-qr` is the checkpoint shipped from "
        "2026-12-02 until run 4 (run 2 of the record): the compressor and generator of the "
        "first default, its query reasoner retrained for 874 steps x 16 with "
        "`--retrieval-negatives bank` (InfoNCE against all 5,853 training-side documents) "
        "on 1,510 labeled training questions, the pretraining sample's questions and one "
        "cropped pseudo-query per document; `clara-qr4` "
        "is the one shipped since (run 4): `clara-qr` trained on for 314 more steps x 16 "
        "against the bank with three cropped pseudo-queries per document; `clara-qr5` (run 5, "
        "not shipped) is `clara-qr4` trained on for 400 more steps x 16 at half the peak rate, "
        "decayed to its floor of 10 %; `clara-cr6` (run 6, not shipped) is `clara-qr4` with its "
        "*compressor* trained for retrieval instead (`--retrieval-negatives queries`: query "
        "reasoner frozen, 140 steps x 16, each positive document against the stage's 2,559 "
        "questions); `clara-cr7` (run 7) is the same objective from `clara-qr4` on the "
        "2,009 labeled and pretraining-sample questions alone, without cropped pseudo-queries "
        "(125 steps x 16, one epoch) (`clara_integrations/assets/README.md`); `clara-r9` "
        "(run 9, not shipped) is `clara-cr7` with its query reasoner retrained against the "
        "bank of the 4,930 documents of those questions (250 steps x 16), and `clara-r9+e2e8` "
        "the e2e stage 8 steps on from it; `clara-r10` (run 10, not shipped) is `clara-r9` "
        "with its compressor trained for retrieval again (94 steps x 16); "
        "`<label>+bm25` is what "
        "`ClaraRetriever(hybrid=True, similarity_top_k=5)` returns with that checkpoint over a "
        "store of the question's candidates: its ranking fused with BM25's by reciprocal rank "
        "(k = 60, not tuned); `<label>+e2eN`, when present, "
        "is what the training module's e2e stage makes of the first checkpoint in N more steps "
        "of 4 training questions, run by this benchmark. CLaRa still loses to both baselines on "
        "the mean: MiniLM was trained on about a billion sentence pairs and BM25 matches the "
        "question's words, and multi-hop questions (HotpotQA, 2Wiki) are where it is furthest "
        "behind.",
    ]
    for name in rankers:
        alone = name.removesuffix("+bm25")
        if name == alone or alone not in means or "bm25" not in means:
            continue
        vs_clara = "better than" if means[name] > means[alone] else "not better than"
        vs_bm25 = "better than" if means[name] > means["bm25"] else "not better than"
        lines += [
            "",
            f"Fused with BM25, `{alone}` reaches mean recall@5 {means[name]:.3f} (alone "
            f"{means[alone]:.3f}, BM25 {means['bm25']:.3f}): {vs_clara} CLaRa alone, "
            f"{vs_bm25} BM25 alone.",
        ]
    for name in (n for n in rankers if "+e2e" in n and n.split("+e2e")[0] in means):
        change = means[name] - means[name.split("+e2e")[0]]
        why = (
            ""
            if change > 0
            else ": the e2e stage teaches the query reasoner only through the "
            "generator's next-token loss, a noisy signal from a weak 135M generator with 4 questions "
            "per step, so a few more steps need not improve retrieval"
        )
        lines += [
            "",
            f"Here the extra e2e steps {'raised' if change > 0 else 'lowered'} mean recall@5 by "
            f"{abs(change):.3f}{why}.",
        ]
    return lines + _chart(charts.retrieval_chart(r, RESULTS))


def _answer_quality_section(q: dict) -> list[str]:
    sets, settings = q["sets"], q.get("settings", ["gold", "retrieved"])
    first = sets[next(iter(sets))][settings[0]]
    who = [w for w in ("before", "clara", "text_rag") if w in first]
    label = {"before": "before", "clara": "CLaRa", "text_rag": "text RAG"}

    def mean(w: str, setting: str, metric: str) -> float:
        return sum(sets[s][setting][w].get(metric, 0.0) for s in sets) / len(sets)

    setting = "gold" if "gold" in settings else settings[0]
    lines = [
        f"## Answer quality: CLaRa from memory vs the base model from text (k = {q['k']})",
        "",
        f"Ratios first, mean over the sets with {setting} documents: cover-EM from memory "
        f"**{mean('clara', setting, 'acc'):.3f}** vs text RAG **{mean('text_rag', setting, 'acc'):.3f}** "
        f"(ratio {mean('clara', setting, 'acc') / max(mean('text_rag', setting, 'acc'), 1e-9):.2f}); "
        f"F1 {mean('clara', setting, 'f1'):.3f} vs {mean('text_rag', setting, 'f1'):.3f}"
        + (
            f"; the checkpoint before: cover-EM {mean('before', setting, 'acc'):.3f}, "
            f"F1 {mean('before', setting, 'f1'):.3f}."
            if "before" in who
            else "."
        ),
        "",
    ]
    header = ["set", "documents", "questions"]
    for w in who:
        header += [f"{label[w]} EM", f"{label[w]} F1", f"{label[w]} cover-EM"]
    rows = []
    for dataset, by in sets.items():
        for setting_ in settings:
            row = [dataset, setting_, str(by["questions"])]
            for w in who:
                v = by[setting_][w]
                row += [f"{v['em']:.3f}", f"{v['f1']:.3f}", f"{v.get('acc', float('nan')):.3f}"]
            rows.append(row)
    lines += _table(header, rows)
    lines += [
        "",
        "Both read the same documents: `gold` = gold passages first"
        + (
            ", `retrieved` = CLaRa's top k"
            if "retrieved" in settings
            else " (the `retrieved` setting, CLaRa's top k, was not run)"
        )
        + ". Text RAG is SmolLM2-135M-Instruct with no adapter reading the text; "
        "CLaRa is the same base reading 8 memory vectors per document through its generator "
        "adapter; cover-EM: a reference answer occurs in the normalised answer. Both are poor, "
        "a 135M model being small for multi-hop QA; where the answer must be copied from the "
        "text (SQuAD, clara_qa) memory that an hour or two of CPU training made carries too "
        "little of the document.",
    ]
    return lines + _chart(charts.answer_quality_chart(q, RESULTS))


def _store_section(s: dict) -> list[str]:
    kinds = [k for k in ("flat", "hnsw", "ivfpq") if s.get(k)]
    lines = [f"## Store scale ({s.get('n')} documents of 8 x 576, float16)", ""]
    if "flat" in kinds and "hnsw" in kinds:
        lines += [
            f"Ratios first: HNSW answers **{s['flat']['p50_ms'] / s['hnsw']['p50_ms']:.0f}x** faster "
            f"than exact search at p50 (recall@10 {s['hnsw'].get('recall_at_10', float('nan')):.3f}).",
            "",
        ]
    lines += [f"Disk per document: {s['build']['disk_bytes_per_doc']:.0f} bytes.", ""]
    rows = []
    for kind in kinds:
        v, rec = s[kind], s[kind].get("recall_at_10")
        rows.append(
            [
                kind,
                f"{v['load_seconds']:.2f}",
                f"{v['rss_after_load']['VmRSS'] / 2**30:.2f}",
                f"{v['p50_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                "exact" if rec is None else f"{rec:.3f}",
            ]
        )
    lines += _table(
        ["index", "load s", "RSS after load GiB", "p50 ms", "p99 ms", "recall@10"], rows
    )
    return lines + _chart(charts.store_chart(s, RESULTS))


def _milvus_section(m: dict) -> list[str]:
    """`python -m benchmarks.store_scale --backend milvus` (benchmarks/milvus_scale.py)."""
    ref, flat = m["memory_store"], m["milvus_flat"]
    lines = [
        f"## Store scale on Milvus Lite ({m['n']} documents of 8 x 576, float16)",
        "",
        f"Ratios first: Milvus Lite adds documents **{ref['insert_docs_per_s'] / flat['insert_docs_per_s']:.1f}x** "
        f"slower and answers **{flat['p50_ms'] / ref['p50_ms']:.1f}x** slower at p50 (exact index) than "
        "`MemoryStore` on the same documents and queries, in the same run. Milvus Lite's engine is "
        "Python and runs in the benchmark's process; a Milvus server is what the backend is for.",
        "",
    ]
    rows = []
    for key, name in (
        ("memory_store", "MemoryStore flat"),
        ("milvus_flat", "Milvus Lite FLAT"),
        ("milvus_hnsw", "Milvus Lite HNSW"),
    ):
        v = m[key]
        rows.append(
            [
                name,
                f"{v['insert_docs_per_s']:.0f}",
                f"{v['p50_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                f"{v['recall_at_10']:.3f}",
                f"{v['rss_bytes'] / 2**30:.2f}",
                f"{v['disk_bytes_per_doc']:.0f}",
            ]
        )
    return lines + _table(
        ["store", "insert docs/s", "p50 ms", "p99 ms", "recall@10", "RSS GiB", "disk B/doc"],
        rows,
    )


def _training_section(t: dict) -> list[str]:
    bases = t["bases"]
    if not all("stages" in b for b in bases.values()):  # results from before the fast step
        lines = [
            f"## Training throughput (CPU, {t['threads']} threads, 2 examples per step, float32)",
            "",
        ]
        lines += _table(
            ["base", "stage", "s/step", "tokens/s"],
            [
                [base, stage, f"{v['s_per_step']:.2f}", f"{v['tokens_per_s']:.0f}"]
                for base, stages in bases.items()
                for stage, v in stages.items()
            ],
        )
        return lines + _chart(charts.training_chart(t, RESULTS))
    first = next(iter(bases.values()))
    steps = ", ".join(f"{base}: {b['steps']}" for base, b in bases.items())
    lines = [
        f"## Training throughput (CPU, {t['threads']} threads): fast step vs `--legacy-step`",
        "",
        f"Same global batch ({first['train_batch_size']} examples per optimiser step) for both, "
        f"{first['rounds']} interleaved rounds of one stage call each ({steps} optimiser "
        "steps per call); the wall time of a call, memory cache and set-up included, in its "
        "least disturbed round. "
        f"The fast step here: {first['fast_precision']} autocast, micro-batch chosen by "
        "`--micro-batch-tokens`; the legacy step: float32, micro batch 2. On a shared machine "
        "compare the ratios, which were measured side by side. Tokens are those the examples "
        "represent (documents, candidates, questions, decoder rows), the same count for both. "
        "*ceiling* is the share of one plain LoRA fwd+bwd+AdamW step of the base at the fast "
        "step's shape (micro-batch x tokens with gradient per example, same precision) that the "
        "stage's tokens with gradient per second reach; above 100% where the plain step's "
        "full-vocabulary logits cost more than the stage's work.",
        "",
    ]
    rows = []
    for base, b in bases.items():
        for stage, v in b["stages"].items():
            old, new = v["legacy"], v["fast"]
            rows.append(
                [
                    base,
                    stage,
                    f"{old['examples_per_s']:.3g}",
                    f"{new['examples_per_s']:.3g}",
                    f"**{v['speedup']:.1f}x**",
                    f"{old['tokens_per_s']:.0f}",
                    f"{new['tokens_per_s']:.0f}",
                    f"{new['micro_batch_size']} x {new['grad_accum']}",
                    f"{old['ceiling_share']:.0%} / {new['ceiling_share']:.0%}",
                ]
            )
    lines += _table(
        [
            "base",
            "stage",
            "legacy ex/s",
            "fast ex/s",
            "speedup",
            "legacy tokens/s",
            "fast tokens/s",
            "fast micro x accum",
            "ceiling legacy / fast",
        ],
        rows,
    )
    if t.get("command"):
        lines += ["", f"`{t['command']}`"]
    return lines + _chart(charts.training_chart(t, RESULTS))


def _ray_section(r: dict) -> list[str]:
    plain = r["plain"]["docs_per_s"]
    runs = list(r["ray"].values())
    lines = [
        "## Compression through Ray Data (`clara compress --ray`)",
        "",
        "Ratios first, end to end (actor start-up and model loading included) against plain "
        f"`compress_documents` at {plain:.2f} docs/s: "
        + ", ".join(
            f"{run['workers']} worker(s) **{run['docs_per_s'] / plain:.2f}x**" for run in runs
        )
        + f"; {r['documents']} passages of mean {r['mean_tokens']:.0f} tokens, batch "
        f"{r['batch_size']}, {r['cpus']} CPUs.",
        "",
    ]
    lines += _table(
        [
            "",
            "CPUs per worker",
            "docs/s end to end",
            "start-up s",
            "steady docs/s",
            "max abs diff",
        ],
        [["plain (this process)", str(r["plain"]["threads"]), f"{plain:.2f}", "-", "-", "-"]]
        + [
            [
                f"Ray, {run['workers']} worker(s)",
                str(run["cpus_per_worker"]),
                f"{run['docs_per_s']:.2f}",
                f"{run['startup_seconds']:.1f}",
                "-" if run["steady_docs_per_s"] is None else f"{run['steady_docs_per_s']:.2f}",
                f"{run['max_abs_diff']:.1e}",
            ]
            for run in runs
        ],
    )
    lines += [
        "",
        "Every worker loads the model once, so a run pays a fixed start-up (measured by a run "
        "of one batch per worker) before compressing at the steady rate. Here the workers "
        "share one machine's CPUs (split evenly between them), so the table measures what Ray "
        "costs over plain compression, not scale-out: that comes from the machines and GPUs a "
        "cluster adds (`--ray ADDRESS --workers N`).",
    ]
    return lines


def _finetune_gain_section(g: dict) -> list[str]:
    r, a = g["retrieval"], g["answers_gold_k5"]
    runs = [label for label in ("before", "run1", "run2") if label in r]
    label = {
        "before": "shipped default (before)",
        "run1": "after run 1 (instruct + retrieval)",
        "run2": "after run 2 (+ e2e)",
        "bm25": "BM25",
    }
    t = g.get("timings", {})
    synth = g.get("synthesis") or {}
    stats = synth.get("teacher_stats")
    last = runs[-1]
    gain_r1 = r[last]["recall@1"] - r["before"]["recall@1"]
    gain_cover = a[last]["acc"] - a["before"]["acc"]
    lines = [
        "## Fine-tuning on a collection: `python -m training.finetune --docs` before and after",
        "",
        f"`{g['command']}`: the {synth.get('chunks', '?')} chunks of "
        f"{t.get('documents', '?')} documents of the reference pretraining sample given as "
        "plain text (no questions, no labels), training from the shipped default with a "
        f"budget of {g['minutes']:g} minutes "
        f"(instruct {t.get('budget_instruct_minutes', '?')}, retrieval "
        f"{t.get('budget_retrieval_minutes', '?')}, e2e {t.get('budget_e2e_minutes', '?')}); "
        f"run 1 took {t.get('run1_minutes', float('nan')):.1f} min with the self teacher's "
        f"synthesis, run 2 {t.get('run2_minutes', float('nan')):.1f} min"
        + (
            f"; the teacher answered {stats['asked']} cloze questions and {stats['agreed']} "
            "answers contained the span and were kept"
            if stats
            else ""
        )
        + f". Held-out: {g['questions']} questions of `clara_qa_dev.jsonl` about these "
        f"documents (answers: the first {g['answer_questions']}, gold passages first, k = 5).",
        "",
        f"Gains over the shipped default: recall@1 **{gain_r1:+.3f}** (target +0.10), "
        f"cover-EM from memory **{gain_cover:+.3f}** (target +0.15).",
        "",
    ]
    rows = [
        [label.get(w, w)]
        + [f"{r[w][f'recall@{k}']:.3f}" for k in (1, 2, 5)]
        + (
            [f"{a[w]['em']:.3f}", f"{a[w]['f1']:.3f}", f"{a[w]['acc']:.3f}"]
            if w in a
            else ["", "", ""]
        )
        for w in [*runs, "bm25"]
    ]
    rows.append(
        ["text RAG (base model reading the text)", "", "", ""]
        + [f"{a['text_rag'][m]:.3f}" for m in ("em", "f1", "acc")]
    )
    lines += _table(["model", "R@1", "R@2", "R@5", "EM", "F1", "cover-EM"], rows)
    return lines


SECTIONS = (
    ("compress_throughput", _compress_section),
    ("answer_latency", _latency_section),
    ("retrieval_quality", _retrieval_section),
    ("answer_quality", _answer_quality_section),
    ("store_scale", _store_section),
    ("store_scale_milvus", _milvus_section),
    ("training_throughput", _training_section),
    ("ray_compress", _ray_section),
    ("finetune_gain", _finetune_gain_section),
)


def render() -> str:
    lines = _header(_load("commands"))
    for name, section in SECTIONS:
        result = _load(name)
        if result:
            lines += [""] + section(result)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", nargs="*", choices=BENCHMARKS + LONG, help="run these only (others: last results)"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite BENCHMARKS.md from results"
    )
    args = parser.parse_args(argv)
    if not args.render_only:
        for name in args.only or BENCHMARKS:
            run(name, args.quick)
    target = ROOT / "BENCHMARKS.md" if RESULTS.is_relative_to(ROOT) else RESULTS / "BENCHMARKS.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    target.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
