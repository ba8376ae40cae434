"""Compression through Ray Data (`clara_integrations.distributed.compress_corpus`) with 1 and
2 workers beside plain `compress_documents` in this process, same model and documents.

    python -m benchmarks.ray_compress                  # shipped default model, 200 passages
    python -m benchmarks.ray_compress --quick          # 32 passages
    python -m benchmarks.ray_compress --n 1000 --workers 1 2 4 --model ./my-clara

Documents are distinct candidate passages of the ../shared/data QA sets (SQuAD, NQ,
HotpotQA, taken in turn). A local Ray cluster is started once with every CPU; each worker
count then runs `compress_corpus` into a fresh float32 `MemoryStore` with the CPUs split
evenly between its workers (``num_cpus`` = torch threads per worker), GPUs if asked for.
Each run's wall time includes starting the actor pool and loading the model in every
worker; a second run with one batch per worker measures that fixed cost, and the
*steady* rate is what the extra documents cost beyond it. Vectors are checked against
the plain ones (max abs difference; 0 exit status only within 1e-4).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import torch

from benchmarks._paths import RESULTS, ROOT
from clara_integrations import ClaraModel
from clara_integrations.distributed import compress_corpus, text_id
from clara_integrations.store import MemoryStore

DATA = ROOT.parent / "shared" / "data"
SETS = ("squad_dev.jsonl", "nq_dev.jsonl", "hotpotqa_dev.jsonl")


def load_passages(count: int) -> list[str]:
    """`count` distinct candidate passages, taken from the sets in turn."""
    streams = [_passages(DATA / name) for name in SETS]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count and streams:
        for stream in list(streams):
            text = next(stream, None)
            if text is None:
                streams.remove(stream)
            elif text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == count:
                    break
    return out


def _passages(path):
    with path.open() as handle:
        for line in handle:
            for doc in json.loads(line).get("docs", []):
                text = doc["text"] if isinstance(doc, dict) else doc
                if text.strip():
                    yield text


def _ray_run(model, docs, workers, cpus, gpus, batch_size) -> tuple[float, MemoryStore]:
    store = MemoryStore.for_model(model, dtype=torch.float32)
    start = time.perf_counter()
    stats = compress_corpus(
        docs,
        store,
        model,
        batch_size=batch_size,
        num_workers=workers,
        num_cpus=cpus,
        num_gpus=gpus,
        persist_every=None,
        show_progress=False,
    )
    seconds = time.perf_counter() - start
    assert stats.compressed == len(docs), stats
    return seconds, store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="passages")
    parser.add_argument("--model", help="a CLaRa checkpoint (default: the shipped one)")
    parser.add_argument("--base-model", help="override the base LM")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--gpus", type=float, default=None, help="GPUs per worker (default: 1 with CUDA, else 0)"
    )
    parser.add_argument("--quick", action="store_true", help="32 passages")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 32
    logging.basicConfig(level=logging.WARNING)
    import ray  # noqa: PLC0415 - the [ray] extra

    gpus = args.gpus if args.gpus is not None else float(torch.cuda.is_available())
    kwargs = {"base_model": args.base_model} if args.base_model else {}
    model = ClaraModel.from_pretrained(args.model, dtype=torch.float32, **kwargs)
    docs = load_passages(args.n)
    lengths = [len(model.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    model.compress_documents(docs[: args.batch_size], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    plain = model.compress_documents(docs, batch_size=args.batch_size, show_progress=False)
    plain_seconds = time.perf_counter() - start
    plain = plain.float().cpu()

    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - start
    runs = {}
    try:
        for workers in args.workers:
            per_worker = max(1, cpus // workers)
            seconds, store = _ray_run(model, docs, workers, per_worker, gpus, args.batch_size)
            memory = store.get_memories([text_id(d) for d in docs])
            small = docs[: workers * args.batch_size]
            startup, _ = _ray_run(model, small, workers, per_worker, gpus, args.batch_size)
            extra = len(docs) - len(small)
            steady = extra / (seconds - startup) if extra > 0 and seconds > startup else None
            runs[str(workers)] = {
                "workers": workers,
                "cpus_per_worker": per_worker,
                "gpus_per_worker": gpus,
                "seconds": seconds,
                "docs_per_s": len(docs) / seconds,
                "startup_seconds": startup,
                "steady_docs_per_s": steady,
                "max_abs_diff": (memory - plain).abs().max().item(),
            }
    finally:
        ray.shutdown()
    result = {
        "model": args.model or "shipped default",
        "base_model": model.config.decoder_model_name,
        "documents": len(docs),
        "mean_tokens": statistics.mean(lengths),
        "batch_size": args.batch_size,
        "cpus": cpus,
        "device": str(model.device),
        "plain": {
            "seconds": plain_seconds,
            "docs_per_s": len(docs) / plain_seconds,
            "threads": torch.get_num_threads(),
        },
        "ray_init_seconds": ray_init,
        "ray": runs,
        "max_abs_diff": max(r["max_abs_diff"] for r in runs.values()),
        "ray_version": ray.__version__,
        "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray_compress.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"{len(docs)} passages, mean {result['mean_tokens']:.0f} tokens, batch {args.batch_size}, "
        f"{cpus} CPUs; Ray cluster start {ray_init:.1f} s (not counted below)",
        f"plain compress_documents ({torch.get_num_threads()} threads): "
        f"{result['plain']['docs_per_s']:8.2f} docs/s",
    ]
    for r in runs.values():
        steady = r["steady_docs_per_s"]
        lines.append(
            f"Ray, {r['workers']} worker(s) x {r['cpus_per_worker']} CPU: {r['docs_per_s']:8.2f} "
            f"docs/s end to end ({r['seconds']:.1f} s, of which ~{r['startup_seconds']:.1f} s "
            f"start-up), steady {'n/a' if steady is None else f'{steady:.2f}'} docs/s"
        )
    lines.append(f"max |diff| of vectors vs plain: {result['max_abs_diff']:.2e}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if result["max_abs_diff"] <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
