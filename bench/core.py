"""Core LayerDrop costs and savings on a 12-layer BERT-shaped model (random weights).

Prints, from one run:
  1. training step time at rate 0.5 relative to rate 0 (the paper: "almost 2x" faster);
  2. overhead of LayerDrop applied at rate 0 relative to the untouched model (target < 2 %);
  3. eval latency of the model pruned to 6 layers relative to the full model.

Steps of the variants being compared are interleaved, and medians are reported,
so drift of the machine affects both sides alike.

    python bench/core.py [--hidden 768] [--batch 8] [--seq 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

import layerdrop


def _model(hidden: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=12, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden, num_labels=2)
    return BertForSequenceClassification(config)


def _train_step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def _eval_step(model, batch) -> float:
    start = time.perf_counter()
    model(input_ids=batch["input_ids"])
    return time.perf_counter() - start


def _interleaved(fns: dict[str, callable], steps: int, warmup: int = 3) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (a.batch, a.seq), generator=g),
             "labels": torch.randint(0, 2, (a.batch,), generator=g)}

    plain, zero, half = _model(a.hidden), _model(a.hidden), _model(a.hidden)
    layerdrop.apply(zero, rate=0.0)
    layerdrop.apply(half, rate=0.5)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (plain, zero, half)}
    for m in (plain, zero, half):
        m.train()
    train = _interleaved({
        "plain": lambda: _train_step(plain, opts[plain], batch),
        "rate0": lambda: _train_step(zero, opts[zero], batch),
        "rate0.5": lambda: _train_step(half, opts[half], batch),
    }, a.steps)

    full = _model(a.hidden).eval()
    pruned = layerdrop.prune(full, depth=6).eval()
    evals = _interleaved({"full": lambda: _eval_step(full, batch), "pruned6": lambda: _eval_step(pruned, batch)},
                         a.steps)

    print(f"# bench/core.py: BERT-shaped, 12 layers, hidden {a.hidden}, batch {a.batch} x {a.seq} tokens, "
          f"{a.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"train step, untouched model          : {1000 * train['plain']:8.1f} ms (median of {a.steps})")
    print(f"train step, LayerDrop rate 0         : {1000 * train['rate0']:8.1f} ms")
    print(f"train step, LayerDrop rate 0.5       : {1000 * train['rate0.5']:8.1f} ms")
    print(f"speed-up of rate 0.5 over rate 0     : {train['rate0'] / train['rate0.5']:8.2f}x")
    print(f"overhead of rate 0 over untouched    : {100 * (train['rate0'] / train['plain'] - 1):+8.2f} %")
    print(f"eval forward, full 12 layers         : {1000 * evals['full']:8.1f} ms")
    print(f"eval forward, pruned to 6 layers     : {1000 * evals['pruned6']:8.1f} ms")
    print(f"pruned-6 latency relative to full    : {evals['pruned6'] / evals['full']:8.2f}x")


if __name__ == "__main__":
    main()
