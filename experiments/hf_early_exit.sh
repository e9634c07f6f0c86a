#!/usr/bin/env bash
# Hugging Face's own early-exit drafting, generate(assistant_early_exit=K) (LayerSkip's method: the first K layers
# and the shared head draft), beside layerdrop's --speculative K (the model's own cut at K) on the same prompts:
# on a Llama LM trained from scratch on the KJV with nested depths (--depths 6,3 --strategy top), where both drafts
# are the same first 3 layers, and on SmolLM2-135M, trained without LayerDrop. docs/benchmarks.md, "HF's own
# early-exit drafting". GPT-2 models (the KJV LMs of the demo and of kjv_lm_depths.sh) are refused by the bench:
# GPT-2's forward ignores config.num_hidden_layers, which HF's exit sets.
#
#   bash experiments/hf_early_exit.sh [OUT]     # about 12 minutes on 2 cores; PYTHON and LAYERDROP as in its siblings
set -euo pipefail
OUT=${1:-runs/hf-early-exit}
PY=${PYTHON:-python}
LD=${LAYERDROP:-layerdrop}
mkdir -p "$OUT"
# resumes where it stopped; reused once finished
$LD train clm llama-tiny --data kjv --out "$OUT/llama-nested" --depths 6,3 --strategy top --max-steps 500 \
  --batch-size 16 --lr 1e-3 --lr-schedule cosine --warmup 0.05 --max-length 128 --vocab-size 4000 --resume --no-progress
$PY bench/generate.py --model "$OUT/llama-nested/model" --prompts 16 --speculative 3 --hf-early-exit 3 \
  --no-repeat-ngram 3 --runs 3 --threads 1 --json "$OUT/llama-nested.json" | tee "$OUT/llama-nested.txt"
$PY bench/generate.py --model smollm2-135m --prompts 8 --new-tokens 32 --depths 30 --speculative 15,20 \
  --hf-early-exit 15,20 --runs 1 --threads 1 --json "$OUT/smollm2.json" | tee "$OUT/smollm2.txt"
