#!/usr/bin/env bash
# Trains the compressor of a checkpoint for retrieval, its query reasoner and generator
# frozen, on the labeled and pretraining-sample questions alone (run 7, the default
# shipped since 2026-12-04; see clara_integrations/assets/README.md).
# Usage: bash training/recipes/compressor_retrieval.sh [RUN_DIR] [INIT]   (add --resume to continue)
set -euo pipefail
RUN=${1:-build/compressor-retrieval-run}; shift || true
INIT=${1:-clara_integrations/assets/default}; shift || true
DATA=build/default-data-questions
python -m training.recipes.default_data --shared ../shared/data --output "$DATA" --crops-per-doc 0
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} python -m training.finetune \
  --init-from "$INIT" --data retrieval="$DATA/retrieval.jsonl" --stages retrieval \
  --retrieval-negatives queries --train-batch-size 16 --micro-train-batch-size 16 --epochs 1 \
  --learning-rate 1e-4 --seed 45 --eval-max-examples 0 --save-steps 20 --log-every 5 \
  --output "$RUN" "$@"
python -m training.recipes.export_default "$RUN" clara_integrations/assets/default
