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
#   bash experiments/lecture_table6.sh [OUT]      # default: runs/lecture/table6; about 25 min on 2 CPU cores
#
# Each fine-tune or LM run writes OUT/<name>/sweep.json (experiments/levers.py); each continued
# pre-training writes OUT/mlm-*/model and metrics.json. A finished run is skipped and an unfinished
# one resumed, so the same command continues the sweep. Runs identical to table 5's may be linked
# in (ln -s ../table5/classification/every-other OUT/finetune-only) instead of run again.
set -euo pipefail
OUT=${1:-runs/lecture/table6}
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
run no-layerdrop        rate=0 "${FINETUNE[@]}"
run finetune-only       "${LAYERDROP_ON[@]}" "${FINETUNE[@]}"
run mlm-ld-then-ld      model="$OUT/mlm-ld/model" "${LAYERDROP_ON[@]}" "${FINETUNE[@]}"
run mlm-ld-then-plain   model="$OUT/mlm-ld/model" rate=0 "${FINETUNE[@]}"
run mlm-plain-then-ld   model="$OUT/mlm-plain/model" "${LAYERDROP_ON[@]}" "${FINETUNE[@]}"
run lm-no-layerdrop     rate=0 --task lm --size demo --split valid
run lm-from-scratch     "${LAYERDROP_ON[@]}" --task lm --size demo --split valid
