"""Does vLLM run a layerdrop cut as `transformers` does? Greedy tokens of both, compared prompt by prompt.

Runs in its own environment (vLLM pins its own packages; `make vllm-check` builds it), on folders that
`layerdrop prune` exported:

    python deploy/vllm_check.py FOLDER [FOLDER ...] [--tokens 32] [--json OUT]

Exits 1 when any prompt's tokens differ, 0 when every folder matches. vLLM's CPU build spawns worker
processes, so the script runs under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROMPTS = (
    "In the beginning God created",
    "And the LORD spake unto Moses, saying,",
    "Blessed are the poor in spirit:",
    "The quick brown fox",
)


def hf_greedy(folder: str, prompts: tuple[str, ...], tokens: int) -> list[list[int]]:
    """``transformers``' greedy continuation of each prompt (token ids after the prompt)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            full = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens,
                                  min_new_tokens=tokens, pad_token_id=tokenizer.eos_token_id)
        out.append(full[0, ids.shape[1]:].tolist())
    return out


def vllm_greedy(folder: str, prompts: tuple[str, ...], tokens: int, memory: float) -> list[list[int]]:
    """vLLM's greedy continuation of each prompt, from the same token ids ``transformers`` starts from; ``memory``
    is the share of the machine's memory vLLM's CPU backend reserves (its ``gpu_memory_utilization``)."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(folder)
    llm = LLM(model=folder, dtype="float32", seed=0, gpu_memory_utilization=memory)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)
    requests = [TokensPrompt(prompt_token_ids=tokenizer(p).input_ids) for p in prompts]
    return [list(r.outputs[0].token_ids) for r in llm.generate(requests, params)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="models exported by layerdrop prune (or any HF causal LM folder)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default: 32)")
    parser.add_argument("--memory", type=float, default=0.2,
                        help="share of memory vLLM's CPU backend reserves (default: 0.2; its own default, 0.92, "
                             "fails on a machine running anything else)")
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args()
    report, ok = [], True
    for folder in args.folders:
        start = time.time()
        want = hf_greedy(folder, PROMPTS, args.tokens)
        hf_s = time.time() - start
        start = time.time()
        got = vllm_greedy(folder, PROMPTS, args.tokens, args.memory)
        vllm_s = time.time() - start
        same = [w == g for w, g in zip(want, got, strict=True)]
        first = [next((i for i, (a, b) in enumerate(zip(w, g, strict=False)) if a != b), None)
                 for w, g in zip(want, got, strict=True)]  # the first token where the two differ
        ok &= all(same)
        report.append({"folder": folder, "prompts": len(PROMPTS), "tokens": args.tokens, "identical": same,
                       "first_difference": first, "transformers_s": round(hf_s, 1), "vllm_s": round(vllm_s, 1)})
        print(f"{folder}: {sum(same)}/{len(same)} prompts token for token the same over {args.tokens} tokens "
              f"(transformers {hf_s:.0f} s, vLLM {vllm_s:.0f} s with loading)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
