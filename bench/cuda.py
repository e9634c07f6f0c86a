"""LayerDrop on a GPU: a training step at rates 0.2 and 0.5 against rate 0, and eval latency at every
depth, each timed with the device synchronised (``layerdrop.evaluation.timer``), beside what a wall
clock without synchronisation reports for the same forwards (the timers before issue 29).

A 12-layer BERT-shaped classifier with random weights (timing needs no trained weights). The
training variants run in interleaved rounds, so the device's clocks and temperature touch each
alike; the ideal of a rate is the step of the model pruned to the layers that rate keeps on average
(6 of 12 at 0.5): the same layers' compute, nothing else saved.

    python bench/cuda.py [--quick] [--json out.json] [--hidden 768] [--batch 32] [--seq 128]
                         [--dtype float32,bfloat16] [--device cuda]

``--device cpu --quick`` runs it on the CPU as a smoke test; its figures mean nothing there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

import layerdrop
from layerdrop.evaluation.measure import latency_ms
from layerdrop.evaluation.timer import synchronize, time_ms

LAYERS = 12


def _model(hidden: int, device: torch.device) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).to(device)


def _batch(size: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 20000, (size, seq), generator=g).to(device),
            "labels": torch.randint(0, 2, (size,), generator=g).to(device)}


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[None]:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def training_steps(a: argparse.Namespace, device: torch.device, dtype: str) -> dict[str, Any]:
    """Median milliseconds of a training step (forward, backward, AdamW) per variant, interleaved."""
    batch = _batch(a.batch, a.seq, device)
    variants = {f"rate {r}": layerdrop.apply(_model(a.hidden, device), rate=r, seed=1).train() for r in (0.0, 0.2, 0.5)}
    variants["pruned to 6 (ideal of 0.5)"] = layerdrop.prune(_model(a.hidden, device), depth=6).train()
    variants["pruned to 10 (ideal of 0.2)"] = layerdrop.prune(_model(a.hidden, device), depth=10).train()
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    layers: dict[str, list[int]] = {name: [] for name in variants}

    def step(name: str) -> None:
        model, opt = variants[name], optimizers[name]
        with _autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for round_ in range(a.warmup + a.steps):
        for name, model in variants.items():
            state = layerdrop.state_of(model)
            before = state.layers_run if state is not None else 0
            ms = time_ms(lambda name=name: step(name), device)
            if round_ >= a.warmup:
                times[name].append(ms)
                if state is not None:
                    layers[name].append(state.layers_run - before)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["rate 0.0"]
    return {"ms": medians, "spread_ms": {n: [min(t), max(t)] for n, t in times.items()},
            "layers_run": {n: statistics.mean(v) for n, v in layers.items() if v},
            "speedup": {n: base / m for n, m in medians.items()},
            "speedup_of_ideal": {"rate 0.5": medians["pruned to 6 (ideal of 0.5)"] / medians["rate 0.5"],
                                 "rate 0.2": medians["pruned to 10 (ideal of 0.2)"] / medians["rate 0.2"]}}


def eval_latency(a: argparse.Namespace, device: torch.device, dtype: str) -> dict[str, Any]:
    """Per depth: the synchronised median, and what a wall clock read without synchronising reports."""
    model = layerdrop.apply(_model(a.hidden, device), rate=0.5).eval()
    batch = {"input_ids": _batch(a.batch, a.seq, device)["input_ids"]}
    synced, naive = {}, {}
    with torch.no_grad(), _autocast(device, dtype):
        for depth in range(LAYERS, 0, -1):
            view = layerdrop.view(model, depth)
            synced[depth] = latency_ms(view, batch, reps=a.reps, warmup=3)
            samples = []
            for _ in range(a.reps):  # the timers before issue 29: no synchronisation
                start = time.perf_counter()
                view(**batch)
                samples.append((time.perf_counter() - start) * 1000)
            synchronize(device)
            naive[depth] = statistics.median(samples)
    return {"synchronised_ms": synced, "unsynchronised_ms": naive,
            "speedup_vs_full": {d: synced[LAYERS] / ms for d, ms in synced.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # make bench on a CPU machine: nothing to time
        print("bench/cuda.py: skipped, no CUDA device here (--device cpu --quick runs it as a smoke test)")
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps({"script": "bench/cuda.py", "skipped": "no CUDA device"}))
        return
    a.steps, a.reps, a.warmup = (3, 3, 1) if a.quick else (30, 30, 5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out: dict[str, Any] = {"script": "bench/cuda.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
                           "device": name, "torch": torch.__version__, "hidden": a.hidden, "batch": a.batch,
                           "seq": a.seq}
    for dtype in a.dtype.split(","):
        train = training_steps(a, device, dtype)
        latency = eval_latency(a, device, dtype)
        out[dtype] = {"training": train, "eval": latency}
        print(f"# {out['device']}, torch {torch.__version__}, {dtype}, batch {a.batch} x {a.seq}, hidden {a.hidden}")
        print("training step (forward, backward, AdamW), median of", a.steps, "interleaved rounds:")
        for name, ms in train["ms"].items():
            run = train["layers_run"].get(name)
            print(f"  {name:28s} {ms:8.2f} ms  {train['speedup'][name]:.2f}x"
                  + (f"  ({run:.1f} layers run)" if run is not None else ""))
        for rate, share in train["speedup_of_ideal"].items():
            print(f"  {rate}: {100 * share:.0f} % of its ideal speed-up")
        print("eval forward per depth (no_grad): synchronised ms, unsynchronised ms, speed-up over 12 layers")
        for depth, ms in latency["synchronised_ms"].items():
            print(f"  {depth:2d} layers {ms:8.3f} {latency['unsynchronised_ms'][depth]:8.3f}"
                  f"  {latency['speedup_vs_full'][depth]:.2f}x")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
