"""What ``layerdrop distill``'s teacher cache saves: the teacher run once per training row against once per step.

Distils TEACHER into its every-other cut to --depth for --steps steps twice, with the teacher's
logits computed once (``--cache-teacher``, the default) and with the teacher run each step
(``--no-cache-teacher``), and prints the seconds of each part. Results: docs/benchmarks.md.

    python bench/teacher_cache.py [TEACHER] [--data DATASET] [--quick] [--json out.json] [--depth 3] [--steps 60]
                                  [--rows 1600] [--freeze-embeddings] [--out runs/teacher-cache]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from layerdrop.config.args import DistillConfig, TrainConfig, build
from layerdrop.recipes.distill import run
from layerdrop.recipes.train import run as train_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", nargs="?", help="a trained classifier folder (default: MiniLM-L6 trained here for "
                   "20 steps on --data: what the cache saves does not depend on the teacher's quality)")
    p.add_argument("--data", default="rotten-tomatoes")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps per setting")
    p.add_argument("--rows", type=int, default=1600,
                   help="training rows (the cache covers them all); fewer than --steps x --batch, or distill does "
                        "not cache")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--freeze-embeddings", action="store_true", help="as the e5-small runs train")
    p.add_argument("--out", default="runs/teacher-cache")
    p.add_argument("--quick", action="store_true", help="15 steps over 240 rows (each row seen twice)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    a = p.parse_args()
    if a.quick:
        a.steps, a.rows = min(a.steps, 15), min(a.rows, 240)
    if a.steps * a.batch <= a.rows:
        p.error(f"{a.steps} steps of {a.batch} rows do not see the {a.rows} rows more than once, and distill then "
                "runs the teacher every step in both settings: raise --steps or lower --rows")
    if a.teacher is None:
        teacher = Path(a.out) / "teacher"
        if not (teacher / "model").is_dir():
            train_model(build(TrainConfig, dict(task="classification", model="minilm-l6", data=a.data, out=str(teacher),
                                          max_steps=20, batch_size=16, max_length=a.length, train_rows=320,
                                          evaluate=False, progress=False, rate=0.0)))
        a.teacher = str(teacher / "model")
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
          f"{a.batch} x {a.length} tokens, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.machine()}")
    print("| teacher | computing its logits (s) | per step (s) | one epoch of these rows (s) |")
    print("|---|---|---|---|")
    steps_per_epoch = -(-a.rows // a.batch)
    for cache in (True, False):
        once, train = results[cache]
        step = train / a.steps
        print(f"| {'logits computed once' if cache else 'run each step'} | {once:.1f} | {step:.3f} | "
              f"{step * steps_per_epoch:.0f} |")
    if a.json:
        from layerdrop.files import write_json

        write_json(a.json, {"script": "bench/teacher_cache.py", "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
                            "torch": torch.__version__, "threads": torch.get_num_threads(), "teacher": a.teacher,
                            "depth": a.depth, "rows": a.rows, "steps": a.steps, "batch": [a.batch, a.length],
                            **{("cached" if cache else "live"): {"teacher_logits_s": once,
                                                                 "per_step_s": train / a.steps}
                               for cache, (once, train) in results.items()}})


if __name__ == "__main__":
    main()
