#!/usr/bin/env bash
# Run 8 (see clara_integrations/assets/README.md): from a checkpoint, stage 1 (compressor,
# generator and memory-token rows; QA + reconstruction + 0.1 x MSE) on the labeled training
# questions, each with the gold passage that answers it, for 45 minutes; then the compressor
# trained for retrieval again (query reasoner and generator frozen) for 25 minutes, so that
# what stage 1 moved in the shared latent space is re-aligned with the questions.
# Usage: bash training/recipes/memory_then_retrieval.sh [RUN_DIR] [INIT]   (add --resume to continue)
set -euo pipefail
RUN=${1:-build/memory-retrieval-run}; shift || true
INIT=${1:-clara_integrations/assets/default}; shift || true
DATA=build/default-data-questions
python -m training.recipes.default_data --shared ../shared/data --output "$DATA" --crops-per-doc 0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} python -m training.finetune \
  --init-from "$INIT" --data compress="$DATA/compress_qa.jsonl" --data retrieval="$DATA/retrieval.jsonl" \
  --stages compress,retrieval --retrieval-negatives queries --train-batch-size 16 \
  --micro-train-batch-size compress=4,retrieval=16 --epochs 1 \
  --learning-rate compress=2e-4,retrieval=1e-4 --mixed-precision bf16 --max-minutes compress=45,retrieval=25 \
  --seed 46 --eval-max-examples 0 --save-steps 20 --log-every 5 --output "$RUN" "$@"
python -m training.recipes.export_default "$RUN" clara_integrations/assets/default
