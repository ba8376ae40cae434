"""`clara` console script (also `python -m clara_integrations`).

    clara demo            # the embedded default model: compress sample documents
    clara info CKPT       # what a checkpoint holds
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]

logger = logging.getLogger("clara")

SAMPLE_DOCUMENTS = (
    "Weldenia is a monotypic genus of flowering plant in the family Commelinaceae, first "
    "described in 1829. It has one single species: Weldenia candida, which grows originally "
    "in Mexico and Guatemala.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built it.",
    "Python is a high-level, general-purpose programming language. Its design philosophy "
    "emphasizes code readability with the use of significant indentation.",
)


def _load_default_model(args: argparse.Namespace):
    import torch  # noqa: PLC0415 - keep `clara --help` fast

    from .modeling import ClaraModel  # noqa: PLC0415

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.checkpoint:
        return ClaraModel.from_pretrained(args.checkpoint, base_model=args.base_model, dtype=dtype)
    try:
        return ClaraModel.from_pretrained(base_model=args.base_model, dtype=dtype)
    except FileNotFoundError:
        logger.info("no trained default checkpoint shipped: fresh adapters on the base model")
        return ClaraModel.from_base(args.base_model or "default", dtype=dtype)


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = _load_default_model(args)
    logger.info("model loaded in %.1f s (n_mem=%d, hidden=%d, device=%s, dtype=%s)",
                time.perf_counter() - start, model.n_mem, model.hidden_size, model.device, model.dtype)
    memory = model.compress_documents(list(SAMPLE_DOCUMENTS))
    sys.stdout.write(f"memory shape: {tuple(memory.shape)}  (documents, memory tokens, hidden size)\n")
    for i, text in enumerate(SAMPLE_DOCUMENTS):
        tokens = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        sys.stdout.write(f"document {i}: {tokens} tokens -> {model.n_mem} memory vectors "
                         f"(compression ratio {tokens / model.n_mem:.1f}x)\n")
    sys.stdout.write(f"configured compression rate: {model.compression_rate}x "
                     f"(doc_max_length {model.config.doc_max_length} -> {model.n_mem} vectors)\n")
    sys.stdout.write(f"done in {time.perf_counter() - start:.1f} s\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .modeling.checkpoint import read_checkpoint  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    files = read_checkpoint(Path(args.checkpoint))
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
    parser = argparse.ArgumentParser(prog="clara", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compress sample documents with the default model")
    demo.add_argument("--checkpoint", help="a CLaRa checkpoint (default: the shipped one)")
    demo.add_argument("--base-model", help="override the base LM (local folder or hub id)")
    demo.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="describe a checkpoint folder")
    info.add_argument("checkpoint")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a console user wants our output, not transformers' load chatter
        import transformers  # noqa: PLC0415

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
