#!/usr/bin/env bash
# Rebuilds the checkpoint shipped in clara_integrations/assets/default (see its README).
# Usage: bash training/recipes/default_checkpoint.sh [RUN_DIR]   (add --resume to continue)
set -euo pipefail
RUN=${1:-build/default-run}; shift || true
DATA=build/default-data
python -m training.recipes.default_data --shared ../shared/data --output "$DATA"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} python -m training.finetune \
  --data compress="$DATA/compress.jsonl" --data instruct="$DATA/qa_train.jsonl" \
  --data retrieval="$DATA/qa_train.jsonl" --data e2e="$DATA/qa_train.jsonl" \
  --stages compress,instruct,retrieval,e2e --instruct-decoder continue \
  --train-batch-size compress=16,instruct=8,retrieval=8,e2e=8 --micro-train-batch-size 2 \
  --max-steps compress=30,instruct=20,retrieval=20,e2e=8 \
  --learning-rate compress=2e-4,instruct=2e-4,retrieval=1e-4,e2e=2e-5 \
  --mixed-precision bf16 --eval-max-examples 0 --save-steps 5 --log-every 1 \
  --output "$RUN" "$@"
python -m training.recipes.export_default "$RUN" clara_integrations/assets/default
