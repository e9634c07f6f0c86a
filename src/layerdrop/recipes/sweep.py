"""``layerdrop sweep``: quality, latency and size at every depth, for each layer-choice strategy.

For a saved classifier the quality is accuracy; for a question-answering model
F1 (on a SQuAD-format file); for a causal LM perplexity. Each (strategy, depth) point
runs the full model restricted to the chosen layers, so nothing is copied and what is
measured is exactly the pruned model; ``--dtype`` runs each point at several precisions
(a converted copy of the model per precision, :mod:`layerdrop.cut.precision`). Writes
``sweep.csv``, ``sweep.json``, ``sweep.md``, PNG plots of quality against
depth and against latency (Pareto front drawn), and a per-layer importance chart
from the strategies that score layers (search, block influence).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from layerdrop.config.recipes import SweepConfig
from layerdrop.core.apply import only_layers
from layerdrop.core.arch import find_layers
from layerdrop.cut.precision import at_precision
from layerdrop.cut.precision import lookup as lookup_precision
from layerdrop.cut.strategies import STRATEGIES, Choice, choose, lookup, own_strategy, search_all_depths
from layerdrop.errors import InputError
from layerdrop.evaluation.measure import (
    DepthResult,
    higher_is_better,
    interleaved_latency_ms,
    parameters_at,
    validation_scorers,
)
from layerdrop.evaluation.report import (
    format_score,
    markdown_table,
    pareto_front,
    plot_layer_importance,
    plot_quality_vs_depth,
    plot_quality_vs_latency,
)
from layerdrop.evaluation.words import Language, say
from layerdrop.files import write_json, write_text
from layerdrop.models.loading import from_pretrained, load_saved, local_folder

__all__ = ["SweepConfig", "SweepResult", "read_points", "run_sweep", "tables"]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep wrote."""

    out: Path
    """The output folder."""
    metric: str
    """``accuracy``, ``f1`` or ``perplexity``."""
    points: dict[str, list[DepthResult]]
    """Results by strategy, one per depth."""
    table: str
    """The Markdown table."""


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Measure every strategy at every depth; write the tables and plots."""
    names = [s.strip() for s in cfg.strategies.split(",") if s.strip()]
    if cfg.strategies.strip() and not names:
        raise InputError(f"no strategy in {cfg.strategies!r}; choose from {', '.join(STRATEGIES)}")
    for name in names:
        lookup(name)
    if cfg.split not in ("validation", "test"):
        raise InputError(f"unknown split {cfg.split!r}; choose validation or test")
    precisions = [lookup_precision(p.strip()).name for p in cfg.dtype.split(",") if p.strip()]
    if not precisions or len(set(precisions)) < len(precisions):
        raise InputError(f"--dtype {cfg.dtype!r}: give one or more different precisions, e.g. float32,bfloat16,int8")
    model = load_saved(cfg.model).eval()
    names = names or [own_strategy(model)]  # none named: the layers its cuts use
    tokenizer = from_pretrained(AutoTokenizer, local_folder(cfg.model))
    scorers = validation_scorers(model, tokenizer, cfg.data, rows=cfg.rows, batch_size=cfg.batch_size,
                                 max_length=cfg.max_length, calibration_rows=cfg.calibration_rows, seed=cfg.seed)
    metric, score_valid, score_test, calibration = scorers.metric, scorers.valid, scorers.test, scorers.calibration
    score_point = score_test if cfg.split == "test" else score_valid  # choices are made on validation rows
    num_layers = len(find_layers(model).layers)
    higher = scorers.higher_is_better
    latency_batch = calibration[0]

    at = {p: at_precision(model, p).eval() for p in precisions}  # float32: the model itself

    def series(name: str, precision: str) -> str:  # float32 points keep the strategy's name, as before
        return name if precision == "float32" else f"{name} {precision}"

    points: dict[str, list[DepthResult]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(names) * num_layers * len(precisions), desc="sweep", disable=not cfg.progress)
    importance: dict[str, tuple[float, ...]] = {}
    for name in names:
        records[name] = []
        points.update({series(name, p): [] for p in precisions})
        searched = (search_all_depths(model, score_valid, budget=cfg.search_budget, higher_is_better=higher,
                                      test_score=score_test) if name == "search" else {})
        for depth in range(num_layers, 0, -1):
            choice: Choice = searched.get(depth) or choose(name, model, depth, batches=calibration)
            if choice.scores and name not in importance:
                importance[name] = choice.scores
            for precision, running in at.items():
                with only_layers(running, choice.kept):
                    value = score_point(running)
                points[series(name, precision)].append(DepthResult(
                    depth, choice.kept, value, parameters_at(model, choice.kept), None, precision))
                bar.update()
            records[name].append({"depth": depth, "record": choice.record,
                                  "scores": list(choice.scores) if choice.scores else None})
    bar.close()
    flat = [(key, i, r) for key, results in points.items() for i, r in enumerate(results)]
    timed = interleaved_latency_ms([(at[r.precision], r.kept) for _, _, r in flat], latency_batch, cfg.latency_reps)
    for (key, i, r), ms in zip(flat, timed, strict=True):
        points[key][i] = dataclasses.replace(r, latency_ms=ms)

    out = Path(cfg.out)
    batch_shape = tuple(latency_batch["input_ids"].shape)
    rows = [[name.split(" ")[0], r.depth, " ".join(map(str, r.kept)), round(r.score, 6), r.parameters,
             round(r.latency_ms or 0, 3), r.precision] for name, results in points.items() for r in results]
    header = ["strategy", "depth", "kept", metric, "parameters", f"latency_ms_batch{batch_shape[0]}x{batch_shape[1]}",
              "precision"]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_text(out / "sweep.csv", buf.getvalue())
    table = tables(points, metric)
    write_text(out / "sweep.md", f"# layerdrop sweep of `{cfg.model}` on `{cfg.data}` ({cfg.split} split)\n\n"
               f"Latency: median of {cfg.latency_reps} eval forwards, every point timed in turn, on a batch of "
               f"{batch_shape[0]} x {batch_shape[1]} tokens; ★ marks the Pareto front (quality against latency)."
               f"\n\n{table}")
    write_json(out / "sweep.json", {"config": dataclasses.asdict(cfg), "metric": metric, "batch_shape": batch_shape,
                                    "threads": torch.get_num_threads(),
                                    "points": {k: [dataclasses.asdict(r) for r in v] for k, v in points.items()},
                                    "records": records, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    plot_quality_vs_depth(points, metric, out / "quality_vs_depth.png", title=Path(cfg.model).name)
    plot_quality_vs_latency(points, metric, out / "quality_vs_latency.png", title=Path(cfg.model).name,
                            overall=len(precisions) > 1)
    if importance:
        plot_layer_importance(importance, out / "layer_importance.png", title=Path(cfg.model).name)
    return SweepResult(out=out, metric=metric, points=points, table=table)


def tables(points: dict[str, list[DepthResult]], metric: str, language: Language = "en") -> str:
    """The sweep's Markdown table: one row per strategy (its name set as code, in every language) and depth, ★ on
    the Pareto front of quality against latency."""
    flat = [(name, r) for name, results in points.items() for r in results]
    front = set(pareto_front([(r.latency_ms or 0.0, r.score) for _, r in flat],
                             higher_is_better=higher_is_better(metric)))
    precision = any(r.precision != "float32" for _, r in flat)  # a column only when there is a choice
    return markdown_table([say(h, language) for h in ("strategy", *(["precision"] if precision else []), "depth",
                                                      "kept", metric, "parameters", "ms / batch", "Pareto")],
                          [[f"`{name.split(' ')[0]}`", *([r.precision] if precision else []), r.depth,
                            " ".join(map(str, r.kept)), format_score(r.score, metric), f"{r.parameters / 1e6:.2f}M",
                            f"{r.latency_ms or 0:.1f}", "★" if i in front else ""] for i, (name, r) in enumerate(flat)])


def read_points(path: str | Path) -> tuple[dict[str, list[DepthResult]], str, str]:
    """The points, metric and plot title of a ``sweep.json`` (the file or its run folder)."""
    path = Path(path)
    data = json.loads((path / "sweep.json" if path.is_dir() else path).read_text())
    points = {name: [DepthResult(**{**r, "kept": tuple(r["kept"])}) for r in results]
              for name, results in data["points"].items()}
    return points, data["metric"], Path(data["config"]["model"]).name
