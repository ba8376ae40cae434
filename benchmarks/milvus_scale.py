"""`python -m benchmarks.store_scale --backend milvus`: `MilvusMemoryStore` on Milvus Lite
beside `MemoryStore`, the same synthetic documents and queries, in one run.

For each store: insert rate (documents/s through ``add``), single-query search latency
p50/p99, recall@10 against the exact top 10 (`MemoryStore` flat), the process' RSS after
the build, and disk bytes per document. Milvus Lite runs in this process (its engine is
Python over FAISS), so its RSS is the process'; a Milvus server keeps that memory in its
own processes instead. Writes ``benchmarks/results/store_scale_milvus.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._paths import RESULTS

RESULT = RESULTS / "store_scale_milvus.json"


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fill(store: Any, synth: Any, n: int, chunk: int, metadata: Any) -> float:
    """Add `n` documents in chunks; returns documents/s."""
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        mem, topic = synth.docs(start, size)
        store.add(
            mem,
            texts=[f"doc {start + i}" for i in range(size)],
            metadata=metadata(start, size, topic),
            ids=[f"d{start + i}" for i in range(size)],
        )
    return n / (time.perf_counter() - t0)


def _latency(store: Any, q: torch.Tensor, **kw: Any) -> tuple[list[float], list[list[str]]]:
    lat, ids = [], []
    for i in range(q.shape[0]):
        t = time.perf_counter()
        hits = store.search(q[i : i + 1], k=10, **kw)
        lat.append(time.perf_counter() - t)
        ids.append([h.id for h in hits[0]])
    return lat, ids


def run(args: Any, synth: Any, work: Path, rss: Any, pct: Any, metadata: Any) -> dict:
    """Build both stores in `work`, measure, write the report; returns it."""
    from clara_integrations.store import MemoryStore, MilvusMemoryStore

    from .store_scale import HIDDEN, N_MEM

    started = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    q = synth.queries(args.queries)
    report: dict[str, Any] = {
        "n": args.n,
        "dim": N_MEM * HIDDEN,
        "dtype": "float16",
        "queries": args.queries,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }
    ref = MemoryStore(n_mem=N_MEM, hidden_size=HIDDEN, scratch_dir=work)
    rate = _fill(ref, synth, args.n, args.chunk, metadata)
    ref.persist(work / "memory_store", show_progress=False)
    lat, truth = _latency(ref, q)
    report["memory_store"] = {
        "insert_docs_per_s": rate,
        "p50_ms": 1000 * pct(lat, 50),
        "p99_ms": 1000 * pct(lat, 99),
        "recall_at_10": 1.0,
        "rss_bytes": rss()["VmRSS"],
        "disk_bytes_per_doc": _disk(work / "memory_store") / args.n,
    }
    ref.close()
    for index in ("flat", "hnsw"):
        print(f"milvus lite, {index} ...", flush=True)
        path = work / f"milvus-{index}.db"
        store = MilvusMemoryStore(str(path), n_mem=N_MEM, hidden_size=HIDDEN, index=index)
        rate = _fill(store, synth, args.n, args.chunk, metadata)
        lat, found = _latency(store, q)
        hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
        report[f"milvus_{index}"] = {
            "insert_docs_per_s": rate,
            "p50_ms": 1000 * pct(lat, 50),
            "p99_ms": 1000 * pct(lat, 99),
            "recall_at_10": hits / max(1, sum(len(t) for t in truth)),
            "rss_bytes": rss()["VmRSS"],
            "disk_bytes_per_doc": _disk(path) / args.n,
        }
        store.close()
    report["load_avg_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=1))
    from benchmarks.run import record

    command = (
        f"python -m benchmarks.store_scale --backend milvus --n {args.n} --queries {args.queries}"
    )
    record("store_scale_milvus", command, time.perf_counter() - started)
    _print(report)
    print(f"\nwrote {RESULT}")
    return report


def _print(r: dict) -> None:
    print(f"\n{r['n']:,} documents of {r['dim']} values, {r['queries']} queries")
    print(
        f"{'store':<14}{'insert/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'recall@10':>11}"
        f"{'RSS GiB':>9}{'disk B/doc':>12}"
    )
    for key in ("memory_store", "milvus_flat", "milvus_hnsw"):
        m = r[key]
        print(
            f"{key:<14}{m['insert_docs_per_s']:>10.0f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}"
            f"{m['recall_at_10']:>11.3f}{m['rss_bytes'] / (1 << 30):>9.2f}"
            f"{m['disk_bytes_per_doc']:>12.0f}"
        )
