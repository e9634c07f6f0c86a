#!/usr/bin/env bash
# The lecture's table 5 (structured drop strategies): what granularity, pattern, per-layer rates
# (and the paper's learned, data-driven rates) and the rate do to quality at every depth and to
# the time per step, one change at a time from the paper's LayerDrop (whole layers, random
# pattern, uniform rate 0.5, no self-distillation), with a plain run beside it. Validation split
# (settings are chosen there, never on test).
#
#   Rotten Tomatoes: MiniLM-L6, 2,000 training rows, 2 epochs (126 steps of 32), 1,000 validation rows
#   KJV: gpt2-tiny from scratch, 500 steps of 16 x 128 tokens, 400 validation paragraphs
#
#   bash experiments/lecture_table5.sh [OUT] [classification|lm ...]     # default: runs/lecture/table5, both
#   RUNS="plain paper every-other" bash experiments/lecture_table5.sh     # only these rows (the lecture's
#                                                                         # 10-minute start: about 7 min)
#
# Each run writes OUT/<task>/<name>/sweep.json (experiments/levers.py) and, with LayerDrop on, the run's
# masks (OUT/<task>/<name>/{rt,lm}/masks.safetensors); a finished run is skipped and an
# unfinished one resumed, so the same command continues the sweep. About 14 min (RT) + 24 min (LM)
# on 2 CPU cores, one run at a time (measured 2026-12-05; 22 + 34 min on 2026-12-02, a busier day).
set -euo pipefail
OUT=${1:-runs/lecture/table5}
shift || true
TASKS=${*:-classification lm}
PY=${PYTHON:-python}
HERE=$(dirname "$0")

declare -A VARIANTS=(
  [plain]="rate=0"
  [paper]=""
  [sublayer]="granularity=sublayer"
  [head]="granularity=head"
  [every-other]="pattern=every-other"
  [linear]="per_layer=linear"
  [exponential]="per_layer=exponential"
  [rate0.2]="rate=0.2"
  [rate0.1]="rate=0.1"
  [data-driven]="data_driven=true"
)
ORDER=(plain paper sublayer head every-other linear exponential rate0.2 rate0.1 data-driven)
if [[ -n ${RUNS:-} ]]; then
  read -r -a ORDER <<< "$RUNS"
  for name in "${ORDER[@]}"; do
    [[ -v "VARIANTS[$name]" ]] || { echo "RUNS: unknown run $name; choose from ${!VARIANTS[*]}" >&2; exit 2; }
  done
fi
for task in $TASKS; do
  if [[ $task == classification ]]; then size=(train_rows=2000); else size=(); fi
  for name in "${ORDER[@]}"; do
    dir=$OUT/$task/$name
    [[ -f $dir/sweep.json ]] && continue
    record=(record_masks=true); [[ $name == plain ]] && record=()  # the masks of figures 1, 2 and 4
    # shellcheck disable=SC2086
    $PY "$HERE/levers.py" "$dir" rate=0.5 pattern=random self_distill=false ${size[@]+"${size[@]}"} ${record[@]+"${record[@]}"} \
      ${VARIANTS[$name]} --task "$task" --size demo --split valid
  done
done
