"""`FinetuneConfig`: every setting of a `training.finetune` run, typed, in one object.

The command line (`training.finetune.build_parser`, argparse: its per-stage values such
as ``--learning-rate compress=1e-4,e2e=5e-6`` are not a type `HfArgumentParser` parses)
fills it once; the pipeline, the trainer and the stage planning read its fields and
`PerStage` values, never the argparse namespace. The same object can be built in Python
for a run without a command line.

Example:
    >>> cfg = FinetuneConfig(output="run", learning_rate=PerStage({"e2e": 5e-6}))
    >>> cfg.learning_rate.get("e2e", 1e-4), cfg.learning_rate.get("compress", 1e-4)
    (5e-06, 0.0001)
    >>> cfg.stage_list
    ['compress', 'instruct', 'e2e']
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, TypeVar

#: `--retrieval-negatives`: what a retrieval stage's positives compete with (losses.py).
RETRIEVAL_NEGATIVES = ("candidates", "bank", "queries")

__all__ = ["FinetuneConfig", "PerStage"]

T = TypeVar("T")


@dataclass(frozen=True)
class PerStage(Generic[T]):
    """A value per stage: ``{"e2e": v}`` for one stage, ``{"*": v}`` for every stage."""

    values: Mapping[str, T] = field(default_factory=dict)

    def get(self, stage: str, default: T | None = None) -> T | None:
        """The stage's value, else the every-stage value, else `default`."""
        return self.values.get(stage, self.values.get("*", default))


@dataclass
class FinetuneConfig:
    """The settings of one run (the flags of ``python -m training.finetune --help``)."""

    output: str
    # data and model
    docs: str | None = None
    data: list[str] = field(default_factory=list)
    eval_data: list[str] | None = None
    base: str | None = None
    init_from: str | None = None
    init_subfolder: str | None = None
    adapter_policy: str = "reference"
    stages: str = "compress,instruct,e2e"
    max_samples: int | None = None
    strict: bool = False
    allow_network: bool = False
    # model shape
    doc_max_length: int | None = None
    compress_rate: int | None = None
    lora_r: int = 16
    generation_top_k: int = 5
    compress_top_k: int = 1
    dtype: str = "float32"
    # optimisation
    learning_rate: PerStage[float] = field(default_factory=PerStage)
    lr_scheduler: PerStage[str] = field(default_factory=PerStage)
    train_batch_size: PerStage[int] = field(default_factory=PerStage)
    micro_train_batch_size: PerStage[int] = field(default_factory=PerStage)
    epochs: PerStage[float] = field(default_factory=lambda: PerStage({"*": 1.0}))
    max_steps: PerStage[int] = field(default_factory=PerStage)
    max_minutes: PerStage[float] = field(default_factory=PerStage)
    max_len: PerStage[int] = field(default_factory=PerStage)
    mse_weight: PerStage[float] = field(default_factory=PerStage)
    seed: int = 42
    gradient_checkpointing: bool = False
    mixed_precision: str | None = None
    legacy_step: bool = False
    no_memory_cache: bool = False
    memory_cache_dir: str | None = None
    retrieval_negatives: str = "candidates"
    micro_batch_tokens: int = 0
    instruct_decoder: str = "fresh"
    instruct_compressor: str = "train"
    no_train_mem_tokens: bool = False
    encode_batch_size: int = 64
    # run control
    save_steps: int = 0
    resume: bool = False
    dry_run: bool = False
    quiet: bool = False
    log_every: int = 1
    official_format: bool = False
    # evaluation
    eval_max_examples: int = 100
    eval_max_new_tokens: int = 32
    # synthesis (--docs)
    teacher: str = "self"
    teacher_model: str | None = None
    teacher_url: str | None = None
    teacher_api_key_env: str = "OPENAI_API_KEY"
    qa_per_chunk: int = 5
    questions_per_chunk: int = 2
    num_candidates: int = 10
    crops_per_chunk: int = 1
    eval_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.retrieval_negatives not in RETRIEVAL_NEGATIVES:
            raise ValueError(
                f"retrieval_negatives must be one of {RETRIEVAL_NEGATIVES}, got {self.retrieval_negatives!r}"
            )
        if self.instruct_compressor not in ("train", "frozen"):
            raise ValueError(
                f"instruct_compressor must be 'train' or 'frozen', got {self.instruct_compressor!r}"
            )
        if self.retrieval_negatives == "bank" and (self.legacy_step or self.no_memory_cache):
            raise ValueError(
                "--retrieval-negatives bank reads the stage's memory cache: drop --legacy-step "
                "and --no-memory-cache"
            )
        if self.retrieval_negatives == "queries" and self.legacy_step:
            raise ValueError(
                "--retrieval-negatives queries trains the compressor on the fast step: drop "
                "--legacy-step"
            )

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> FinetuneConfig:
        """The config of parsed command-line flags (per-stage dicts become `PerStage`).

        Raises:
            ValueError: the namespace lacks a field or has one the config does not know.
        """
        given = vars(namespace)
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(given) - names), sorted(names - set(given))
        if unknown or missing:
            raise ValueError(
                f"flags and FinetuneConfig disagree: unknown {unknown}, missing {missing}"
            )
        values = {k: PerStage(dict(v)) if isinstance(v, dict) else v for k, v in given.items()}
        return cls(**values)

    @property
    def stage_list(self) -> list[str]:
        """`stages` as a list, in order."""
        return [s.strip() for s in self.stages.split(",") if s.strip()]

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (``training_args.json``): per-stage values as their dicts."""
        out = asdict(self)
        return {
            k: v["values"] if isinstance(getattr(self, k), PerStage) else v for k, v in out.items()
        }
