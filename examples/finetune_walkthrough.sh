#!/usr/bin/env bash
# Fine-tune CLaRa on a folder of private documents, then evaluate it.
#
# Uses the 18F handbook pages in ../shared/data as the "private documents" and the embedded
# SmolLM2-135M-Instruct base. Every stage is capped at a few optimiser steps so the walk-
# through finishes on a laptop CPU in minutes; drop the --max-steps / batch flags for a
# real run (and add `accelerate launch` / `torchrun --nproc_per_node N` for many GPUs).
#
#   bash examples/finetune_walkthrough.sh [OUTPUT_DIR]
#   CLARA_BASE=path/to/causal-lm bash examples/finetune_walkthrough.sh   # another base model
#   (on a busy shared CPU, OMP_NUM_THREADS=1 is often several times faster)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-./my-clara}
SHARED=${CLARA_SHARED_DIR:-../shared}
DOCS="$OUT-docs"
BASE=(${CLARA_BASE:+--base "$CLARA_BASE"})

# 1. A folder of documents (.txt, .md or .jsonl with a "text" field): 20 handbook pages.
mkdir -p "$DOCS"
head -n 20 "$SHARED/data/handbook_18f_docs.jsonl" > "$DOCS/handbook.jsonl"

# 2. The plan: stages, examples, optimiser steps and tokens; nothing is trained.
$PY -m training.finetune --docs "$DOCS" --output "$OUT" "${BASE[@]}" --dry-run

# 3. Train: synthesise QA/paraphrase data (written to $OUT/data/*.jsonl), then stage 1
#    (compress), stage 2 (instruct) and stage 3 (e2e), checkpointing every 2 steps.
$PY -m training.finetune --docs "$DOCS" --output "$OUT" "${BASE[@]}" \
    --max-steps 4 --train-batch-size 8 --eval-max-examples 20 --save-steps 2
#    Interrupted? The same command with --resume continues where it stopped.

# 4. Continue stage 3 on reference-format data from the checkpoint just written.
$PY -m training.finetune --data "$SHARED/data/clara_qa_dev.jsonl" --stages e2e \
    --init-from "$OUT" --output "$OUT-e2e" --max-steps 4 --train-batch-size 8 --max-samples 64 \
    --eval-data "$SHARED/data/nq_dev.jsonl" --eval-max-examples 20

# 5. Evaluate: recall@1/3/5 of the query reasoner, EM/F1 of the answers, compression ratio.
$PY -m training.evaluate --model "$OUT-e2e" --data "$SHARED/data/squad_dev.jsonl" --max-examples 20
echo "report: $OUT/report.md and $OUT-e2e/report.md"
