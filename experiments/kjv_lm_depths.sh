#!/usr/bin/env bash
# Issue 30, bar 4: the 12-layer KJV LM of experiments/kjv_lm_speculative.sh, made elastic by training
# the served depths (`layerdrop train --depths 12,6,3`: each step the full network learns the text and
# its first 6 and 3 layers learn from it) instead of `layerdrop elastic`'s random 3-of-12 sub-networks.
# The same LayerDrop LM (checkpoint-1000 of a 4000-step schedule) and the same budget as that script's
# first elastic stage: 1200 steps of 8 blocks of 128 tokens, learning rate 2e-4. Then bench/generate.py
# times self-speculative decoding with its own 3-layer cut as the draft over 16 varied prompts, with no
# repeated 3-gram, as the earlier script did; the figures are in docs/benchmarks.md.
#
#   bash experiments/kjv_lm_depths.sh [OUT]     # default: runs/kjv-lm-depths
#
# Each step is skipped when its result exists, and training resumes from its last checkpoint. Run
# nothing else heavy beside it.
set -euo pipefail
OUT=${1:-runs/kjv-lm-depths}
LD=${LAYERDROP:-layerdrop}
PY=${PYTHON:-python}
source "$(dirname "$0")/kjv_lm_base.sh"
LM=$(kjv_layerdrop_lm "$OUT")

[[ -f $OUT/depths/model/config.json ]] ||
  $LD train clm "$LM" --data kjv --out "$OUT/depths" --depths 12,6,3 --max-steps 1200 --batch-size 8 --lr 2e-4 \
    --max-length 128 --save-steps 200 --resume --no-progress

model=$OUT/depths/model
[[ -f $OUT/gen-depths.json ]] ||
  $PY bench/generate.py --model "$model" --prompts 16 --depths 12,3 --speculative 3,4 --runs 3 --threads 1 \
    --no-repeat-ngram 3 --confidence 0.4 --json "$OUT/gen-depths.json" | tee "$OUT/gen-depths.txt"
[[ -f $OUT/gen-depths-plain.json ]] ||
  $PY bench/generate.py --model "$model" --prompts 16 --depths 12 --speculative 3 --runs 1 --threads 1 \
    --json "$OUT/gen-depths-plain.json" | tee "$OUT/gen-depths-plain.txt"
