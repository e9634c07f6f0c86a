#!/usr/bin/env bash
# Issue 14, part 2: e5-small (12 layers) fine-tuned without and with LayerDrop on
# chinese-sentiment and Rotten Tomatoes, cut to 12/9/6/4/3 layers, against models cut
# first (6 and 3 layers) and then fine-tuned. The table is in docs/results.md.
#
#   bash experiments/e5_classification.sh [OUT] [DATASET ...]     # default: runs/e5  chinese-sentiment rotten-tomatoes
#
# Each step is skipped when its result exists, and training resumes from its last
# checkpoint, so an interrupted run continues where it stopped. Run nothing else heavy
# beside it: on 2 cores a second process slows training several-fold.
set -euo pipefail
OUT=${1:-runs/e5}
shift || true
DATASETS=${*:-chinese-sentiment rotten-tomatoes}
LD=${LAYERDROP:-layerdrop}

# The demo's classification recipe (6,000 training rows, 2 epochs), with the word embeddings
# frozen: they are 96M of e5-small's 118M parameters, and a step takes 40 % less time (docs/benchmarks.md).
COMMON=(--train-rows 6000 --epochs 2 --batch-size 32 --lr 5e-5 --head-lr 1e-3 --max-length 64
        --freeze-embeddings --save-steps 100 --resume --no-progress)

train() {  # train OUT_DIR MODEL DATASET ARGS...
  local dir=$1 model=$2 data=$3; shift 3
  [[ -f $dir/metrics.json ]] && return 0
  $LD train classification "$model" --data "$data" --out "$dir" "${COMMON[@]}" "$@"
}

for data in $DATASETS; do
  eval_rows=(); [[ $data == rotten-tomatoes ]] && eval_rows=(--eval-rows 1000)  # the demo's test rows
  rows=${eval_rows[1]:-100000}
  train "$OUT/$data-plain" e5-small "$data" --rate 0 "${eval_rows[@]}"
  train "$OUT/$data-layerdrop" e5-small "$data" --rate 0.5 --pattern every-other --self-distill "${eval_rows[@]}"
  for depth in 6 3; do
    [[ -f $OUT/e5-small-depth$depth/config.json ]] || $LD prune e5-small --depth "$depth" --out "$OUT/e5-small-depth$depth"
    train "$OUT/$data-cut$depth" "$OUT/e5-small-depth$depth" "$data" --rate 0 "${eval_rows[@]}"
  done
  for run in plain layerdrop; do
    [[ -f $OUT/$data-$run-sweep/sweep.json ]] && continue
    $LD sweep "$OUT/$data-$run/model" --data "$data" --split test --rows "$rows" --max-length 64 \
      --strategies every-other --no-progress --out "$OUT/$data-$run-sweep"
  done
done
