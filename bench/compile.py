"""LayerDrop under ``torch.compile``: recompilations and step time, whole model against regional.

Three copies of one BERT-shaped classifier (random weights, same seed, LayerDrop at ``--rate``)
train on the same batch:
  1. eager;
  2. ``torch.compile(model)``: the gates are traced, so each new keep-mask is a new guard;
  3. ``layerdrop.compile_layers(model)``: each block's forward compiled, the gates outside.

Phase 1 runs ``--steps`` training steps of each, one variant after the other, counting the
compilations (a counting wrapper around the inductor backend) and the wall time, compilation
included. Phase 2 times the compiled variants against eager, interleaved step by step, once
everything is compiled: medians with their spread; with them run rate-0 copies, eager and
regional, so that LayerDrop's saving is measured compiled as well as eager. The three draw the same masks (same seed);
the largest difference of their losses is printed.

    python bench/compile.py [--quick] [--json out.json] [--hidden 256] [--seq 64] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from transformers import BertConfig, BertForSequenceClassification

import layerdrop


def _model(a: argparse.Namespace, rate: float | None = None) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=a.hidden, num_hidden_layers=12, num_attention_heads=max(1, a.hidden // 64),
                        intermediate_size=4 * a.hidden, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return layerdrop.apply(BertForSequenceClassification(config), rate=a.rate if rate is None else rate,
                           seed=0).train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="30 steps and 10 timed (a few minutes on 2 cores)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--steps", type=int, help="training steps per variant in phase 1 (default 100, quick 30)")
    p.add_argument("--timed", type=int, help="interleaved steps per variant in phase 2 (default 30, quick 10)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--warm-cache", action="store_true", help="use inductor's on-disk cache from earlier runs")
    a = p.parse_args()
    if not a.warm_cache:  # inductor keeps compiled code on disk; a fresh folder times a user's first compile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="layerdrop-bench-inductor-")
    a.steps = (30 if a.quick else 100) if a.steps is None else a.steps
    a.timed = (10 if a.quick else 30) if a.timed is None else a.timed
    if a.steps < 1 or a.timed < 1:
        p.error("--steps and --timed must be at least 1")
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (a.batch, a.seq), generator=g),
             "labels": torch.randint(0, 2, (a.batch,), generator=g)}

    torch._dynamo.reset()
    whole_counter, regional_counter = CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")
    models = {"eager": _model(a), "whole": _model(a), "regional": _model(a)}
    callables = {"eager": models["eager"], "whole": torch.compile(models["whole"], backend=whole_counter),
                 "regional": layerdrop.compile_layers(models["regional"], backend=regional_counter)}
    # rate 0, eager and regional: LayerDrop's saving, measured eager and compiled
    models |= {"eager0": _model(a, 0.0), "regional0": _model(a, 0.0)}
    callables |= {"eager0": models["eager0"], "regional0": layerdrop.compile_layers(models["regional0"])}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    losses: dict[str, list[float]] = {k: [] for k in models}
    masks: dict[str, list[tuple[bool, ...]]] = {k: [] for k in models}

    def step(name: str) -> float:
        start = time.perf_counter()
        opts[name].zero_grad(set_to_none=True)
        loss = callables[name](**batch).loss
        loss.backward()
        opts[name].step()
        took = time.perf_counter() - start
        losses[name].append(loss.item())
        masks[name].append(models[name].layerdrop_state.mask.keep)
        return took

    wall = {}
    for name in ("eager", "whole", "regional"):  # phase 1: compilation included
        start = time.perf_counter()
        for _ in range(a.steps):
            step(name)
        wall[name] = time.perf_counter() - start
    for name in ("eager0", "regional0"):  # warm-up: their first steps compile
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(a.timed):  # phase 2: interleaved, everything compiled that will be
        for name in models:
            times[name].append(step(name))

    same_masks = masks["whole"] == masks["eager"] == masks["regional"]
    gap = {k: max(abs(x - y) for x, y in zip(losses[k], losses["eager"], strict=True)) for k in ("whole", "regional")}
    med = {k: statistics.median(v) for k, v in times.items()}
    compiles = {"whole": whole_counter.frame_count, "regional": regional_counter.frame_count}
    limit = torch._dynamo.config.recompile_limit
    print(f"# bench/compile.py{' --quick' if a.quick else ''}: BERT-shaped, 12 layers, hidden {a.hidden}, batch "
          f"{a.batch} x {a.seq} tokens, LayerDrop {a.rate}, inductor ({'warm' if a.warm_cache else 'empty'} cache), "
          f"{a.threads} threads, torch {torch.__version__}, "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"distinct masks drawn in {a.steps} steps     : {len(set(masks['eager'][:a.steps]))} "
          f"(the same in all three runs: {'yes' if same_masks else 'NO'})")
    for name, label in (("eager", "eager                 "), ("whole", "torch.compile(model)  "),
                        ("regional", "compile_layers(model) ")):
        extra = "" if name == "eager" else f", {compiles[name]} compilations"
        print(f"{label}, {a.steps} steps       : {wall[name]:7.1f} s{extra}")
    print(f"recompile limit (torch._dynamo.config)  : {limit}")
    for name, label in (("eager", "eager                "), ("whole", "torch.compile(model) "),
                        ("regional", "compile_layers(model)")):
        spread = f"{1000 * min(times[name]):.1f}-{1000 * max(times[name]):.1f}"
        rel = "" if name == "eager" else f", {med['eager'] / med[name]:.2f}x eager's speed"
        print(f"step, compiled, {label}  : {1000 * med[name]:7.1f} ms ({spread}, {a.timed} interleaved){rel}")
    print(f"largest loss difference from eager      : whole {gap['whole']:.2e}, regional {gap['regional']:.2e}")
    print(f"rate {a.rate} over rate 0, eager             : {med['eager0'] / med['eager']:.2f}x faster "
          f"({1000 * med['eager0']:.1f} ms at rate 0)")
    print(f"rate {a.rate} over rate 0, compile_layers    : {med['regional0'] / med['regional']:.2f}x faster "
          f"({1000 * med['regional0']:.1f} ms at rate 0)")

    if a.json:
        from layerdrop.files import write_json
        write_json(a.json, {
            "script": "bench/compile.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
            "machine": platform.machine(), "torch": torch.__version__, "threads": a.threads,
            "settings": {k: v for k, v in vars(a).items() if k not in ("json", "quick", "threads")},
            "distinct_masks": len(set(masks["eager"][:a.steps])), "same_masks": same_masks,
            "compilations": compiles, "recompile_limit": limit, "wall_s": wall,
            "step_ms": {k: 1000 * v for k, v in med.items()}, "loss_gap": gap,
            "saving": {"eager": med["eager0"] / med["eager"], "regional": med["regional0"] / med["regional"]},
        })


if __name__ == "__main__":
    main()
