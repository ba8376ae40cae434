#!/usr/bin/env bash
# Retrains the query reasoner of a checkpoint against every training-side document (the
# run that made the default shipped since 2026-12-02; see clara_integrations/assets/README.md).
# Usage: bash training/recipes/query_reasoner.sh [RUN_DIR] [INIT]   (add --resume to continue)
set -euo pipefail
RUN=${1:-build/query-reasoner-run}; shift || true
INIT=${1:-clara_integrations/assets/default}; shift || true
DATA=build/default-data
python -m training.recipes.default_data --shared ../shared/data --output "$DATA"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} python -m training.finetune \
  --init-from "$INIT" --data retrieval="$DATA/retrieval.jsonl" --stages retrieval \
  --retrieval-negatives bank --train-batch-size 16 --epochs 2 --learning-rate 2e-4 \
  --eval-max-examples 0 --save-steps 100 --log-every 10 --output "$RUN" "$@"
python -m training.recipes.export_default "$RUN" clara_integrations/assets/default
