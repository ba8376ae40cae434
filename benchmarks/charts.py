"""PNG charts of the benchmark results (matplotlib, headless), one per table.

Each function takes a results dict as written by its benchmark and returns the PNG path,
or None when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def _bars(
    path: Path,
    title: str,
    groups: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    log: bool = False,
) -> Path:
    """Grouped bar chart: one group per label of `groups`, one bar per series."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(series)) / 2), 3.6))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if log:  # values spanning orders of magnitude (exact search vs ANN)
        ax.set_yscale("log")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compress_chart(c: dict, out: Path) -> Path | None:
    if not c:
        return None
    methods = {
        "ours": "ours_docs_per_s",
        "padded layout": "reference_layout_docs_per_s",
        "reference forward": "reference_forward_docs_per_s",
    }
    present = {k: c[v] for k, v in methods.items() if v in c}
    return _bars(
        out / "compress_throughput.png",
        "Compression throughput (docs/s, higher is better)",
        list(present),
        {"docs/s": list(present.values())},
        "documents / second",
    )


def latency_chart(a: dict, out: Path) -> Path | None:
    if not a:
        return None
    metrics = ("ttft", "total")
    return _bars(
        out / "answer_latency.png",
        "Answer latency, k = 5 (seconds, lower is better)",
        ["time to first token", "32 new tokens"],
        {
            "CLaRa (memory)": [a["clara"][m] for m in metrics],
            "text RAG": [a["text_rag"][m] for m in metrics],
        },
        "seconds",
    )


def retrieval_chart(r: dict, out: Path, k: int = 5) -> Path | None:
    if not r:
        return None
    sets = list(r)
    rankers = list(next(iter(r.values())))
    return _bars(
        out / "retrieval_quality.png",
        f"Retrieval recall@{k} (held-out questions)",
        sets,
        {name: [r[s].get(name, {}).get(f"recall@{k}", 0.0) for s in sets] for name in rankers},
        f"recall@{k}",
    )


def answer_quality_chart(q: dict, out: Path, setting: str | None = None) -> Path | None:
    if not q or not q.get("sets"):
        return None
    sets = list(q["sets"])
    settings = q.get("settings", ["gold", "retrieved"])
    setting = setting or ("gold" if "gold" in settings else settings[0])
    first = q["sets"][sets[0]][setting]
    metric, name = ("acc", "cover-EM") if "acc" in first["clara"] else ("f1", "F1")
    series = {"CLaRa (memory)": [q["sets"][s][setting]["clara"][metric] for s in sets]}
    if "before" in first:
        series = {
            "before (memory)": [q["sets"][s][setting]["before"][metric] for s in sets],
            **series,
        }
    series["text RAG"] = [q["sets"][s][setting]["text_rag"][metric] for s in sets]
    return _bars(
        out / "answer_quality.png",
        f"Answer {name}, {setting} documents (higher is better)",
        sets,
        series,
        name,
    )


def training_chart(t: dict, out: Path) -> Path | None:
    if not t or not t.get("bases"):
        return None
    bases = t["bases"]
    if not all("stages" in b for b in bases.values()):  # results from before the fast step
        stages = list(next(iter(bases.values())))
        return _bars(
            out / "training_throughput.png",
            "Training throughput (tokens/s, CPU)",
            stages,
            {base: [v[s]["tokens_per_s"] for s in stages] for base, v in bases.items()},
            "tokens / second",
        )
    groups = [f"{base} {stage}" for base, b in bases.items() for stage in b["stages"]]
    return _bars(
        out / "training_throughput.png",
        "Training speed-up of the fast step (examples/s, x legacy)",
        groups,
        {"fast / legacy": [v["speedup"] for b in bases.values() for v in b["stages"].values()]},
        "x legacy step",
    )


def store_chart(s: dict, out: Path) -> Path | None:
    kinds = [k for k in ("flat", "hnsw", "ivfpq") if s.get(k)]
    if not kinds:
        return None
    return _bars(
        out / "store_scale.png",
        f"Store search latency, {s.get('n')} documents (ms, log scale)",
        kinds,
        {"p50": [s[k]["p50_ms"] for k in kinds], "p99": [s[k]["p99_ms"] for k in kinds]},
        "milliseconds",
        log=True,
    )
