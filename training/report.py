"""`report.md` and PNG plots for a training run.

Plots need matplotlib (``pip install matplotlib``); without it the report says so and
keeps its tables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

_METRIC_COLUMNS = ("recall@1", "recall@3", "recall@5", "em", "f1", "acc", "compression_ratio")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| after | " + " | ".join(_METRIC_COLUMNS) + " | ranked by | n |",
        "|---" * (len(_METRIC_COLUMNS) + 3) + "|",
    ]
    for m in metrics:
        cells = [_fmt(m.get(c, "")) for c in _METRIC_COLUMNS]
        lines.append(
            f"| {m.get('after')} | "
            + " | ".join(cells)
            + f" | {m.get('query_adapter', '')} | {m.get('n', '')} |"
        )
    return lines


def _stage_table(plans: Sequence[Any], history: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| stage | examples | steps | global batch | lr | schedule | first loss | last loss | s/step | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        rows = [h for h in history if h["stage"] == p.stage]
        if not rows:
            lines.append(
                f"| {p.stage} | {p.n_examples} | 0/{p.steps} | {p.train_batch_size} | | | | | | |"
            )
            continue
        secs = sum(r["seconds"] for r in rows) / len(rows)
        tps = sum(r["tokens"] for r in rows) / max(sum(r["seconds"] for r in rows), 1e-9)
        lines.append(
            f"| {p.stage} | {p.n_examples} | {len(rows)}/{p.steps} | {p.train_batch_size} | "
            f"{p.learning_rate:g} | {p.lr_scheduler} | {rows[0]['loss']:.4f} | "
            f"{rows[-1]['loss']:.4f} | {secs:.3f} | {tps:.0f} |"
        )
    return lines


def _plots(
    out: Path, history: Sequence[dict[str, Any]], metrics: Sequence[dict[str, Any]]
) -> list[str]:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return ["(plots skipped: `pip install matplotlib` to get loss.png and retrieval.png)"]
    made = []
    stages = list(dict.fromkeys(h["stage"] for h in history))
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3), squeeze=False)
        for ax, stage in zip(axes[0], stages):
            rows = [h for h in history if h["stage"] == stage]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
            ax.set_title(stage)
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("loss")
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)
        made.append("![loss per stage](loss.png)")
    after_e2e = [m for m in metrics if m.get("after") == "e2e"]
    if after_e2e:
        index = metrics.index(after_e2e[-1])
        before = metrics[index - 1] if index > 0 else None
        keys = [k for k in ("recall@1", "recall@3", "recall@5", "em", "f1") if k in after_e2e[-1]]
        fig, ax = plt.subplots(figsize=(6, 3))
        width = 0.4
        xs = range(len(keys))
        if before is not None:
            ax.bar(
                [x - width / 2 for x in xs],
                [before.get(k, 0) for k in keys],
                width,
                label=f"before e2e (after {before.get('after')})",
            )
        ax.bar(
            [x + width / 2 for x in xs], [after_e2e[-1][k] for k in keys], width, label="after e2e"
        )
        ax.set_xticks(list(xs), keys)
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "retrieval.png", dpi=100)
        plt.close(fig)
        made.append("![recall@k and EM before/after e2e](retrieval.png)")
    return made


def write_report(
    out: str | Path,
    plans: Sequence[Any],
    history: Sequence[dict[str, Any]],
    metrics: Sequence[dict[str, Any]],
    config: Any,
) -> Path:
    """Write ``report.md`` (and ``loss.png``, ``retrieval.png``) into `out`.

    Args:
        plans: the run's `StagePlan`s; history: one record per optimiser step;
        metrics: held-out metrics, one dict per evaluation (key ``after``);
        config: the final `ClaraConfig`.
    """
    out = Path(out)
    lines = [
        "# CLaRa fine-tuning report",
        "",
        f"Base `{config.decoder_model_name}`; doc_max_length {config.doc_max_length}, "
        f"compression rate {config.compr_rate} (n_mem {config.n_mem}), LoRA r {config.lora_r}.",
        "",
        "## Stages",
        "",
        *_stage_table(plans, history),
        "",
    ]
    lines += ["## Held-out metrics", ""]
    if metrics:
        lines += [
            "Recall: the query reasoner's ranking of each question's candidates (before a "
            "query reasoner exists, the compressor ranks: that is what stage e2e starts from). "
            "EM/F1/acc: answers from the top-k memories.",
            "",
            *_metrics_table(metrics),
            "",
        ]
    else:
        lines += ["(no held-out data: pass --eval-data, or use --docs)", ""]
    lines += ["## Plots", "", *_plots(out, history, metrics), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
