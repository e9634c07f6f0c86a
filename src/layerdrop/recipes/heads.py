"""``layerdrop heads``: fit each served depth its own classifier head; keep it where it beats the shared one.

1. The depths: those the model was trained to serve (``layerdrop train --depths``) below the full one, each
   with the layers it recorded; the full depth keeps the head it was trained with.
2. The rows: the model's training and validation rows, split as its record says (explicit options win).
3. Each depth's head: a logistic regression on that depth's pooled features, every other weight frozen
   (:func:`layerdrop.training.heads.fit_depth_heads`).
4. Each is scored on the validation rows beside the shared head, and kept where it is better (``--keep``).
5. The kept heads are written into the model (``depth_heads.safetensors``), where views, cuts, serve and
   early exit pick them by depth; a calibrated early exit is removed when they change (it scored the old
   heads: run ``layerdrop exits`` again); heads.md and heads.json go to ``--out``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer

from layerdrop.config.args import DataArgs
from layerdrop.config.recipes import HeadsConfig
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import layers_at, parse_depths, recorded_depths
from layerdrop.errors import InputError
from layerdrop.evaluation.report import markdown_table
from layerdrop.exits.record import record_in_folder
from layerdrop.files import write_json, write_text
from layerdrop.models.classifier import heads_key
from layerdrop.models.loading import from_pretrained, local_folder, read_meta, save_depth_heads
from layerdrop.training.heads import DepthHead, fit_depth_heads

from .steps import encoder, saved_classifier, splits

__all__ = ["DepthHead", "HeadsConfig", "HeadsResult", "run_heads"]


@dataclass(frozen=True)
class HeadsResult:
    """What ``layerdrop heads`` fitted and wrote."""

    out: Path
    """The output folder."""
    depths: tuple[DepthHead, ...]
    """Each depth, shallowest first."""
    seconds: float
    """Wall time of the features and the fits."""
    table: str
    """The Markdown table of heads.md."""
    exits_dropped: bool = False
    """Whether the model's calibrated early exit was removed (its thresholds scored the old heads)."""


def _same(before: nn.ModuleDict, after: dict[str, nn.Module], key: str) -> bool:
    """Whether the head for ``key`` is the same (or absent) before and after."""
    old, new = before[key] if key in before else None, after.get(key)
    if old is None or new is None:
        return old is new
    return all(map(torch.equal, old.parameters(), new.parameters()))


def run_heads(cfg: HeadsConfig, log: Callable[[str], None] = lambda _: None) -> HeadsResult:
    """Fit, choose and record a head for each served depth of ``cfg.model``."""
    # 1. the settings, the model and its depths
    if cfg.l2 < 0 or cfg.train_rows < 0 or cfg.max_length < 0 or cfg.batch_size < 1:
        raise InputError("--l2, --train-rows and --max-length must be 0 or more, --batch-size at least 1")
    if cfg.keep not in ("better", "all"):
        raise InputError(f"--keep {cfg.keep!r}: choose better or all")
    model = saved_classifier(cfg.model, record=cfg.record, what="the heads",
                             needs="depth heads are fitted for one trained by layerdrop train classification "
                                   "--depths 6,4,3")
    config = model.config
    num_layers = len(find_layers(model).layers)
    named = parse_depths(cfg.depths, num_layers) if cfg.depths else tuple(recorded_depths(config))
    if num_layers in named and cfg.depths:
        raise InputError(f"--depths {cfg.depths}: the full depth ({num_layers}) keeps the head it was trained with; "
                         "name only shallower depths")
    kept = {d: layers_at(config, num_layers, d) for d in sorted(named) if d < num_layers}
    if not kept:
        raise InputError(f"{cfg.model} records no depths below its full {num_layers}: train it with layerdrop "
                         "train --depths 6,4,3, or name the depths with --depths")

    # 2. its training and validation rows, as its record split them
    folder = local_folder(cfg.model)
    meta = read_meta(folder)
    trained = meta.get("trained_with") or {}
    data = cfg.data or trained.get("data")
    if not data:
        raise InputError(f"{cfg.model} does not record the data it was trained on: pass --data")
    inputs = DataArgs(max_length=cfg.max_length or trained.get("max_length") or 128,
                      train_rows=cfg.train_rows or trained.get("train_rows"), split_seed=trained.get("split_seed"))
    train_split, valid_split, _ = splits("classification", data, int(trained.get("seed", 0)), inputs)
    tokenizer = from_pretrained(AutoTokenizer, folder)
    encode, collate = encoder("classification", tokenizer, inputs, cfg.progress)
    train_rows, _ = encode(train_split, "train")
    valid_rows, _ = encode(valid_split, "valid")

    # 3. each depth's head, fitted on the training rows; 4. scored on the validation rows beside the shared head
    start = time.time()
    log(f"fitting heads for depths {', '.join(map(str, kept))} on {len(train_rows)} training rows")
    results, chosen = fit_depth_heads(model, train_rows, valid_rows, collate, kept, l2=cfg.l2, keep=cfg.keep,
                                      batch_size=cfg.batch_size)
    seconds = time.time() - start

    # 5. the kept heads written into the model (a calibrated early exit, which scored the old ones, removed)
    exits_dropped = False
    if cfg.record:
        heads = {key: head for key, head in model.heads.items() if key not in {heads_key(r.layers) for r in results}}
        heads.update(chosen)
        moved = [r.depth for r in results if not _same(model.heads, heads, heads_key(r.layers))]
        model.heads = nn.ModuleDict(heads).eval()
        # the scores training recorded at a depth whose head changed are stale
        metrics = {k: v for k, v in (meta.get("metrics") or {}).items()
                   if not any(k.endswith(f"_at_{d}") for d in moved)}
        save_depth_heads(model, folder, {**meta, "metrics": metrics,
                                         "depth_heads_fit": [dataclasses.asdict(r) for r in results]})
        if moved:  # a calibrated early exit's thresholds scored the old heads
            exits_dropped = record_in_folder(folder, None)
    out = Path(cfg.out)
    table = markdown_table(
        ["depth", "layers", "validation, shared head", "validation, own head", "training, own head", "kept"],
        [[r.depth, " ".join(map(str, r.layers)), f"{100 * r.shared:.1f} %", f"{100 * r.own:.1f} %",
          f"{100 * r.train:.1f} %", "yes" if r.kept else "no"] for r in results])
    write_text(out / "heads.md", f"# layerdrop heads of `{cfg.model}` on `{data}`\n\n{table}\n"
               f"{len(train_rows)} training rows, {len(valid_rows)} validation rows, L2 {cfg.l2:g}, "
               f"{seconds:.0f} s.\n")
    write_json(out / "heads.json", {"model": cfg.model, "data": data, "l2": cfg.l2, "keep": cfg.keep,
                                    "seconds": round(seconds, 1), "train_rows": len(train_rows),
                                    "valid_rows": len(valid_rows),
                                    "depths": [dataclasses.asdict(r) for r in results]})
    return HeadsResult(out, tuple(results), seconds, table, exits_dropped)
