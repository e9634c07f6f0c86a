# Sourced by experiments/kjv_lm_speculative.sh and experiments/kjv_lm_depths.sh: the 12-layer KJV LM both start from.
# `gpt2-mini` (12 layers, width 256) trained from scratch on the KJV with LayerDrop 0.5, stopped at its
# checkpoint-1000 of a 4000-step schedule (what the first measured session's time allowed). Skipped when that
# checkpoint exists; the training resumes from its last checkpoint.

# kjv_layerdrop_lm OUT: trains into OUT/lm and prints the checkpoint's path.
kjv_layerdrop_lm() {
  local out=$1 ld=${LAYERDROP:-layerdrop}
  local lm=$out/lm/checkpoints/checkpoint-1000
  if [[ ! -f $lm/layerdrop-complete.json ]]; then
    $ld train clm gpt2-mini --data kjv --out "$out/lm" --rate 0.5 --max-steps 4000 --save-steps 200 \
      --resume --no-progress >&2 &
    local trainer=$!
    until [[ -f $lm/layerdrop-complete.json ]] || ! kill -0 $trainer 2>/dev/null; do sleep 20; done
    kill $trainer 2>/dev/null || true
    wait $trainer || true
  fi
  echo "$lm"
}
