#!/usr/bin/env bash
# Issue 15: the quality-bar setting of `layerdrop demo --full` (MiniLM-L6 on all 10,246 Rotten
# Tomatoes training rows, 2 epochs, whole test split) with distillation added. A plain fine-tune
# and a LayerDrop 0.5 self-distilled one (pattern random, as the quality-bar table) each teach
# their own every-other cut to DEPTH layers: DistilBERT-style distillation from the plain model,
# prune-and-heal of the LayerDrop one; and the cut-first reference, retrained with its time recorded.
# docs/comparison.md.
#
#   bash experiments/minilm_distill.sh [OUT] [DEPTH ...]     # default: runs/minilm-distill 3 4
#
# Each run is skipped when its result exists and resumes from its last checkpoint otherwise.
set -euo pipefail
OUT=${1:-runs/minilm-distill}
shift || true
DEPTHS=${*:-3 4}
LD=${LAYERDROP:-layerdrop}

COMMON=(--epochs 2 --batch-size 32 --lr 5e-5 --head-lr 1e-3 --max-length 64 --save-steps 100 --no-progress)
LOSS=(--alpha-task 0.5 --alpha-kd 0.5 --temperature 2)
for teacher in plain layerdrop; do  # each teacher, then its students: the plain rows need no LayerDrop run
  extra=(--rate 0); [[ $teacher == layerdrop ]] && extra=(--rate 0.5 --self-distill --pattern random)
  [[ -f $OUT/$teacher/metrics.json ]] ||
    $LD train classification minilm-l6 --data rotten-tomatoes --out "$OUT/$teacher" --resume "${COMMON[@]}" "${extra[@]}"
  for depth in $DEPTHS; do
    dir=$OUT/$teacher-distill$depth
    [[ -f $dir/metrics.json ]] ||
      $LD distill "$OUT/$teacher/model" --data rotten-tomatoes --depth "$depth" --out "$dir" "${COMMON[@]}" "${LOSS[@]}"
  done
done
for depth in $DEPTHS; do  # the fixed-depth reference: cut first, then fine-tuned the same way
  [[ -f $OUT/minilm-l6-depth$depth/config.json ]] || $LD prune minilm-l6 --depth "$depth" --out "$OUT/minilm-l6-depth$depth"
  [[ -f $OUT/fixed$depth/metrics.json ]] ||
    $LD train classification "$OUT/minilm-l6-depth$depth" --data rotten-tomatoes --out "$OUT/fixed$depth" --rate 0 \
      --resume "${COMMON[@]}"
done
for teacher in plain layerdrop; do  # both full-depth models cut every-other, on the whole test split
  [[ -f $OUT/$teacher-sweep/sweep.json ]] ||
    $LD sweep "$OUT/$teacher/model" --data rotten-tomatoes --split test --rows 100000 --max-length 64 \
      --strategies every-other --no-progress --out "$OUT/$teacher-sweep"
done
