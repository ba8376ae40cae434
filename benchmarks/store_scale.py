"""Scale benchmark of the compressed-memory store (synthetic SmolLM2-sized memory).

Full run (1M documents of 8 x 576 float16 memory = 9.2 GB on disk; ~30 min on 2 cores):

    python -m benchmarks.store_scale --n 1000000 --dir /work/store_bench

Quick run (20k documents, a minute or two):

    python -m benchmarks.store_scale --quick

Milvus (`MilvusMemoryStore` on Milvus Lite beside `MemoryStore`, see benchmarks/milvus_scale.py):

    python -m benchmarks.store_scale --backend milvus --n 20000

What it measures: add throughput, persist time, disk bytes per document, load time and
RSS after ``load(mmap=True)`` (in a fresh process per index kind), search latency
p50/p99 (one query per call) for flat, hnsw and ivfpq, recall@10 of hnsw/ivfpq against
flat, a filtered query, and an incremental add of 1,000 documents to the persisted store
(checking that no existing segment file is rewritten). Prints a table and writes
``benchmarks/results/store_scale.json`` (``store_scale_quick.json`` with ``--quick``).

Synthetic data (no real 1M-document corpus of CLaRa memories is available here): each
flattened memory is ``mu + A @ z + sigma * eps`` where ``mu`` is a mean vector shared by
all documents (hidden states share a dominant direction, with a few large "massive
activation" coordinates per token), ``A`` is a fixed random [4608, 256] basis with a
decaying spectrum, ``z = topic_centre + within-topic variation`` with 2,000 topics, and
``eps`` is isotropic noise. Queries come from the same process (fresh draws, not copies
of documents). The printed "variance explained" shows how much of the spread the index's
PCA keeps; the rest is recovered by exact re-scoring of the candidate pool.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._paths import RESULTS

N_MEM, HIDDEN = 8, 576
DIM = N_MEM * HIDDEN


class Synth:
    """Deterministic clustered generator of flattened memories (see module docstring)."""

    def __init__(self, seed: int = 0, latent: int = 256, topics: int = 2000) -> None:
        g = torch.Generator().manual_seed(seed)
        mu = 0.5 * torch.randn(N_MEM, HIDDEN, generator=g)
        mu[:, :3] += 12.0  # "massive activations": a few large coordinates per token
        self.mu = mu.flatten()
        basis, _ = torch.linalg.qr(torch.randn(DIM, latent, generator=g))
        spectrum = (torch.arange(1, latent + 1, dtype=torch.float32) ** -0.5) * 6.0
        self.A = (basis * spectrum).contiguous()  # [D, L]
        self.centres = torch.randn(topics, latent, generator=g)
        self.latent, self.topics, self.seed = latent, topics, seed
        self.within, self.noise = 0.7, 0.35

    def _draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        topic = torch.randint(0, self.topics, (n,), generator=g)
        z = self.centres[topic] + self.within * torch.randn(n, self.latent, generator=g)
        x = self.mu + z @ self.A.T + self.noise * torch.randn(n, DIM, generator=g)
        return x, topic

    def docs(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents [start, start + n): ([n, N_MEM, HIDDEN] float32, topic ids)."""
        x, topic = self._draw(n, torch.Generator().manual_seed(self.seed * 7919 + start + 1))
        return x.reshape(n, N_MEM, HIDDEN), topic

    def queries(self, n: int) -> torch.Tensor:
        return self._draw(n, torch.Generator().manual_seed(10**9 + self.seed))[0]


