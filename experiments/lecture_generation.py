"""The lecture's table 13 (text generation): a language model at each depth, measured.

For each depth (every-other layers): perplexity on the corpus' validation paragraphs; greedy and
sampled continuations of a fixed prompt set (the first words of the first N test paragraphs)
with their speed (median tokens per second) and how degenerate they are: distinct-1 and
distinct-2 over all continuations (Li et al. 2016) and the mean share of repeated 4-grams within
one continuation (Welleck et al. 2020's seq-rep-4). At full depth also self-speculative decoding
with each draft depth: acceptance rate and speed-up over full-depth greedy decoding (the same
text). Sampling: temperature 1, top-p 0.95, seed i for prompt i.

Writes OUT/generation.json after every depth; run again with the same settings to continue where
it stopped (a depth already there is not measured again).

    python experiments/lecture_generation.py runs/lecture/gen-kjv --model runs/kjv/model --depths 6,4,3,2 \\
        --speculative 2,3
    python experiments/lecture_generation.py runs/lecture/gen-smollm2 --model smollm2-135m --depths 30,20,15 \\
        --speculative 15 --prompts 4 --eval-rows 40
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

import layerdrop
from layerdrop import data
from layerdrop.evaluation.measure import distinct_n, repeated_ngrams, validation_scorers
from layerdrop.files import write_json
from layerdrop.models.loading import from_pretrained, load_saved, local_folder
from layerdrop.serving.generate import generate


def _prompts(corpus: str, count: int, words: int) -> list[str]:
    """The first ``words`` words of the first ``count`` test paragraphs."""
    texts = data.load(corpus).test.texts
    return [" ".join(t.split()[:words]) for t in texts[:count]]


def _continuations(model: torch.nn.Module, tokenizer: object, prompts: list[str], new_tokens: int,
                   sampled: bool) -> dict[str, float]:
    ids, rates = [], []
    generate(model, tokenizer, prompts[0], max_new_tokens=4)  # warm-up, not timed
    for i, prompt in enumerate(prompts):
        out = generate(model, tokenizer, prompt, max_new_tokens=new_tokens, temperature=1.0 if sampled else 0.0,
                       top_p=0.95 if sampled else None, seed=i)
        ids.append(out.token_ids)
        rates.append(out.tokens_per_second)
    repeats = [r for r in (repeated_ngrams(t, 4) for t in ids) if not math.isnan(r)]  # continuations of 4+ tokens
    return {"tokens_per_second": statistics.median(rates), "distinct_1": distinct_n(ids, 1),
            "distinct_2": distinct_n(ids, 2), "repeated_4grams": statistics.fmean(repeats) if repeats else math.nan}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--model", required=True, help="a causal LM folder or a bundled name (smollm2-135m)")
    p.add_argument("--data", default="kjv", help="corpus: validation paragraphs scored, test paragraphs prompted")
    p.add_argument("--depths", required=True, help="comma-separated depths, the model's own first")
    p.add_argument("--speculative", default="", help="comma-separated draft depths for self-speculative decoding")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-words", type=int, default=12)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--eval-rows", type=int, default=100, help="validation paragraphs scored")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "threads", "depths")}  # more depths: continue
    path = a.out / "generation.json"
    done = {}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] != settings:
            raise SystemExit(f"{path} was measured with other settings; choose another OUT")
        done = {row["depth"]: row for row in saved["depths"]}

    model = load_saved(a.model).eval()
    tokenizer = from_pretrained(AutoTokenizer, local_folder(a.model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    num_layers = len(layerdrop.find_layers(model).layers)
    prompts = _prompts(a.data, a.prompts, a.prompt_words)
    scorer = validation_scorers(model, tokenizer, a.data, rows=a.eval_rows, max_length=a.max_length).valid
    rows = dict(done)
    for depth in [int(d) for d in a.depths.split(",")]:
        if depth in rows:
            continue
        start = time.time()
        kept = layerdrop.every_other(num_layers, depth)
        with layerdrop.only_layers(model, kept):
            perplexity = scorer(model)
        cut = model if depth == num_layers else layerdrop.prune(model, depth).eval()  # cut once, outside the timing
        row = {"depth": depth, "kept": list(kept), "perplexity": perplexity,
               "greedy": _continuations(cut, tokenizer, prompts, a.new_tokens, sampled=False),
               "sampled": _continuations(cut, tokenizer, prompts, a.new_tokens, sampled=True)}
        if depth == num_layers:
            row["speculative"] = []
            for k in [int(d) for d in a.speculative.split(",") if d.strip()]:
                generate(model, tokenizer, prompts[0], max_new_tokens=4, speculative=k)  # warm-up
                runs = [generate(model, tokenizer, q, max_new_tokens=a.new_tokens, speculative=k) for q in prompts]
                rate = statistics.median(r.tokens_per_second for r in runs)
                row["speculative"].append({
                    "draft_depth": k,
                    "acceptance": sum(r.accepted for r in runs) / max(1, sum(r.drafted for r in runs)),
                    "tokens_per_second": rate, "speed_up": rate / row["greedy"]["tokens_per_second"]})
        row["seconds"] = round(time.time() - start, 1)
        rows[depth] = row
        write_json(path, {"settings": settings, "layers": num_layers,
                          "depths": sorted(rows.values(), key=lambda r: -r["depth"])})
        print(f"depth {depth}: perplexity {perplexity:.2f}, greedy {row['greedy']}, sampled {row['sampled']}"
              + (f", speculative {row['speculative']}" if "speculative" in row else ""), flush=True)


if __name__ == "__main__":
    main()
