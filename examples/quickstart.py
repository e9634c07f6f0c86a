"""End-to-end LayerDrop in about three minutes on 2 CPU cores, offline, on real data and a real model.

apply -> short fine-tuning on Rotten Tomatoes -> accuracy at several depths ->
prune -> save -> reload with plain transformers (no layerdrop import needed).

    python examples/quickstart.py [--rows 3000] [--epochs 2] [--out out/quickstart]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

import layerdrop
from layerdrop.data import load
from layerdrop.models.loading import resolve


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)


def batches(texts, labels, tok, size, shuffle_seed=None):
    order = list(range(len(texts)))
    if shuffle_seed is not None:
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=64, return_tensors="pt")
        yield enc, torch.tensor([labels[j] for j in idx])


@torch.no_grad()
def accuracy(encoder, head, data, tok) -> float:
    encoder.eval()
    correct = 0
    for enc, y in batches(data.texts, data.labels, tok, 128):
        pooled = mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"])
        correct += int((head(pooled).argmax(-1) == y).sum())
    return correct / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3000, help="training rows used")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rate", type=float, default=0.2, help="LayerDrop rate")
    p.add_argument("--out", type=Path, default=Path("out/quickstart"))
    a = p.parse_args()
    torch.manual_seed(0)
    start = time.time()

    splits = load("rotten-tomatoes", seed=0)
    train = splits.train.subset(range(min(a.rows, len(splits.train))))
    valid = splits.valid.subset(range(min(1000, len(splits.valid))))
    path, _ = resolve("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    head = nn.Linear(encoder.config.hidden_size, 2)

    layerdrop.apply(encoder, rate=a.rate)  # the one line
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    print(f"fine-tuning MiniLM-L6 with LayerDrop {a.rate} on {len(train)} Rotten Tomatoes reviews ...")
    for epoch in range(a.epochs):
        encoder.train()
        layers_run = []
        for enc, y in batches(train.texts, train.labels, tok, 32, shuffle_seed=epoch):
            pooled = mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"])
            loss = nn.functional.cross_entropy(head(pooled), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            layers_run.append(sum(encoder.layerdrop_state.keep))
        print(f"  epoch {epoch + 1}: last loss {loss.item():.3f}, "
              f"layers run per step {sum(layers_run) / len(layers_run):.2f} of 6")

    print("validation accuracy by depth (every-other layers, no retraining):")
    for depth in (6, 4, 3, 2):
        keep = layerdrop.every_other(6, depth)
        with layerdrop.only_layers(encoder, keep):
            print(f"  depth {depth} {list(keep)!s:<20} {100 * accuracy(encoder, head, valid, tok):5.1f} %")

    small = layerdrop.prune(encoder, depth=3)
    out = a.out / "minilm-l6-depth3"
    small.save_pretrained(out)
    tok.save_pretrained(out)
    torch.save(head.state_dict(), out / "head.pt")

    reloaded = AutoModel.from_pretrained(out)  # plain transformers
    with layerdrop.only_layers(encoder, layerdrop.every_other(6, 3)):
        full_at_3 = accuracy(encoder, head, valid, tok)
    acc = accuracy(reloaded, head, valid, tok)
    n_full = sum(p.numel() for p in encoder.parameters())
    n_small = sum(p.numel() for p in reloaded.parameters())
    assert abs(acc - full_at_3) < 1e-9, "the reloaded checkpoint must behave like the sub-network"
    print(f"pruned to 3 layers: {n_full / 1e6:.1f}M -> {n_small / 1e6:.1f}M parameters, "
          f"reloaded with AutoModel: {100 * acc:.1f} % (same as the sub-network)")
    print(f"saved to {out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
