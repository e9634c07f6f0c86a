"""Core LayerDrop costs and savings on a 12-layer BERT-shaped model (random weights).

Prints, from one run:
  1. training step time at rate 0.5 relative to rate 0 (the paper: "almost 2x" faster);
  2. overhead of LayerDrop applied at rate 0 relative to the untouched model (target < 2 %),
     measured on train-mode forwards, where the hooks and gates run;
  3. eval latency of the model pruned to 6 layers relative to the full model.

Steps of the variants being compared are interleaved, and medians are reported,
so drift of the machine affects both sides alike.

    python bench/core.py [--hidden 768] [--batch 8] [--seq 128] [--steps 12] [--reps 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

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


def _interleaved(fns: dict[str, Callable[[], float]], steps: int, warmup: int = 3) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def _train_forward(model, batch) -> float:
    """A training-mode forward without backward: where LayerDrop's hooks and gates run."""
    start = time.perf_counter()
    model(**batch)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=12, help="timed training steps per variant")
    p.add_argument("--reps", type=int, default=30, help="timed forwards per variant")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (a.batch, a.seq), generator=g),
             "labels": torch.randint(0, 2, (a.batch,), generator=g)}

    plain, zero, half = _model(a.hidden), _model(a.hidden), _model(a.hidden)
    layerdrop.apply(zero, rate=0.0)
    layerdrop.apply(half, rate=0.5)
    for m in (plain, zero, half):
        m.train()
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (zero, half)}
    train = _interleaved({
        "rate0": lambda: _train_step(zero, opts[id(zero)], batch),
        "rate0.5": lambda: _train_step(half, opts[id(half)], batch),
    }, a.steps)
    overhead = _interleaved({
        "plain": lambda: _train_forward(plain, batch),
        "rate0": lambda: _train_forward(zero, batch),
    }, a.reps)

    # The machinery's absolute cost per forward, where it is not lost in noise: a tiny model.
    tiny_plain, tiny_zero = _model(64), layerdrop.apply(_model(64), rate=0.0)
    tiny_batch = {"input_ids": batch["input_ids"][:1, :8]}
    for m in (tiny_plain, tiny_zero):
        m.train()
    tiny = _interleaved({"plain": lambda: _train_forward(tiny_plain, tiny_batch),
                         "rate0": lambda: _train_forward(tiny_zero, tiny_batch)}, 1000, warmup=50)

    full = _model(a.hidden).eval()
    pruned = layerdrop.prune(full, depth=6).eval()
    evals = _interleaved({"full": lambda: _eval_step(full, batch), "pruned6": lambda: _eval_step(pruned, batch)},
                         a.reps)

    print(f"# bench/core.py: BERT-shaped, 12 layers, hidden {a.hidden}, batch {a.batch} x {a.seq} tokens, "
          f"{a.threads} threads, torch {torch.__version__}, {platform.machine()}")
    print(f"train step (fwd+bwd+AdamW), rate 0     : {1000 * train['rate0']:8.1f} ms (median of {a.steps})")
    print(f"train step (fwd+bwd+AdamW), rate 0.5   : {1000 * train['rate0.5']:8.1f} ms")
    print(f"speed-up of rate 0.5 over rate 0       : {train['rate0'] / train['rate0.5']:8.2f}x")
    print(f"train-mode forward, untouched model    : {1000 * overhead['plain']:8.1f} ms (median of {a.reps})")
    print(f"train-mode forward, LayerDrop rate 0   : {1000 * overhead['rate0']:8.1f} ms")
    print(f"overhead of rate 0 over untouched      : {100 * (overhead['rate0'] / overhead['plain'] - 1):+8.2f} %")
    print(f"hooks + 12 gates, absolute cost        : {1e6 * (tiny['rate0'] - tiny['plain']):8.1f} us per forward "
          f"(tiny 12-layer model, median of 1000: {1e6 * tiny['plain']:.0f} us untouched)")
    print(f"eval forward, full 12 layers           : {1000 * evals['full']:8.1f} ms (median of {a.reps})")
    print(f"eval forward, pruned to 6 layers       : {1000 * evals['pruned6']:8.1f} ms")
    print(f"pruned-6 latency relative to full      : {evals['pruned6'] / evals['full']:8.2f}x")


if __name__ == "__main__":
    main()
