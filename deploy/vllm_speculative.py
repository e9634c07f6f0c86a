"""vLLM's draft-model speculative decoding with a layerdrop cut as the draft, timed against vLLM's greedy decoding.

The vLLM half of ``make vllm-speculative``; the other half is ``bench/generate.py --speculative K`` on the same
model, draft depth, draft length and prompts (it writes them into its JSON, which this script reads). Runs in
vLLM's own environment (``make vllm-check`` builds it):

    python deploy/vllm_speculative.py MODEL DRAFT --prompts-from BENCH.json [--draft-tokens 3] [--json OUT]

One prompt per ``generate`` call (batch 1, as ``layerdrop generate`` decodes), greedy, a fixed number of new
tokens; one warm-up round, then ``--runs`` timed rounds, the median reported. vLLM without a draft runs first
and gives the reference text; the speculative engine's text must equal it. Acceptance is vLLM's own count
(``vllm:spec_decode_num_accepted_tokens`` over ``vllm:spec_decode_num_draft_tokens``) over the timed rounds.
vLLM's CPU build spawns worker processes, so the script runs under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any


def _counters(llm: Any) -> dict[str, float]:
    """vLLM's counters now, summed over their labels."""
    from vllm.v1.metrics.reader import Counter

    totals: dict[str, float] = {}
    for metric in llm.get_metrics():
        if isinstance(metric, Counter):
            totals[metric.name] = totals.get(metric.name, 0) + metric.value
    return totals


def timed(llm: Any, prompts: list[list[int]], tokens: int, runs: int) -> tuple[float, list[list[int]], dict]:
    """Tokens per second (median over ``runs`` rounds after a warm-up one), the tokens of the first timed round,
    and the counters' increase over the timed rounds."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)
    rates, first = [], []
    before: dict[str, float] = {}
    for i in range(1 + runs):
        if i == 1:
            before = _counters(llm)
        seconds, out = 0.0, []
        for ids in prompts:
            start = time.perf_counter()
            result = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
            seconds += time.perf_counter() - start
            out.append(list(result[0].outputs[0].token_ids))
        if i == 1:
            first = out
        if i > 0:
            rates.append(sum(len(o) for o in out) / seconds)
    after = _counters(llm)
    return statistics.median(rates), first, {k: after[k] - before.get(k, 0) for k in after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the full model's folder")
    parser.add_argument("draft", help="its cut (layerdrop prune MODEL --depth K), the draft")
    parser.add_argument("--prompts-from", required=True,
                        help="bench/generate.py's JSON: its prompts, new tokens and runs are used")
    parser.add_argument("--draft-tokens", type=int, default=3, help="tokens drafted per verification (default: 3)")
    parser.add_argument("--memory", type=float, default=0.2,
                        help="share of memory vLLM's CPU backend reserves (default: 0.2)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from transformers import AutoTokenizer
    from vllm import LLM

    with open(args.prompts_from) as f:
        bench = json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = [tokenizer(p).input_ids for p in bench["prompt_texts"]]
    tokens, runs = bench["new_tokens"], bench["runs"]
    common = {"dtype": "float32", "seed": 0, "gpu_memory_utilization": args.memory, "disable_log_stats": False}

    llm = LLM(model=args.model, **common)
    plain_rate, reference, _ = timed(llm, prompts, tokens, runs)
    del llm
    gc.collect()
    llm = LLM(model=args.model, **common, speculative_config={
        "model": args.draft, "num_speculative_tokens": args.draft_tokens, "method": "draft_model"})
    spec_rate, got, counts = timed(llm, prompts, tokens, runs)
    drafted = counts.get("vllm:spec_decode_num_draft_tokens", 0)
    accepted = counts.get("vllm:spec_decode_num_accepted_tokens", 0)
    identical = got == reference
    report = {"script": "deploy/vllm_speculative.py", "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "draft": args.draft, "draft_tokens": args.draft_tokens, "prompts": len(prompts), "new_tokens": tokens,
              "runs": runs, "tokens_per_s": {"vllm": plain_rate, "vllm draft model": spec_rate},
              "speed_up": spec_rate / plain_rate, "acceptance": accepted / drafted if drafted else 0.0,
              "accepted": accepted, "drafted": drafted, "identical": identical}
    print(f"vLLM greedy, batch 1{'':<17}: {plain_rate:8.1f} tokens/s")
    print(f"vLLM, {args.draft} as draft ({args.draft_tokens} per round): {spec_rate:8.1f} tokens/s, "
          f"{spec_rate / plain_rate:.2f}x over vLLM greedy; acceptance {100 * report['acceptance']:.1f} % "
          f"({accepted:.0f}/{drafted:.0f}); output identical: {'yes' if identical else 'NO'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
