"""Core LayerDrop costs and savings on a 12-layer BERT-shaped model (random weights).

Prints, from one run:
  1. training step time at rates 0.2 and 0.5 relative to rate 0 (the paper: "almost 2x" faster
     at 0.5), and each against its ideal: what skipping the expected fraction of the layers'
     compute would give while the embeddings, the head, the loss and the optimizer's other
     parameters still run, computed from a per-part timing of the rate-0 step;
  2. overhead of LayerDrop applied at rate 0 relative to the untouched model (target < 2 %),
     measured on train-mode forwards, where the hooks and gates run;
  3. memory of a training step at rates 0 and 0.5: the bytes autograd saves for backward (skipped
     layers save nothing), and the peak resident memory of a fresh process running the steps;
  4. eval latency of the model pruned to 6 layers relative to the full model, and the eval
     throughput of each as a fraction of this machine's fp32 matmul peak, measured in the same run.

Steps of the variants being compared are interleaved, and medians reported with their spread
(min-max), so drift of the machine affects both sides alike. Ratios measured side by side can
be trusted on a noisy machine; absolute milliseconds and bytes cannot.

    python bench/core.py [--quick] [--json out.json] [--hidden 768] [--batch 8] [--seq 128]
                         [--steps 12] [--reps 30] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification

import layerdrop


def _model(hidden: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=12, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden, num_labels=2)
    return BertForSequenceClassification(config)


def _batch(size: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 20000, (size, seq), generator=g),
            "labels": torch.randint(0, 2, (size,), generator=g)}


def _timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


def _train_step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()


def _interleaved(fns: dict[str, Callable[[], float]], steps: int, warmup: int = 3) -> dict[str, list[float]]:
    """Each variant's timed runs, the variants interleaved run by run."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    return times


def _med(times: list[float]) -> float:
    return statistics.median(times)


def _spread(times: list[float], scale: float = 1000.0) -> str:
    return f"{scale * min(times):.1f}-{scale * max(times):.1f}"


def _parts(model: BertForSequenceClassification, batch: dict[str, torch.Tensor], reps: int) -> dict[str, float]:
    """What a training step costs per layer and what no rate can skip, on the model itself.

    The step (forward, backward, AdamW) is timed with 12, 9, 6 and 3 of its layers
    (:func:`layerdrop.only_layers`: the same model, a fixed mask), interleaved; a line through the
    median times gives the seconds per layer (``layer``) and the rest (``fixed``). To say what that
    rest holds, the embeddings and the head with its loss (forward + backward) and AdamW over the
    parameters outside the layers are also timed alone."""
    bert = model.bert
    ids, labels = batch["input_ids"], batch["labels"]
    with torch.no_grad():
        hidden = bert.embeddings(input_ids=ids)  # (B, T, H)
    params = list(model.parameters())
    in_layers = {id(p) for p in bert.encoder.layer.parameters()}
    opt = torch.optim.AdamW(params, lr=1e-5)
    depths = (12, 9, 6, 3)

    def step_with(depth: int) -> Callable[[], float]:
        keep = layerdrop.every_other(12, depth)

        def run() -> float:
            with layerdrop.only_layers(model, keep):
                start = time.perf_counter()
                _train_step(model, opt, batch)
                return time.perf_counter() - start
        return run

    def embeddings() -> None:
        bert.embeddings(input_ids=ids).sum().backward()

    def head() -> None:
        x = hidden.detach().requires_grad_()
        F.cross_entropy(model.classifier(model.dropout(bert.pooler(x))), labels).backward()

    def optimizer_outside_layers() -> float:
        for p in params:
            p.grad = None if id(p) in in_layers else torch.zeros_like(p)
        start = time.perf_counter()
        opt.step()
        return time.perf_counter() - start

    times = _interleaved({**{depth: step_with(depth) for depth in depths}, "embeddings": _timed(embeddings),
                          "head": _timed(head), "optimizer_fixed": optimizer_outside_layers}, reps, warmup=2)
    model.zero_grad(set_to_none=True)
    med = {k: _med(v) for k, v in times.items()}
    mean_k, mean_t = statistics.mean(depths), statistics.mean(med[k] for k in depths)
    layer = (sum((k - mean_k) * (med[k] - mean_t) for k in depths)
             / sum((k - mean_k) ** 2 for k in depths))  # least squares: seconds per layer
    return {"layer": layer, "fixed": mean_t - layer * mean_k, "embeddings": med["embeddings"], "head": med["head"],
            "optimizer_fixed": med["optimizer_fixed"], **{f"step_{k}": med[k] for k in depths}}


