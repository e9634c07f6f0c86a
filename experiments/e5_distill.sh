#!/usr/bin/env bash
# Issue 15: distillation against LayerDrop on e5-small (12 layers). Each teacher of
# experiments/e5_classification.sh (plain fine-tune, LayerDrop fine-tune) teaches its own cut to
# DEPTH layers (every-other, DistilBERT's initialisation): for the plain teacher this is
# DistilBERT-style task distillation, for the LayerDrop one prune-and-heal; then the LayerDrop
# teacher's short heals (half an epoch and one, the teacher run each step instead of cached). docs/comparison.md.
#
#   bash experiments/e5_distill.sh [E5_RUNS] [OUT] [DATASET] [DEPTH ...]   # default: runs/e5 runs/e5-distill chinese-sentiment 3 6
#
# Needs the teachers of experiments/e5_classification.sh in E5_RUNS. Each run is skipped when its
# result exists and resumes from its last checkpoint otherwise. Run nothing else heavy beside it.
set -euo pipefail
E5=${1:-runs/e5}
OUT=${2:-runs/e5-distill}
DATA=${3:-chinese-sentiment}
shift 3 || true
DEPTHS=${*:-3 6}
LD=${LAYERDROP:-layerdrop}

# The optimisation of experiments/e5_classification.sh, so a row differs from the cut-first
# reference only in its teacher; DistilBERT's task-distillation loss (0.5 task + 0.5 KL at T = 2).
COMMON=(--train-rows 6000 --epochs 2 --batch-size 32 --lr 5e-5 --head-lr 1e-3 --max-length 64
        --freeze-embeddings --save-steps 100 --no-progress --alpha-task 0.5 --alpha-kd 0.5 --temperature 2)
eval_rows=(); [[ $DATA == rotten-tomatoes ]] && eval_rows=(--eval-rows 1000)  # the demo's test rows

for depth in $DEPTHS; do
  for teacher in plain layerdrop; do
    dir=$OUT/$DATA-$teacher-distill$depth
    [[ -f $dir/metrics.json ]] && continue
    $LD distill "$E5/$DATA-$teacher/model" --data "$DATA" --depth "$depth" --out "$dir" "${COMMON[@]}" "${eval_rows[@]}"
  done
done
for epochs in 0.5 1; do  # short heals: a fraction of the 2-epoch runs above
  for depth in $DEPTHS; do
    dir=$OUT/$DATA-layerdrop-heal$depth-${epochs}ep
    [[ -f $dir/metrics.json ]] && continue
    $LD distill "$E5/$DATA-layerdrop/model" --data "$DATA" --depth "$depth" --out "$dir" "${COMMON[@]}" "${eval_rows[@]}" \
      --epochs "$epochs" --no-cache-teacher
  done
done
