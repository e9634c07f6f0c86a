"""What ``layerdrop distill``'s teacher cache saves: the teacher run once per training row against once per step.

Distils TEACHER into its every-other cut to --depth for --steps steps twice, with the teacher's
logits computed once (``--cache-teacher``, the default) and with the teacher run each step
(``--no-cache-teacher``), and prints the seconds of each part. Results: docs/benchmarks.md.

    python bench/teacher_cache.py TEACHER --data DATASET [--depth 3] [--steps 60] [--rows 2000] [--freeze-embeddings] [--out runs/teacher-cache]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from layerdrop.args import DistillConfig, build
from layerdrop.distill import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", help="a trained classifier folder")
    p.add_argument("--data", required=True)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps per setting")
    p.add_argument("--rows", type=int, default=2000, help="training rows (the cache covers them all)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--freeze-embeddings", action="store_true", help="as the e5-small runs train")
    p.add_argument("--out", default="runs/teacher-cache")
    a = p.parse_args()
    results = {}
    for cache in (True, False):
        out = Path(a.out) / ("cached" if cache else "live")
        shutil.rmtree(out, ignore_errors=True)  # each measurement from scratch
        cfg = build(DistillConfig, dict(teacher=a.teacher, data=a.data, out=str(out), depth=a.depth, max_steps=a.steps,
                                        batch_size=a.batch, max_length=a.length, train_rows=a.rows, evaluate=False,
                                        progress=False, cache_teacher=cache, save_steps=10**9, logging_steps=10**9,
                                        freeze_embeddings=a.freeze_embeddings))
        result = run(cfg)
        train = float(json.loads((result.model_dir / "layerdrop.json").read_text())["train_seconds"])
        results[cache] = (result.cache_seconds, train)
    print(f"# bench/teacher_cache.py: {a.teacher} cut to {a.depth} layers, {a.rows} rows, {a.steps} steps of "
          f"{a.batch} x {a.length} tokens, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}")
    print("| teacher | computing its logits (s) | per step (s) | one epoch of these rows (s) |")
    print("|---|---|---|---|")
    steps_per_epoch = -(-a.rows // a.batch)
    for cache in (True, False):
        once, train = results[cache]
        step = train / a.steps
        print(f"| {'logits computed once' if cache else 'run each step'} | {once:.1f} | {step:.3f} | "
              f"{step * steps_per_epoch:.0f} |")


if __name__ == "__main__":
    main()
