"""Rough wall-time estimates for `--dry-run`, from this project's own measurements.

Neither transformers nor Accelerate predicts training time, so the plan uses what was
measured here: the fast step's examples/s per stage for SmolLM2-135M-Instruct on 2 threads
of an AVX512-BF16 CPU (`python -m benchmarks.training_throughput`, global batch 8, its
results file) and the self teacher's time per question. For another base model or device
the plan says that no rate was measured rather than guess; no GPU rate has been measured
in this project yet.
"""

from __future__ import annotations

__all__ = ["measured", "stage_minutes", "teacher_minutes"]

# benchmarks/results/training_throughput.json, smollm2-135m, "fast" examples_per_s.
CPU_EXAMPLES_PER_S = {"compress": 0.71, "instruct": 0.34, "retrieval": 1.26, "e2e": 0.77}
SELF_TEACHER_S_PER_QUESTION = 1.0  # training/self_teacher.py, batch 16, 16 new tokens
MEASURED_BASES = frozenset({"HuggingFaceTB/SmolLM2-135M-Instruct", "default"})


def measured(base: str, device: str) -> bool:
    """Whether a rate was measured for this base on this kind of device."""
    return device == "cpu" and str(base) in MEASURED_BASES


def stage_minutes(
    stage: str, examples: int, base: str, device: str, negatives: str = "candidates"
) -> float | None:
    """Minutes to train `examples` examples of `stage`, or None (nothing measured; the
    retrieval stage's rate is the query reasoner's, not the compressor's of `queries`)."""
    if not measured(base, device) or (stage == "retrieval" and negatives == "queries"):
        return None
    return examples / CPU_EXAMPLES_PER_S[stage] / 60


def teacher_minutes(questions: int, base: str, device: str) -> float | None:
    """Minutes for the self teacher to answer `questions`, or None (nothing measured)."""
    if not measured(base, device):
        return None
    return questions * SELF_TEACHER_S_PER_QUESTION / 60
