#!/usr/bin/env bash
# Issue 18, part 5: self-speculative decoding on a LayerDrop-trained LM whose text cannot loop.
# A 12-layer GPT-2 (gpt2-mini, width 256) trained from scratch on the KJV with LayerDrop 0.5, then
# made elastic at 3 layers: `layerdrop elastic` at rate 0.75 (about 3 of 12 layers per sampled
# sub-network), self-distilled toward the full network, twice 1200 steps (the second run starts from
# the first's model, with its own warm-up and decay). Each model is then timed by
# bench/generate.py over 16 varied prompts, with no repeated 3-gram (plain greedy text of a model
# this small loops) and once with plain greedy decoding. The figures are in docs/benchmarks.md.
#
#   bash experiments/kjv_lm_speculative.sh [OUT]     # default: runs/kjv-lm-speculative
#
# The measured run stopped the first training at its checkpoint-1000 (of a 4000-step schedule:
# what the session's time allowed), and so does this script. Each step is skipped when its result
# exists, and training resumes from its last checkpoint. Run nothing else heavy beside it.
set -euo pipefail
OUT=${1:-runs/kjv-lm-speculative}
LD=${LAYERDROP:-layerdrop}
PY=${PYTHON:-python}
source "$(dirname "$0")/kjv_lm_base.sh"
LM=$(kjv_layerdrop_lm "$OUT")

start=$LM
for name in elastic elastic2; do
  [[ -f $OUT/$name/results.json ]] ||
    $LD elastic "$start" --data kjv --depths 12,6,3 --rate 0.75 --steps 1200 --batch-size 8 --lr 2e-4 \
      --out "$OUT/$name" --no-progress
  start=$OUT/$name/train/model
done

for name in lm elastic elastic2; do
  model=$LM; [[ $name != lm ]] && model=$OUT/$name/train/model
  [[ -f $OUT/gen-$name.json ]] ||
    $PY bench/generate.py --model "$model" --prompts 16 --depths 12,3 --speculative 3,4 --runs 3 --threads 1 \
      --no-repeat-ngram 3 --confidence 0.4 --json "$OUT/gen-$name.json" | tee "$OUT/gen-$name.txt"
  [[ -f $OUT/gen-$name-plain.json ]] ||
    $PY bench/generate.py --model "$model" --prompts 16 --depths 12 --speculative 3 --runs 1 --threads 1 \
      --json "$OUT/gen-$name-plain.json" | tee "$OUT/gen-$name-plain.txt"
done
