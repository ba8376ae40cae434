"""Rerun the benchmarks side by side and rewrite BENCHMARKS.md.

    python -m benchmarks.run            # full sizes (long on a CPU)
    python -m benchmarks.run --quick    # small sizes, minutes
    python -m benchmarks.run --only answer_quality   # rerun one, re-render all

Each benchmark is its own module (`benchmarks.<name>`), run here in a subprocess so that
one's memory or threads do not disturb the next; each writes
`benchmarks/results/<name>.json`, from which the tables and PNG charts (same folder) are made.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import charts
from benchmarks._paths import RESULTS, ROOT
BENCHMARKS = ("compress_throughput", "answer_latency", "retrieval_quality", "answer_quality",
              "store_scale", "training_throughput")


def run(name: str, quick: bool) -> str:
    command = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return f"`{' '.join(['python'] + command[1:])}` ({time.perf_counter() - start:.0f} s)"


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _chart(path: Path | None) -> list[str]:
    """Markdown image line for a chart written next to the results (none: nothing)."""
    if path is None:
        return []
    target = ROOT / "BENCHMARKS.md" if RESULTS.is_relative_to(ROOT) else RESULTS / "BENCHMARKS.md"
    return ["", f"![{path.stem}]({path.relative_to(target.parent).as_posix()})"]


def render(commands: dict[str, str]) -> str:
    lines = ["# Benchmarks", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"Python {platform.python_version()}, torch {torch.__version__}. "
             "Produced by `python -m benchmarks.run`; commands and wall times:", ""]
    lines += [f"- {name}: {cmd}" for name, cmd in commands.items()] or [
        "- (rendered from the latest `benchmarks/results/*.json`; see each file for its run)"]
    c = _load("compress_throughput")
    if c:
        lines += ["", "## Compression throughput (ours vs the reference)", "",
                  f"Ratios first: ours is **{c['speedup']:.2f}x** the padded layout and "
                  f"**{c.get('speedup_vs_reference_forward', float('nan')):.2f}x** the reference's whole "
                  f"forward (padded rows + causal-LM logits), medians of {c.get('repeats', '?')} "
                  f"interleaved repeats, {c['threads']} threads.", "",
                  "| documents | mean tokens | ours docs/s | padded layout docs/s | reference forward docs/s "
                  "| max abs diff |", "|---|---|---|---|---|---|",
                  f"| {c['documents']} | {c['mean_tokens']:.0f} | {c['ours_docs_per_s']:.2f} | "
                  f"{c['reference_layout_docs_per_s']:.2f} | {c.get('reference_forward_docs_per_s', float('nan')):.2f} "
                  f"| {c['max_abs_diff']:.1e} |", "",
                  "The padded layout runs our forward on rows padded to doc_max_length + 3 (what "
                  "padding alone costs); the reference forward also computes vocabulary logits for "
                  "every position, which it never uses. Mean ~90-token documents bound the padding "
                  "gain near (259 + 8) / (90 + 11) = 2.6x."]
        lines += _chart(charts.compress_chart(c, RESULTS))
    a = _load("answer_latency")
    if a:
        lines += ["", "## Answer latency: CLaRa (memory) vs text RAG, same base, k = 5", "",
                  f"Ratios first: prefill **{a['prefill_ratio']:.1f}x** fewer tokens, time to first token "
                  f"**{a['ttft_speedup']:.1f}x**, 32 new tokens **{a['total_speedup']:.1f}x** "
                  f"({a['questions']} questions x {a['repeats']} repeats, medians).", "",
                  "| | prefill tokens | TTFT s | 32 tokens s |", "|---|---|---|---|"]
        for label, key in (("CLaRa", "clara"), ("text RAG", "text_rag")):
            r = a[key]
            lines.append(f"| {label} | {r['prefill']:.0f} | {r['ttft']:.3f} | {r['total']:.3f} |")
        lines += ["", "Decoding 32 tokens is dominated by per-token cost, which memory does not "
                  "shrink, so the total gains less than time to first token."]
        lines += _chart(charts.latency_chart(a, RESULTS))
    r = _load("retrieval_quality")
    if r:
        lines += ["", "## Retrieval quality (recall@k among each question's candidates, held-out questions)", "",
                  "| set | ranker | R@1 | R@2 | R@5 | questions |", "|---|---|---|---|---|---|"]
        for dataset, by_ranker in r.items():
            for label, sc in by_ranker.items():
                lines.append(f"| {dataset} | {label} | {sc['recall@1']:.3f} | {sc['recall@2']:.3f} | "
                             f"{sc['recall@5']:.3f} | {sc['questions']} |")
        lines += ["", "Questions are the part of each set the shipped checkpoint was not trained on "
                  "(`training/recipes/default_data.py`). MiniLM was trained on about a billion sentence "
                  "pairs; the shipped CLaRa's query reasoner saw 160 questions on a CPU (see "
                  "`clara_integrations/assets/README.md`), so where it loses, that is the reason."]
        lines += _chart(charts.retrieval_chart(r, RESULTS))
    q = _load("answer_quality")
    if q:
        lines += ["", f"## Answer quality: CLaRa from memory vs the base model from text (k = {q['k']})", "",
                  "| set | documents | questions | CLaRa EM | CLaRa F1 | text RAG EM | text RAG F1 |",
                  "|---|---|---|---|---|---|---|"]
        for dataset, by_setting in q["sets"].items():
            for setting in ("gold", "retrieved"):
                c_, t_ = by_setting[setting]["clara"], by_setting[setting]["text_rag"]
                lines.append(f"| {dataset} | {setting} | {by_setting['questions']} | {c_['em']:.3f} | "
                             f"{c_['f1']:.3f} | {t_['em']:.3f} | {t_['f1']:.3f} |")
        lines += ["", "Both read the same documents: `gold` = gold passages first, `retrieved` = "
                  "CLaRa's top k. Text RAG is SmolLM2-135M-Instruct with no adapter reading the text; "
                  "CLaRa is the same base reading 8 memory vectors per document through its generator "
                  "adapter."]
        lines += _chart(charts.answer_quality_chart(q, RESULTS))
    s = _load("store_scale")
    if s:
        lines += ["", f"## Store scale ({s.get('n')} documents of 8 x 576, float16)", "",
                  f"Disk per document: {s['build']['disk_bytes_per_doc']:.0f} bytes.", "",
                  "| index | load s | RSS after load GiB | p50 ms | p99 ms | recall@10 |",
                  "|---|---|---|---|---|---|"]
        for kind in ("flat", "hnsw", "ivfpq"):
            v = s.get(kind)
            if v:
                rss = v["rss_after_load"]["VmRSS"] / 2**30
                rec = v.get("recall_at_10")
                lines.append(f"| {kind} | {v['load_seconds']:.2f} | {rss:.2f} | {v['p50_ms']:.1f} | "
                             f"{v['p99_ms']:.1f} | {'exact' if rec is None else f'{rec:.3f}'} |")
    t = _load("training_throughput")
    if t:
        lines += ["", f"## Training throughput (CPU, {t['threads']} threads, 2 examples per step, float32)", "",
                  "| base | stage | s/step | tokens/s |", "|---|---|---|---|"]
        for base, stages in t["bases"].items():
            for stage, v in stages.items():
                lines.append(f"| {base} | {stage} | {v['s_per_step']:.2f} | {v['tokens_per_s']:.0f} |")
        lines += _chart(charts.training_chart(t, RESULTS))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run these only (others: last results)")
    parser.add_argument("--render-only", action="store_true", help="rewrite BENCHMARKS.md from results")
    args = parser.parse_args(argv)
    commands = {}
    if not args.render_only:
        for name in args.only or BENCHMARKS:
            commands[name] = run(name, args.quick)
    target = ROOT / "BENCHMARKS.md" if RESULTS.is_relative_to(ROOT) else RESULTS / "BENCHMARKS.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    target.write_text(render(commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
