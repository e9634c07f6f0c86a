"""Quality-bar levers: one Rotten Tomatoes run (or, with ``--task lm``, one KJV LM run) of the earlier demo's
recipe (``layerdrop demo --no-elastic --lm-steps 500``), with changes.

Trains MiniLM-L6 exactly as ``layerdrop demo --full --no-elastic`` trains its LayerDrop run (all training
rows, 2 epochs, batch 32, learning rate 5e-5, head 1e-3, 64 tokens, mean pooling, rate 0.5,
self-distilled), or with ``--size demo`` as plain ``layerdrop demo --no-elastic`` does (6,000 rows, 1,000
scored rows), with any ``TrainConfig`` setting changed by ``name=value`` (flat names such as
``lr`` or ``train_rows``; ``none`` for an optional one), then prunes the result every-other to
each depth and scores it as the demo does: on the test split, or with ``--split valid`` on the
validation split, the one to choose settings on.
With ``--task lm`` it trains the demo's LayerDrop language model (gpt2-tiny from scratch on the
KJV, ``--size`` choosing its steps) and scores perplexity on the KJV test or validation paragraphs.
Prints one line of scores and writes ``OUT/sweep.json`` (with the optimizer steps and the loss
curve from the final checkpoint's log). A finished run in ``OUT/rt`` is
reused and an unfinished one resumed, so re-running the same command continues it.

    python experiments/levers.py OUT [name=value ...] [--task classification|lm] [--size full|demo]
                                 [--split test|valid] [--threads N]

    python experiments/levers.py runs/levers/every-other pattern=every-other
    python experiments/levers.py runs/levers/every-other-3ep pattern=every-other epochs=3
    # a reference: MiniLM-L6 cut to 3 layers first (layerdrop prune minilm-l6 --depth 3), no LayerDrop
    python experiments/levers.py runs/levers/ref3-3ep model=runs/minilm-l6-depth3 rate=0 epochs=3
    python experiments/levers.py runs/levers/lm-rate0.2 rate=0.2 --task lm --size demo --split valid

Results: docs/results.md, "The quality bar".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import types
import typing
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from layerdrop.config.args import TrainConfig
from layerdrop.evaluation.measure import depth_sweep
from layerdrop.files import write_json
from layerdrop.models.loading import from_pretrained, load_classifier, read_meta
from layerdrop.recipes.demo import DemoConfig, _lm_config, _lm_test, _rt_config, _rt_test, _sizes
from layerdrop.recipes.train import run_or_reuse
from layerdrop.training.checkpoints import last_complete_checkpoint


def _convert(kind: typing.Any, value: str) -> typing.Any:
    """``value`` as ``kind``: bool, int, float or str, each possibly ``| None`` (written ``none``)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if type(None) in options and value.lower() == "none":
        return None
    kind = next(k for k in options if k is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            raise SystemExit(f"{value!r}: expected one of {typing.get_args(kind)}")
        return value
    if kind is bool:
        return value.lower() in ("1", "true", "yes")
    return kind(value)


def _parse(pairs: list[str]) -> dict[str, typing.Any]:
    """``name=value`` pairs, each value converted to its ``TrainConfig`` setting's type."""
    top = typing.get_type_hints(TrainConfig)
    kinds = {name: typing.get_type_hints(top[group])[name] if group else top[name]  # each flat setting's type
             for name, group in TrainConfig.leaf_names().items()}
    changes: dict[str, typing.Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in kinds:
            raise SystemExit(f"{pair!r}: expected name=value with a TrainConfig setting, e.g. pattern=every-other")
        changes[name] = _convert(kinds[name], value)
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("changes", nargs="*", help="TrainConfig fields to change, as name=value")
    parser.add_argument("--task", choices=("classification", "lm"), default="classification",
                        help="the demo's MiniLM-L6 on Rotten Tomatoes, or its KJV language model")
    parser.add_argument("--size", choices=("full", "demo"), default="full", help="the --full run's sizes or the demo's")
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="the split scored")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    changes = _parse(args.changes)
    demo = DemoConfig(full=args.size == "full", elastic=False, lm_steps=500)  # the recipe these levers measured
    sizes = _sizes(demo)
    start = time.time()
    if args.task == "lm":
        rate = changes.pop("rate", demo.lm_rate)
        cfg = _lm_config(dataclasses.replace(demo, lm_rate=rate), sizes, args.out / "lm", rate > 0).replace(**changes)
        model_dir = run_or_reuse(cfg)
        score, _ = _lm_test(demo, cfg, model_dir, split=args.split)
        model = from_pretrained(AutoModelForCausalLM, model_dir)
    else:
        model, rate = changes.pop("model", "minilm-l6"), changes.pop("rate", demo.rt_rate)
        cfg = _rt_config(dataclasses.replace(demo, rt_rate=rate), sizes, args.out / "rt", model, rate > 0
                         ).replace(**changes)
        model_dir = run_or_reuse(cfg)
        score, _ = _rt_test(demo, sizes, cfg, model_dir, split=args.split)
        model = load_classifier(model_dir)
    results = depth_sweep(model, score, progress=False)
    rows = [{"depth": r.depth, "kept": list(r.kept), "score": r.score} for r in results]
    meta = read_meta(model_dir)
    last = last_complete_checkpoint(model_dir.parent / "checkpoints")  # the final one: its log is the whole run's
    state = json.loads((last / "trainer_state.json").read_text()) if last else {}
    steps = state.get("global_step")
    write_json(args.out / "sweep.json", {"config": cfg.flat(), "task": args.task, "size": args.size,
                                         "split": args.split, "minutes": (time.time() - start) / 60,
                                         "train_seconds": meta.get("train_seconds"), "steps": steps,
                                         "loss_curve": [[h["step"], h["loss"]] for h in state.get("log_history", [])
                                                        if "loss" in h],
                                         "rows": rows})
    scale = 1 if args.task == "lm" else 100  # perplexity as is, accuracy in %
    print(" ".join(f"{r['depth']}:{scale * r['score']:.1f}" for r in rows)
          + (f"  (training {meta['train_seconds']:.0f} s)" if meta.get("train_seconds") else ""))


if __name__ == "__main__":
    main()
