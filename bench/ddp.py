"""LayerDrop under DDP: tolerate skipped layers, or keep the autograd graph fixed?

Two ways to stop DDP from failing on the parameters of skipped layers, timed against each other
on 2 gloo ranks (CPU), on a BERT-shaped model with random weights at rate 0.5:

  find_unused  DistributedDataParallel(find_unused_parameters=True): after each forward DDP walks
               the autograd graph and marks the skipped layers' parameters ready itself. Globally
               unused parameters keep ``grad=None``, so AdamW leaves them alone, as in one process.
  touch        find_unused_parameters=False, plus a zero-weighted touch of every skipped layer's
               parameters added to the loss (``0 * sum(p.flatten()[0])``): the graph always holds
               every parameter. Skipped layers get ``grad=0``, and AdamW still moves them
               (momentum, weight decay).

and, for scale, the same model without LayerDrop (``rate0``, find_unused_parameters=False).
Steps of the variants are interleaved, every variant gets the same batches, and medians are
reported, so drift of the machine affects all alike. Prints one report from rank 0.

    python bench/ddp.py [--quick] [--json out.json] [--hidden 256] [--layers 12] [--batch 8] [--seq 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import BertConfig, BertForSequenceClassification

import layerdrop


def _model(a: argparse.Namespace, rate: float) -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=a.hidden, num_hidden_layers=a.layers,
                        num_attention_heads=max(1, a.hidden // 64), intermediate_size=4 * a.hidden, num_labels=2)
    model = BertForSequenceClassification(config)
    if rate > 0:
        layerdrop.apply(model, rate=rate, seed=0)
    return model.train()


def _touch(model: nn.Module) -> torch.Tensor:
    """Zero times one element of each skipped layer's parameters: puts them in the graph, cheaply."""
    state = layerdrop.state_of(model)
    layers = layerdrop.find_layers(model).layers
    firsts = [p.flatten()[0] for layer, kept in zip(layers, state.keep, strict=True) if not kept
              for p in layer.parameters()]
    return torch.stack(firsts).sum() * 0.0 if firsts else torch.zeros(())


def _step(ddp: DistributedDataParallel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
          touch: bool) -> tuple[float, float]:
    """One training step; returns (forward + backward seconds, whole-step seconds)."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = ddp(**batch).loss
    if touch:
        loss = loss + _touch(ddp.module)
    loss.backward()
    middle = time.perf_counter()
    optimizer.step()
    end = time.perf_counter()
    return middle - start, end - start


def _worker(rank: int, port: int, a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    variants: dict[str, tuple[DistributedDataParallel, torch.optim.Optimizer, bool]] = {}
    for name, rate, find_unused, touch in (("rate0", 0.0, False, False), ("find_unused", a.rate, True, False),
                                           ("touch", a.rate, False, True)):
        ddp = DistributedDataParallel(_model(a, rate), find_unused_parameters=find_unused)
        variants[name] = (ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-5, weight_decay=0.01), touch)
    g = torch.Generator().manual_seed(1 + rank)  # each rank its own data, as in data parallelism
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}

    def run(k: str, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        return _step(variants[k][0], variants[k][1], batch, variants[k][2])

    for i in range(a.warmup + a.steps):
        batch = {"input_ids": torch.randint(5, 1000, (a.batch, a.seq), generator=g),
                 "labels": torch.randint(0, 2, (a.batch,), generator=g)}
        for name in variants:
            t = run(name, batch)
            if i >= a.warmup:
                times[name].append(t)
    # Same masks on both models, so both dropped the same layers at every step.
    assert layerdrop.state_of(variants["find_unused"][0].module).draws == layerdrop.state_of(
        variants["touch"][0].module).draws
    if rank == 0:
        med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
        print(f"# bench/ddp.py: 2 gloo ranks on CPU, BERT-shaped, {a.layers} layers, hidden {a.hidden}, "
              f"batch {a.batch} x {a.seq} tokens per rank, rate {a.rate}, {a.threads} thread(s) per rank, "
              f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores")
        print(f"{'variant':<12} {'fwd+bwd ms':>11} {'step ms':>9}   (medians of {a.steps} interleaved steps)")
        for name, (fb, whole) in med.items():
            print(f"{name:<12} {1000 * fb:11.1f} {1000 * whole:9.1f}")
        fb = med["touch"][0] / med["find_unused"][0]
        whole = med["touch"][1] / med["find_unused"][1]
        print(f"touch / find_unused: fwd+bwd {fb:.3f}x, whole step {whole:.3f}x")
        if a.json:
            from layerdrop.files import write_json

            write_json(a.json, {"script": "bench/ddp.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
                                "torch": torch.__version__, "settings": {k: v for k, v in vars(a).items()
                                                                         if k not in ("json", "quick")},
                                "median_s": {name: {"forward_backward": fb_, "step": whole_}
                                             for name, (fb_, whole_) in med.items()},
                                "touch_over_find_unused": {"forward_backward": fb, "step": whole}})
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--steps", type=int, help="timed training steps per variant (default 20, quick 6)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--quick", action="store_true", help="6 timed steps per variant")
    p.add_argument("--json", help="also write the figures to this file (from rank 0)")
    a = p.parse_args()
    a.steps = (6 if a.quick else 20) if a.steps is None else a.steps
    if a.steps < 1:
        p.error("--steps must be at least 1")
    mp.spawn(_worker, args=(_free_port(), a), nprocs=2)


if __name__ == "__main__":
    main()