def _ideal_step(parts: dict[str, float], layers: float) -> float:
    """Seconds of a step that runs ``layers`` layers, from the parts: nothing but the layers shrinks."""
    return parts["fixed"] + layers * parts["layer"]


def _saved_bytes(model, batch) -> int:
    """Bytes autograd saves for backward in one training forward: distinct storages, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    del loss
    return sum(saved.values())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; not ``ru_maxrss``, which a child inherits from its parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_peak_rss() -> None:
    """Make the peak the current resident memory (Linux: 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_child(a: argparse.Namespace, rate: float) -> None:
    """In a fresh process: peak resident memory of ``a.memory_steps`` training steps at ``rate``,
    above the resident memory before them (the weights built; gradients, AdamW's state and the
    activations come with the steps). Printed as JSON. A first step of a tiny model loads what
    any training step needs (kernels, thread pools), so that it is not counted."""
    torch.set_num_threads(a.threads)
    tiny = _model(64).train()
    tiny(**_batch(1, 8)).loss.backward()
    del tiny
    model = layerdrop.apply(_model(a.hidden), rate=rate).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = _batch(a.batch, a.seq)
    _reset_peak_rss()
    before = _rss_bytes()
    for _ in range(a.memory_steps):
        _train_step(model, opt, batch)
    peak = _peak_rss_bytes()
    print(json.dumps({"rate": rate, "peak_above_start": peak - before, "weights": sum(
        p.numel() * p.element_size() for p in model.parameters())}))


def _peak(a: argparse.Namespace, rate: float) -> dict[str, float]:
    command = [sys.executable, __file__, "--peak-child", str(rate), "--hidden", str(a.hidden), "--batch",
               str(a.batch), "--seq", str(a.seq), "--threads", str(a.threads), "--memory-steps", str(a.memory_steps)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _flops(model, batch) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=batch["input_ids"])
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (about 4 minutes on 2 cores)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, help="timed training steps per variant (default 12, quick 4)")
    p.add_argument("--reps", type=int, help="timed forwards per variant (default 30, quick 8)")
    p.add_argument("--memory-steps", type=int, default=3, help="training steps of each peak-memory process")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--peak-child", type=float, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peak_child is not None:
        return _peak_child(a, a.peak_child)
    a.steps = (4 if a.quick else 12) if a.steps is None else a.steps
    a.reps = (8 if a.quick else 30) if a.reps is None else a.reps
    if a.steps < 1 or a.reps < 1:
        p.error("--steps and --reps must be at least 1")
    torch.set_num_threads(a.threads)
    batch = _batch(a.batch, a.seq)
    rates = (0.0, 0.2, 0.5)

    # 1. Training steps at each rate, interleaved; the layers each one ran.
    models = {r: layerdrop.apply(_model(a.hidden), rate=r).train() for r in rates}
    opts = {r: torch.optim.AdamW(m.parameters(), lr=1e-5) for r, m in models.items()}
    runs: dict[float, list[int]] = {r: [] for r in rates}

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer, ran: list[int]) -> Callable[[], float]:
        # the model and optimizer come as arguments, so that deleting ``models`` and ``opts`` below frees them
        state = layerdrop.state_of(model)

        def run() -> float:
            before = state.layers_run
            start = time.perf_counter()
            _train_step(model, opt, batch)
            took = time.perf_counter() - start
            ran.append(state.layers_run - before)
            return took
        return run
    train = _interleaved({r: step(models[r], opts[r], runs[r]) for r in rates}, a.steps)
    runs = {r: v[-a.steps:] for r, v in runs.items()}  # the timed steps only
    del models, opts
    parts = _parts(_model(a.hidden).train(), batch, max(3, a.steps))

    # 2. The gates' overhead at rate 0.
    plain, zero = _model(a.hidden).train(), layerdrop.apply(_model(a.hidden), rate=0.0).train()
    overhead = _interleaved({"plain": _timed(lambda m=plain: _no_grad(m, batch)),  # bound: ``plain`` is deleted below
                             "rate0": _timed(lambda m=zero: _no_grad(m, batch))}, a.reps)
    tiny_plain, tiny_zero = _model(64).train(), layerdrop.apply(_model(64), rate=0.0).train()
    tiny_batch = {"input_ids": batch["input_ids"][:1, :8]}
    tiny = _interleaved({"plain": _timed(lambda: _no_grad(tiny_plain, tiny_batch)),
                         "rate0": _timed(lambda: _no_grad(tiny_zero, tiny_batch))},
                        300 if a.quick else 1000, warmup=50)

    # 3. Memory: saved activations (mean over draws) and the peak of a fresh process per rate.
    saved = {}
    for r in (0.0, 0.5):
        m = layerdrop.apply(_model(a.hidden), rate=r).train()
        saved[r] = statistics.mean(_saved_bytes(m, batch) for _ in range(1 if r == 0 else 8))
    del m, plain, zero
    peaks = {r: _peak(a, r) for r in (0.0, 0.5)}

    # 4. Eval latency, full and cut, against the machine's matmul peak.
    full = _model(a.hidden).eval()
    pruned = layerdrop.prune(full, depth=6).eval()
    ids = {"input_ids": batch["input_ids"]}
    n = 2048  # the machine's fp32 matmul peak: an n x n product, timed among the forwards
    x, y = torch.randn(n, n, generator=torch.Generator().manual_seed(0)), torch.randn(n, n)
    evals = _interleaved({"full": _timed(lambda: _no_grad(full, ids)), "pruned6": _timed(lambda: _no_grad(pruned, ids)),
                          "matmul": _timed(lambda: x @ y)}, a.reps)
    peak_flops = 2 * n ** 3 / _med(evals["matmul"])
    flops = {"full": _flops(full, batch), "pruned6": _flops(pruned, batch)}

    L = 12
    if parts["fixed"] <= 0 or parts["layer"] <= 0:  # the fit failed: the machine was too noisy
        print(f"warning: the step times with 12/9/6/3 layers gave a fixed cost of {1000 * parts['fixed']:.0f} ms and "
              f"{1000 * parts['layer']:.0f} ms per layer: too noisy for an ideal; run again on a quieter machine")
        parts["fixed"], parts["layer"] = max(parts["fixed"], 1e-9), max(parts["layer"], 1e-9)
    ideal = {r: _ideal_step(parts, L) / _ideal_step(parts, (1 - r) * L) for r in rates}
    measured = {r: _med(train[0.0]) / _med(train[r]) for r in rates}
    ms = {r: 1000 * _med(train[r]) for r in rates}
    print(f"# bench/core.py{' --quick' if a.quick else ''}: BERT-shaped, 12 layers, hidden {a.hidden}, batch "
          f"{a.batch} x {a.seq} tokens, {a.threads} threads, torch {torch.__version__}, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}; medians, spread min-max")
    for r in rates:
        print(f"train step (fwd+bwd+AdamW), rate {r:<4}  : {ms[r]:8.1f} ms ({_spread(train[r])}, {a.steps} steps; "
              f"layers run: mean {statistics.mean(runs[r]):.1f} of 12)")
    for r in rates[1:]:
        print(f"speed-up of rate {r} over rate 0       : {measured[r]:8.2f}x, ideal {ideal[r]:.2f}x: "
              f"measured / ideal {measured[r] / ideal[r]:.2f}")
    print("a step with 12/9/6/3 layers (fixed)    : " + ", ".join(
        f"{1000 * parts[f'step_{k}']:.0f}" for k in (12, 9, 6, 3)) + " ms (only_layers, a line fitted through them)")
    print(f"  per layer (forward, backward, AdamW) : {1000 * parts['layer']:8.1f} ms")
    rest = parts["fixed"] - parts["embeddings"] - parts["head"] - parts["optimizer_fixed"]
    print(f"  what no rate can skip                : {1000 * parts['fixed']:8.1f} ms = "
          f"{100 * parts['fixed'] / _ideal_step(parts, L):.1f} % of a 12-layer step (so at most "
          f"{_ideal_step(parts, L) / parts['fixed']:.1f}x at rate 1): embeddings {1000 * parts['embeddings']:.1f}, "
          f"head + loss {1000 * parts['head']:.1f}, AdamW outside the layers {1000 * parts['optimizer_fixed']:.1f}, "
          f"the rest {1000 * rest:.1f} (each timed alone)")
    for r in rates[1:]:
        drawn = _ideal_step(parts, L) / _ideal_step(parts, statistics.mean(runs[r]))
        print(f"ideal at rate {r} for the masks drawn   : {drawn:8.2f}x (the timed steps ran "
              f"{statistics.mean(runs[r]):.1f} layers on average, {(1 - r) * L:.1f} expected)")
    print(f"train-mode forward, untouched model    : {1000 * _med(overhead['plain']):8.1f} ms "
          f"({_spread(overhead['plain'])}, {a.reps} forwards)")
    print(f"train-mode forward, LayerDrop rate 0   : {1000 * _med(overhead['rate0']):8.1f} ms "
          f"({_spread(overhead['rate0'])})")
    print(f"overhead of rate 0 over untouched      : "
          f"{100 * (_med(overhead['rate0']) / _med(overhead['plain']) - 1):+8.2f} %")
    print(f"hooks + 12 gates, absolute cost        : {1e6 * (_med(tiny['rate0']) - _med(tiny['plain'])):8.1f} us "
          f"per forward (tiny 12-layer model, {1e6 * _med(tiny['plain']):.0f} us untouched)")
    print(f"saved for backward, rate 0             : {saved[0.0] / 2**20:8.1f} MiB per forward")
    print(f"saved for backward, rate 0.5           : {saved[0.5] / 2**20:8.1f} MiB (mean of 8 draws): "
          f"{saved[0.5] / saved[0.0]:.2f}x")
    for r in (0.0, 0.5):
        print(f"peak RSS of {a.memory_steps} steps, rate {r:<4}        : "
              f"{peaks[r]['peak_above_start'] / 2**20:8.1f} MiB above the built model "
              f"(weights {peaks[r]['weights'] / 2**20:.0f} MiB; a fresh process)")
    print(f"peak RSS, rate 0.5 over rate 0         : "
          f"{peaks[0.5]['peak_above_start'] / peaks[0.0]['peak_above_start']:8.2f}x")
    print(f"fp32 matmul peak (2048^3)              : {peak_flops / 1e9:8.1f} GFLOP/s ({_spread(evals['matmul'])} ms)")
    for name, label in (("full", "full 12 layers  "), ("pruned6", "pruned to 6     ")):
        rate = flops[name] / _med(evals[name])
        print(f"eval forward, {label}         : {1000 * _med(evals[name]):8.1f} ms ({_spread(evals[name])}), "
              f"{flops[name] / 1e9:.1f} GFLOP, {rate / 1e9:.1f} GFLOP/s = {100 * rate / peak_flops:.0f} % "
              "of the matmul peak")
    print(f"pruned-6 latency relative to full      : {_med(evals['pruned6']) / _med(evals['full']):8.2f}x")

    if a.json:
        from layerdrop.files import write_json
        write_json(a.json, {
            "script": "bench/core.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
            "machine": platform.machine(), "torch": torch.__version__, "threads": a.threads,
            "settings": {"hidden": a.hidden, "batch": a.batch, "seq": a.seq, "steps": a.steps, "reps": a.reps},
            "train_step_ms": {str(r): ms[r] for r in rates},
            "speed_up": {str(r): measured[r] for r in rates[1:]},
            "ideal_speed_up": {str(r): ideal[r] for r in rates[1:]},
            "parts_ms": {k: 1000 * v for k, v in parts.items()},
            "layers_run": {str(r): statistics.mean(runs[r]) for r in rates},
            "overhead_rate0": _med(overhead["rate0"]) / _med(overhead["plain"]) - 1,
            "saved_bytes": {str(r): saved[r] for r in saved},
            "peak_rss_above_start": {str(r): peaks[r]["peak_above_start"] for r in peaks},
            "matmul_peak_flops": peak_flops, "eval_ms": {k: 1000 * _med(evals[k]) for k in ("full", "pruned6")},
            "eval_flops": flops,
        })


@torch.no_grad()
def _no_grad(model, batch) -> None:
    """A forward without backward (train mode or eval): where LayerDrop's hooks and gates run."""
    model(**batch)


if __name__ == "__main__":
    main()
