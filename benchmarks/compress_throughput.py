"""Compression throughput: ours (length-sorted, minimal padding, explicit positions) vs the
reference's layout (every document padded to doc_max_length + 3), same model and data.

    python -m benchmarks.compress_throughput              # SmolLM2-135M, 256 docs, 3 repeats
    python -m benchmarks.compress_throughput --quick      # fewer documents and repeats

Documents are real text from ../shared/data (HotpotQA candidate passages, joined and cut
into pieces of mean ~90 tokens); doc_max_length 256, compression rate 32 (8 memory vectors). Prints
documents/second (median of repeats) and checks both layouts give the same vectors.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from clara_integrations import ClaraConfig, ClaraModel

from benchmarks._paths import RESULTS, ROOT
DATA = ROOT.parent / "shared" / "data" / "hotpotqa_dev.jsonl"


def load_documents(tokenizer, count: int, mean_tokens: int, seed: int = 0) -> list[str]:
    """Real text cut into documents of random length around `mean_tokens` tokens (normal,
    sd = mean / 2, at least 8): each question's passages are joined, then sliced."""
    rng = random.Random(seed)
    docs = []
    with DATA.open() as handle:
        for line in handle:
            text = " ".join(d["text"] for d in json.loads(line)["docs"])
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            start = 0
            while len(docs) < count:
                target = max(8, int(rng.gauss(mean_tokens, mean_tokens / 2)))
                if start + target > len(ids):
                    break
                docs.append(tokenizer.decode(ids[start:start + target]))
                start += target
            if len(docs) == count:
                break
    return docs


def time_compression(model: ClaraModel, docs: list[str], batch_size: int, repeats: int,
                     reference_padding: bool) -> tuple[float, torch.Tensor]:
    model.compress_documents(docs[:batch_size], batch_size=batch_size,
                             reference_padding=reference_padding)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        memory = model.compress_documents(docs, batch_size=batch_size, show_progress=False,
                                          reference_padding=reference_padding)
        times.append(time.perf_counter() - start)
    return len(docs) / statistics.median(times), memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument("--mean-tokens", type=int, default=90)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 documents, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.documents, args.repeats = 64, 1
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    config = ClaraConfig.for_training(args.base_model, doc_max_length=256, compr_rate=32)
    model = ClaraModel.from_base(args.base_model, config, dtype=torch.float32,
                                 adapters=["encoder_adapter"])
    docs = load_documents(model.tokenizer, args.documents, args.mean_tokens)
    lengths = [len(model.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    ours, mem_ours = time_compression(model, docs, args.batch_size, args.repeats, False)
    padded, mem_ref = time_compression(model, docs, args.batch_size, args.repeats, True)
    max_diff = (mem_ours - mem_ref).abs().max().item()
    result = {
        "base_model": args.base_model, "documents": len(docs),
        "mean_tokens": statistics.mean(lengths), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "ours_docs_per_s": ours,
        "reference_layout_docs_per_s": padded, "speedup": ours / padded,
        "max_abs_diff": max_diff, "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compress_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(
        f"{len(docs)} documents, mean {result['mean_tokens']:.0f} tokens, batch {args.batch_size}, "
        f"{result['threads']} threads\n"
        f"ours:             {ours:8.1f} docs/s\n"
        f"reference layout: {padded:8.1f} docs/s\n"
        f"speedup:          {ours / padded:8.2f}x   (max |diff| of vectors {max_diff:.2e})\n"
    )
    return 0 if max_diff <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
