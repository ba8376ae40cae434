"""Answer latency: CLaRa reading memory vs the same base model reading document text.

    python -m benchmarks.answer_latency            # 8 questions x 3 repeats
    python -m benchmarks.answer_latency --quick    # 3 questions x 1 repeat

Same base model (SmolLM2-135M-Instruct), same k = 5 documents of ~256 tokens per question
(HotpotQA candidate passages joined and cut to 256 tokens), doc_max_length 256 and
compression rate 32 (8 memory vectors per document). CLaRa's memory is computed beforehand
(as it would sit in the store); text RAG puts the documents' text into the prompt. We
report prefill tokens, time to first token and total time for 32 new tokens (medians).
Adapter weights do not change the cost, so fresh adapters are used.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import torch

from benchmarks._paths import RESULTS, ROOT
from clara_integrations import ClaraConfig, ClaraModel
from clara_integrations.modeling import prompts

DATA = ROOT.parent / "shared" / "data" / "hotpotqa_dev.jsonl"
NEW_TOKENS = 32
K = 5


def load_questions(tokenizer, count: int, doc_tokens: int = 256) -> list[tuple[str, list[str]]]:
    """(question, 5 documents of `doc_tokens` tokens) built from each question's passages."""
    out = []
    with DATA.open() as handle:
        for line in handle:
            row = json.loads(line)
            ids = tokenizer(" ".join(d["text"] for d in row["docs"]), add_special_tokens=False)[
                "input_ids"
            ]
            if len(ids) < K * doc_tokens:
                continue
            docs = [tokenizer.decode(ids[i * doc_tokens : (i + 1) * doc_tokens]) for i in range(K)]
            out.append((row["question"], docs))
            if len(out) == count:
                break
    return out


def _timed_generate(model: ClaraModel, embeds, mask, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate_from_embeddings(embeds, mask, new_tokens, min_new_tokens=new_tokens)
    return time.perf_counter() - start


def text_rag_inputs(model: ClaraModel, question: str, docs: list[str]):
    """The base model's prompt with the documents' text where CLaRa has memory slots."""
    text = prompts.text_rag_prompt(model.tokenizer, question, docs)
    enc = model.tokenizer([text], add_special_tokens=False, return_tensors="pt")
    return model.decoder.get_input_embeddings()(enc["input_ids"]).detach(), enc["attention_mask"]


def measure(model: ClaraModel, items, repeats: int) -> dict[str, dict[str, float]]:
    rows = {
        "clara": {"prefill": [], "ttft": [], "total": []},
        "text": {"prefill": [], "ttft": [], "total": []},
    }
    for question, docs in items:
        memory = model.compress_documents(docs)  # offline: already in the store
        for _ in range(repeats):
            with torch.no_grad():
                start = time.perf_counter()
                inputs = model.prepare_generation_inputs([question], memory)
                prep = time.perf_counter() - start
                embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
                rows["clara"]["prefill"].append(mask.shape[1])
                rows["clara"]["ttft"].append(prep + _timed_generate(model, embeds, mask, 1))
                rows["clara"]["total"].append(
                    prep + _timed_generate(model, embeds, mask, NEW_TOKENS)
                )
                start = time.perf_counter()
                t_embeds, t_mask = text_rag_inputs(model, question, docs)
                prep = time.perf_counter() - start
                rows["text"]["prefill"].append(t_mask.shape[1])
                with model.adapters.using(None):
                    rows["text"]["ttft"].append(
                        prep + _timed_generate_base(model, t_embeds, t_mask, 1)
                    )
                    rows["text"]["total"].append(
                        prep + _timed_generate_base(model, t_embeds, t_mask, NEW_TOKENS)
                    )
    return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rows.items()}


def _timed_generate_base(model: ClaraModel, embeds, mask, new_tokens: int) -> float:
    """The plain base model (no adapter), as a text-RAG user would run it."""
    start = time.perf_counter()
    model.decoder.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        top_p=None,
        temperature=None,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions, args.repeats = 3, 1
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    config = ClaraConfig.for_training(
        args.base_model, doc_max_length=256, compr_rate=32, generation_top_k=K
    )
    model = ClaraModel.from_base(
        args.base_model,
        config,
        dtype=torch.float32,
        adapters=["encoder_adapter", "decoder_adapter"],
    )
    items = load_questions(model.tokenizer, args.questions)
    result = measure(model, items, args.repeats)
    c, t = result["clara"], result["text"]
    summary = {
        "questions": len(items),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "prefill_ratio": t["prefill"] / c["prefill"],
        "ttft_speedup": t["ttft"] / c["ttft"],
        "total_speedup": t["total"] / c["total"],
        "clara": c,
        "text_rag": t,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "answer_latency.json").write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(
        f"{len(items)} questions x {args.repeats} repeats, k={K}, documents of 256 tokens, "
        f"{summary['threads']} threads (medians)\n"
        f"{'':10}{'prefill tokens':>16}{'TTFT (s)':>12}{'32 tokens (s)':>16}\n"
        f"{'CLaRa':10}{c['prefill']:>16.0f}{c['ttft']:>12.3f}{c['total']:>16.3f}\n"
        f"{'text RAG':10}{t['prefill']:>16.0f}{t['ttft']:>12.3f}{t['total']:>16.3f}\n"
        f"ratios: prefill {summary['prefill_ratio']:.1f}x, TTFT {summary['ttft_speedup']:.1f}x, "
        f"total {summary['total_speedup']:.1f}x\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
