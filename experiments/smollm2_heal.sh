#!/usr/bin/env bash
# Issue 15: prune-and-heal of SmolLM2-135M (never trained with LayerDrop), against `layerdrop
# elastic` with the same training tokens (docs/results.md: 100 steps of 4 x 128 tokens, lr 1e-4,
# 40 validation paragraphs). Cut to DEPTH layers by angular distance (calibrated on KJV
# validation rows), then distilled from the full model on its logits only (--alpha-task 0).
#
#   bash experiments/smollm2_heal.sh [OUT] [DEPTH] [STEPS]     # default: runs/smollm2-heal 20 100
#
# Resumes from its last checkpoint when run again.
set -euo pipefail
OUT=${1:-runs/smollm2-heal}
DEPTH=${2:-20}
STEPS=${3:-100}
LD=${LAYERDROP:-layerdrop}
[[ -f $OUT/metrics.json ]] ||
  $LD distill smollm2-135m --data kjv --depth "$DEPTH" --strategy angular --alpha-task 0 --alpha-kd 1 --temperature 1 \
    --max-steps "$STEPS" --batch-size 4 --max-length 128 --lr 1e-4 --warmup 0.1 --eval-rows 40 --save-steps 20 \
    --no-progress --out "$OUT"
