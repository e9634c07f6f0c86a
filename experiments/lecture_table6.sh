#!/usr/bin/env bash
# The lecture's table 6 (training methods): where in training LayerDrop goes, each model cut
# every-other to half depth and scored on the validation split (settings are chosen there).
#
#   fine-tune only       MiniLM-L6 as shipped, LayerDrop while fine-tuning on Rotten Tomatoes
#   MLM + LD, then ...   a continued masked-LM pre-training of MiniLM-L6 on the Rotten Tomatoes
#                        training text with LayerDrop (300 steps of 32 x 64 tokens), then fine-tuned
#                        with LayerDrop, or without it (does pre-training alone make it cuttable?)
#   MLM, then LD         the same continued pre-training without LayerDrop, then fine-tuned with it:
#                        the control for the extra pre-training steps
#   from scratch (LM)    gpt2-tiny trained on the KJV from the first step with LayerDrop (500 steps)
#   no LayerDrop         the plain fine-tune and the plain LM, for reference
#
# LayerDrop is the same everywhere: rate 0.5, every-other, not self-distilled (table 5's
# "every-other" row). Fine-tuning: 2,000 training rows, 2 epochs, 1,000 validation rows.
# The bundled MiniLM-L6 is a sentence-embedding checkpoint without a masked-LM head: the head's
# transform starts random (its decoder is tied to the word embeddings) in both MLM runs alike.
#
#   bash experiments/lecture_table6.sh [OUT]      # default: runs/lecture/table6; about 30 min on 2 CPU cores, 22 with table 5 linked (measured 2026-12-05)
#
# Each fine-tune or LM run writes OUT/<name>/sweep.json (experiments/levers.py); each continued
# pre-training writes OUT/mlm-*/model and metrics.json. A finished run is skipped and an unfinished
# one resumed, so the same command continues the sweep. The four runs identical to table 5's
# (no-layerdrop, finetune-only and the two LMs) are linked from TABLE5 (default: OUT/../table5,
# where experiments/lecture_table5.sh writes) when it has them, instead of being run again.
set -euo pipefail
OUT=${1:-runs/lecture/table6}
TABLE5=${TABLE5:-$(dirname "$OUT")/table5}
PY=${PYTHON:-python}
LD=${LAYERDROP:-$PY -m layerdrop.cli}
HERE=$(dirname "$0")
LAYERDROP_ON=(rate=0.5 pattern=every-other self_distill=false)
FINETUNE=(train_rows=2000 --size demo --split valid)

for mlm in mlm-ld mlm-plain; do
  [[ -f $OUT/$mlm/metrics.json ]] && continue
  rate=0.5; [[ $mlm == mlm-plain ]] && rate=0
  $LD train mlm minilm-l6 --data rotten-tomatoes --out "$OUT/$mlm" --max-steps 300 --batch-size 32 \
    --max-length 64 --rate $rate --pattern every-other --no-self-distill --no-progress
done

run() {  # run NAME levers.py-arguments...
  [[ -f $OUT/$1/sweep.json ]] && return
  $PY "$HERE/levers.py" "$OUT/$1" "${@:2}"
}
twin() {  # twin NAME TABLE5-RUN: link table 5's identical run if it finished (and NAME is not there yet)
  if [[ -f $TABLE5/$2/sweep.json && ! -e $OUT/$1 ]]; then
    mkdir -p "$OUT" && ln -s "$(realpath "$TABLE5/$2")" "$OUT/$1"
  fi
}
twin no-layerdrop classification/plain
twin finetune-only classification/every-other
twin lm-no-layerdrop lm/plain
twin lm-from-scratch lm/every-other
run no-layerdrop        rate=0 "${FINETUNE[@]}"
run finetune-only       "${LAYERDROP_ON[@]}" "${FINETUNE[@]}"
run mlm-ld-then-ld      model="$OUT/mlm-ld/model" "${LAYERDROP_ON[@]}" "${FINETUNE[@]}"
run mlm-ld-then-plain   model="$OUT/mlm-ld/model" rate=0 "${FINETUNE[@]}"
run mlm-plain-then-ld   model="$OUT/mlm-plain/model" "${LAYERDROP_ON[@]}" "${FINETUNE[@]}"
run lm-no-layerdrop     rate=0 --task lm --size demo --split valid
run lm-from-scratch     "${LAYERDROP_ON[@]}" --task lm --size demo --split valid