# ----------------------------------------------------------------------------- helpers
def _rss() -> dict[str, int]:
    """Current RSS split into anonymous and file-backed (mmap) pages, in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _du(path: Path) -> dict[str, int]:
    sizes = {"segments": 0, "sqlite": 0, "index": 0, "other": 0}
    for p in path.iterdir():
        if not p.is_file():
            continue
        kind = (
            "segments"
            if p.name.startswith("seg-")
            else "sqlite"
            if p.name.startswith("nodes-")
            else "index"
            if p.name.startswith(("index-", "reducer-"))
            else "other"
        )
        sizes[kind] += p.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _metadata(start: int, n: int, topic: torch.Tensor) -> list[dict]:
    return [
        {"source": f"file{(start + i) % 1000}.pdf", "shard": (start + i) % 10, "topic": int(t)}
        for i, t in zip(range(n), topic.tolist())
    ]


# ----------------------------------------------------------------------------- phases
def build(args, synth: Synth, store_dir: Path) -> dict:
    from clara_integrations.store import MemoryStore

    store = MemoryStore(
        N_MEM,
        HIDDEN,
        dtype=torch.float16,
        index="flat",
        model_identity="synthetic-smollm2-8x576",
        scratch_dir=store_dir.parent,
    )
    chunk = args.chunk
    t0 = time.perf_counter()
    gen_s = 0.0
    for start in range(0, args.n, chunk):
        n = min(chunk, args.n - start)
        tg = time.perf_counter()
        mem, topic = synth.docs(start, n)
        gen_s += time.perf_counter() - tg
        store.add(
            mem,
            texts=[f"synthetic document {start + i}" for i in range(n)],
            metadata=_metadata(start, n, topic),
            ids=[f"doc{start + i}" for i in range(n)],
        )
        if (start // chunk) % 10 == 0:
            done = start + n
            print(
                f"  added {done:>9,} docs  {done / (time.perf_counter() - t0):8.0f} docs/s",
                flush=True,
            )
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.persist(store_dir, show_progress=False)
    persist_s = time.perf_counter() - t0
    store.close()
    du = _du(store_dir)
    return {
        "add_seconds": add_s,
        "generate_seconds": gen_s,
        "store_add_docs_per_s": args.n / max(add_s - gen_s, 1e-9),
        "persist_seconds": persist_s,
        "disk": du,
        "disk_bytes_per_doc": du["total"] / args.n,
        "memory_bytes_per_doc": DIM * 2,
        "peak_rss_build": _rss()["VmHWM"],
    }


def build_index(store_dir: Path, kind: str) -> dict:
    from clara_integrations.store import MemoryStore

    store = MemoryStore.load(store_dir)
    t0 = time.perf_counter()
    store.build_index(kind, show_progress=True)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.persist(show_progress=False)
    persist_s = time.perf_counter() - t0
    config = store.config.model_dump()
    store.close()
    return {
        "build_seconds": build_s,
        "persist_seconds": persist_s,
        "disk": _du(store_dir),
        "config": config,
    }


def incremental(store_dir: Path, synth: Synth, n_total: int, n_new: int = 1000) -> dict:
    from clara_integrations.store import MemoryStore

    before = {
        p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in store_dir.iterdir()
        if p.name.startswith("seg-")
    }
    store = MemoryStore.load(store_dir)
    mem, topic = synth.docs(n_total, n_new)
    store.add(
        mem,
        texts=[f"new document {i}" for i in range(n_new)],
        metadata=_metadata(n_total, n_new, topic),
        ids=[f"new{i}" for i in range(n_new)],
    )
    t0 = time.perf_counter()
    store.persist(show_progress=False)
    persist_s = time.perf_counter() - t0
    found = store.search(mem[:5].flatten(1), k=1)
    store.close()
    after = {
        p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in store_dir.iterdir()
        if p.name.startswith("seg-")
    }
    new_files = {n for n in after if n not in before}
    return {
        "docs_added": n_new,
        "persist_seconds": persist_s,
        "old_segments_untouched": all(after.get(n) == v for n, v in before.items()),
        "old_segments": len(before),
        "new_segment_files": len(new_files),
        "new_segment_bytes": sum((store_dir / n).stat().st_size for n in new_files),
        "fresh_docs_found_top1": [h[0].id for h in found] == [f"new{i}" for i in range(5)],
    }


SWEEPS = {
    "hnsw": [{"rescore_factor": 10, "hnsw_ef_search": 100}, {"rescore_factor": 40}],
    "ivfpq": [
        {"ivf_nprobe": 32},
        {"ivf_nprobe": 64},
        {"ivf_nprobe": 256},
        {"ivf_nprobe": 256, "rescore_factor": 40},
    ],
}


def _timed(store, q: torch.Tensor, n: int, **kw) -> tuple[list[float], list[list[str]]]:
    lat, ids = [], []
    for i in range(min(n, q.shape[0])):
        t = time.perf_counter()
        hits = store.search(q[i : i + 1], k=10, **kw)
        lat.append(time.perf_counter() - t)
        ids.append([h.id for h in hits[0]])
    return lat, ids


def measure(
    store_dir: Path, kind: str, queries_path: Path, n_latency: int, truth_path: Path | None = None
) -> dict:
    """Run in a fresh process: load time, RSS, per-query latency, top-10 ids."""
    from safetensors.torch import load_file

    from clara_integrations.store import MemoryStore

    q = load_file(str(queries_path))["q"]
    rss0 = _rss()
    t0 = time.perf_counter()
    store = MemoryStore.load(store_dir, mmap=True)
    load_s = time.perf_counter() - t0
    rss1 = _rss()
    assert store.config.index == kind, (store.config.index, kind)
    store.search(q[:1], k=10)  # warm-up (first touch of index pages)
    lat, ids = _timed(store, q, n_latency)
    out = {
        "kind": kind,
        "load_seconds": load_s,
        "rss_before_load": rss0,
        "rss_after_load": rss1,
        "rss_delta_load": rss1["VmRSS"] - rss0["VmRSS"],
        "latency_ms": [x * 1e3 for x in lat],
        "p50_ms": _pct(lat, 50) * 1e3,
        "p99_ms": _pct(lat, 99) * 1e3,
        "top10": ids,
    }
    if kind == "flat":  # exact ground truth for every query, in one batched pass
        t = time.perf_counter()
        out["truth"] = [[h.id for h in r] for r in store.search(q, k=10)]
        out["batched_seconds"] = time.perf_counter() - t
    else:
        flt = []
        for i in range(min(20, q.shape[0])):
            t = time.perf_counter()
            store.search(q[i : i + 1], k=10, filters={"shard": {"$in": [1, 2, 3]}})
            flt.append(time.perf_counter() - t)
        sel = []
        for i in range(min(20, q.shape[0])):
            t = time.perf_counter()
            store.search(q[i : i + 1], k=10, filters={"source": f"file{i}.pdf"})
            sel.append(time.perf_counter() - t)
        out["filtered_30pct_p50_ms"] = _pct(flt, 50) * 1e3
        out["filtered_selective_p50_ms"] = _pct(sel, 50) * 1e3
        if truth_path is not None:
            truth = json.loads(truth_path.read_text())
            out["sweep"] = []
            for setting in SWEEPS.get(kind, []):
                store.configure(**setting)
                s_lat, s_ids = _timed(store, q, n_latency)
                out["sweep"].append(
                    {
                        **setting,
                        "p50_ms": _pct(s_lat, 50) * 1e3,
                        "p99_ms": _pct(s_lat, 99) * 1e3,
                        "recall_at_10": _recall(s_ids, truth),
                    }
                )
    out["rss_after_search"] = _rss()
    store.close()
    return out


def _measure_in_child(args, store_dir: Path, kind: str, queries_path: Path, n_latency: int) -> dict:
    out_path = store_dir.parent / f"measure-{kind}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.store_scale",
        "--measure",
        str(store_dir),
        "--kind",
        kind,
        "--queries-file",
        str(queries_path),
        "--latency-queries",
        str(n_latency),
        "--threads",
        str(args.threads),
        "--out",
        str(out_path),
    ]
    truth = store_dir.parent / "truth.json"
    if truth.exists():
        cmd += ["--truth-file", str(truth)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out_path.read_text())


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _explained(synth: Synth, store_dir: Path) -> float | None:
    """Share of (centred) variance the index PCA keeps, on 2,000 fresh documents."""
    from safetensors.torch import load_file

    files = sorted(store_dir.glob("reducer-*.safetensors"))
    if not files:
        return None
    red = load_file(str(files[0]))
    x, _ = synth.docs(10**8, 2000)
    x = torch.nn.functional.normalize(x.flatten(1), dim=1) - red["mean"]
    kept = (x @ red["components"].T).pow(2).sum()
    return float(kept / x.pow(2).sum())


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="documents to add")
    ap.add_argument("--quick", action="store_true", help="20k documents")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="working directory (default: benchmarks/results/tmp); deleted afterwards",
    )
    ap.add_argument("--keep", action="store_true", help="keep the store directory")
    ap.add_argument("--queries", type=int, default=200, help="queries for recall / ANN latency")
    ap.add_argument(
        "--flat-latency-queries",
        type=int,
        default=5,
        help="single-query flat searches timed (each scans every row)",
    )
    ap.add_argument("--chunk", type=int, default=20_000, help="documents generated per add()")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/FAISS threads (1 avoids OpenMP spin contention on shared CPUs)",
    )
    ap.add_argument("--kinds", default="hnsw,ivfpq")
    ap.add_argument(
        "--backend",
        choices=("memory", "milvus"),
        default="memory",
        help="milvus: MilvusMemoryStore on Milvus Lite beside MemoryStore (benchmarks/milvus_scale.py)",
    )
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--latency-queries", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--truth-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.measure:
        res = measure(
            args.measure, args.kind, args.queries_file, args.latency_queries, args.truth_file
        )
        args.out.write_text(json.dumps(res))
        return
    if args.quick:
        args.n = 20_000
    if args.backend == "milvus":
        from benchmarks.milvus_scale import run

        run(
            args, Synth(), (args.dir or RESULTS / "tmp").resolve() / "milvus", _rss, _pct, _metadata
        )
        return
    work = (args.dir or RESULTS / "tmp").resolve()
    store_dir = work / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    work.mkdir(parents=True, exist_ok=True)
    synth = Synth()
    report: dict = {
        "n": args.n,
        "dim": DIM,
        "dtype": "float16",
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }
    try:
        print(f"building {args.n:,} documents of {N_MEM}x{HIDDEN} in {store_dir}", flush=True)
        report["build"] = build(args, synth, store_dir)
        from safetensors.torch import save_file

        qpath = work / "queries.safetensors"
        save_file({"q": synth.queries(args.queries).contiguous()}, str(qpath))
        print("measuring flat (exact) ...", flush=True)
        flat = _measure_in_child(args, store_dir, "flat", qpath, args.flat_latency_queries)
        truth = flat.pop("truth")
        (work / "truth.json").write_text(json.dumps(truth))
        report["flat"] = flat
        for kind in [k for k in args.kinds.split(",") if k]:
            print(f"building {kind} index ...", flush=True)
            report[f"{kind}_build"] = build_index(store_dir, kind)
            report[f"{kind}_build"]["pca_variance_kept"] = _explained(synth, store_dir)
            res = _measure_in_child(args, store_dir, kind, qpath, args.queries)
            res["recall_at_10"] = _recall(res["top10"], truth)
            report[kind] = res
        print("incremental add of 1,000 documents ...", flush=True)
        report["incremental"] = incremental(store_dir, synth, args.n)
    finally:
        report["load_avg_end"] = os.getloadavg()
        if not args.keep:
            shutil.rmtree(store_dir, ignore_errors=True)
            for p in work.glob("*.json"):
                p.unlink()
            (work / "queries.safetensors").unlink(missing_ok=True)
    for key in ("flat", *args.kinds.split(",")):
        if key in report:
            report[key].pop("top10", None)
            report[key].pop("latency_ms", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("store_scale_quick.json" if args.quick else "store_scale.json")
    out.write_text(json.dumps(report, indent=1))
    _print_table(report)
    print(f"\nwrote {out}")


def _print_table(r: dict) -> None:
    gib = 1 << 30
    b = r["build"]
    print(f"\n== store_scale: {r['n']:,} docs, {N_MEM}x{HIDDEN} float16, threads={r['threads']} ==")
    print(
        f"add: {b['add_seconds']:.0f} s total ({b['generate_seconds']:.0f} s generating), "
        f"store {b['store_add_docs_per_s']:,.0f} docs/s; persist {b['persist_seconds']:.1f} s"
    )
    d = b["disk"]
    print(
        f"disk: {b['disk_bytes_per_doc']:,.0f} B/doc (memory {d['segments'] / r['n']:,.0f}, "
        f"sqlite {d['sqlite'] / r['n']:,.0f}); build peak RSS {b['peak_rss_build'] / gib:.2f} GiB"
    )
    print(
        f"{'index':8} {'load s':>7} {'RSS GiB':>8} {'(file)':>7} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'recall@10':>9} {'build s':>8} {'idx MB':>7}"
    )
    for kind in ("flat", "hnsw", "ivfpq"):
        if kind not in r:
            continue
        m = r[kind]
        bld = r.get(f"{kind}_build", {})
        rss = m["rss_after_load"]
        print(
            f"{kind:8} {m['load_seconds']:7.2f} {rss['VmRSS'] / gib:8.2f} "
            f"{rss.get('RssFile', 0) / gib:7.2f} {m['p50_ms']:9.1f} {m['p99_ms']:9.1f} "
            f"{m.get('recall_at_10', 1.0):9.3f} {bld.get('build_seconds', 0):8.0f} "
            f"{bld.get('disk', {}).get('index', 0) / 1e6:7.0f}"
        )
    for kind in ("hnsw", "ivfpq"):
        for sw in r.get(kind, {}).get("sweep", []):
            setting = {k: v for k, v in sw.items() if k not in ("p50_ms", "p99_ms", "recall_at_10")}
            print(
                f"  {kind} {setting}: p50 {sw['p50_ms']:.1f} ms, p99 {sw['p99_ms']:.1f} ms, "
                f"recall@10 {sw['recall_at_10']:.3f}"
            )
    inc = r.get("incremental")
    if inc:
        print(
            f"incremental +{inc['docs_added']:,}: persist {inc['persist_seconds']:.2f} s, new "
            f"segment {inc['new_segment_bytes'] / 1e6:.1f} MB, {inc['old_segments']} old segments "
            f"untouched={inc['old_segments_untouched']}"
        )
    if math.isfinite(r.get("flat", {}).get("batched_seconds", math.nan)):
        print(f"flat batched ground truth: {r['flat']['batched_seconds']:.1f} s for all queries")


if __name__ == "__main__":
    main()
