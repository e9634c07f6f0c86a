"""What ``--freeze-embeddings`` saves per training step of e5-small (250k-piece vocabulary).

Times forward + backward and the AdamW update of the bundled e5-small on one batch, with its
word embeddings trained and frozen; prints the medians. Results: docs/benchmarks.md.

    python bench/freeze_embeddings.py [--quick] [--steps 5] [--batch 32] [--length 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModel

from layerdrop.models.loading import local_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="timed steps per setting, one more warms up (default 5, quick 2)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="2 timed steps per setting")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    a = p.parse_args()
    a.steps = (2 if a.quick else 5) if a.steps is None else a.steps
    if a.steps < 1:
        p.error("--steps must be at least 1")
    result = {}
    model = AutoModel.from_pretrained(local_folder("e5-small"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 250_000, (a.batch, a.length), generator=g)  # (B, T)
    embeddings = model.get_input_embeddings().weight
    print(f"# bench/freeze_embeddings.py: e5-small, batch {a.batch} x {a.length} tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}, median of {a.steps}")
    print("| word embeddings | trained parameters | forward + backward (s) | AdamW step (s) | step (s) |")
    print("|---|---|---|---|---|")
    for frozen in (False, True):
        embeddings.requires_grad_(not frozen)
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        passes, updates = [], []
        for step in range(a.steps + 1):
            t0 = time.perf_counter()
            model(input_ids=ids).last_hidden_state.mean().backward()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad()
            t2 = time.perf_counter()
            if step:  # the first step allocates AdamW's state
                passes.append(t1 - t0)
                updates.append(t2 - t1)
        fb, up = statistics.median(passes), statistics.median(updates)
        print(f"| {'frozen' if frozen else 'trained'} | {sum(q.numel() for q in params) / 1e6:.1f}M | "
              f"{fb:.2f} | {up:.2f} | {fb + up:.2f} |")
        result["frozen" if frozen else "trained"] = {"trained_parameters": sum(q.numel() for q in params),
                                                     "forward_backward_s": fb, "adamw_s": up}
    if a.json:
        from layerdrop.files import write_json

        write_json(a.json, {"script": "bench/freeze_embeddings.py", "quick": a.quick, "steps": a.steps,
                            "batch": [a.batch, a.length], "threads": torch.get_num_threads(),
                            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **result})


if __name__ == "__main__":
    main()
