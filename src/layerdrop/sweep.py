"""``layerdrop sweep``: quality, latency and size at every depth, for each layer-choice strategy.

For a saved classifier the quality is accuracy; for a causal LM it is
perplexity. Each (strategy, depth) point runs the full model restricted to the
chosen layers, so nothing is copied and what is measured is exactly the pruned
model. Writes ``sweep.csv``, ``sweep.json``, ``sweep.md``, PNG plots of quality against
depth and against latency (Pareto front drawn), and a per-layer importance chart
from the strategies that score layers (search, block influence).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DataCollatorWithPadding

from . import data as datasets
from .arch import find_layers
from .core import only_layers
from .evaluate import DepthResult, accuracy, latency_ms, parameters_at, perplexity
from .files import write_json, write_text
from .models import Classifier, load_saved, local_folder
from .report import (
    markdown_table,
    pareto_front,
    plot_layer_importance,
    plot_quality_vs_depth,
    plot_quality_vs_latency,
)
from .learned import learned_rates
from .strategies import (
    STRATEGIES,
    Choice,
    choose,
    data_driven_choice,
    every_other_choice,
    search_all_depths,
    top_layers_choice,
)

__all__ = ["SweepConfig", "SweepResult", "prune_with_strategy", "run_sweep"]


@dataclass(frozen=True)
class SweepConfig:
    """What ``layerdrop sweep`` measures."""

    model: str
    """A saved model folder: a layerdrop classifier, or a causal LM."""
    data: str
    """A bundled dataset name or a CSV/TSV/JSONL file; its validation split is scored."""
    out: str
    """Output folder for sweep.csv, sweep.json, sweep.md and the plots."""
    strategies: str = "every-other"
    """Comma-separated strategies: every-other, search, block-influence, angular, top, data-driven."""
    rows: int = 500
    """Validation rows scored per point (and test rows for search's final check)."""
    batch_size: int = 32
    """Batch size of scoring and of the latency measurement."""
    max_length: int = 128
    """Tokens per example (classification) or per block (language model)."""
    latency_reps: int = 5
    """Timed forwards per point; the median is reported."""
    calibration_rows: int = 64
    """Rows of calibration data for the importance metrics."""
    search_budget: int = 200
    """Most score evaluations a search may spend."""
    seed: int = 0
    """Seed of the data splits."""
    progress: bool = True
    """Show a tqdm bar."""


@dataclass(frozen=True)
class SweepResult:
    """What a sweep wrote."""

    out: Path
    """The output folder."""
    metric: str
    """``accuracy`` or ``perplexity``."""
    points: dict[str, list[DepthResult]]
    """Results by strategy, one per depth."""
    table: str
    """The Markdown table."""


def _prepare(cfg: SweepConfig, model: torch.nn.Module, tokenizer: Any) -> tuple[str, Callable, Callable, list]:
    """The metric name, a validation scorer, a test scorer and calibration batches."""
    from .train import TrainConfig, encode_classification, lm_eval_blocks

    splits = datasets.load(cfg.data, seed=cfg.seed, label_column="label" if isinstance(model, Classifier) else None)
    valid = splits.valid.subset(range(min(cfg.rows, len(splits.valid))))
    test = splits.test.subset(range(min(cfg.rows, len(splits.test))))
    if isinstance(model, Classifier):
        tc = TrainConfig(task="classification", model="", data="", out="", max_length=cfg.max_length,
                         progress=False)
        rows = {name: encode_classification(tokenizer, split, tc, name)[0] for name, split in
                (("valid", valid), ("test", test))}
        collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")

        def make(name: str) -> Callable:
            return lambda m: accuracy(m, rows[name], collate, batch_size=cfg.batch_size)
        metric = "accuracy"
    else:
        rows = {}
        for name, split in (("valid", valid), ("test", test)):
            rows[name], collate = lm_eval_blocks(tokenizer, split.texts, cfg.max_length, name)

        def make(name: str) -> Callable:
            return lambda m: perplexity(m, rows[name], collate, batch_size=cfg.batch_size)
        metric = "perplexity"
    calib_rows = rows["valid"][: cfg.calibration_rows]
    calibration = [
        {k: v for k, v in collate(calib_rows[i:i + cfg.batch_size]).items() if k != "labels"}
        for i in range(0, len(calib_rows), cfg.batch_size)
    ]
    return metric, make("valid"), make("test"), calibration


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Measure every strategy at every depth; write the tables and plots."""
    names = [s.strip() for s in cfg.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"unknown strategy {unknown or cfg.strategies!r}; choose from {sorted(STRATEGIES)}")
    model = load_saved(cfg.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(local_folder(cfg.model))
    metric, score_valid, score_test, calibration = _prepare(cfg, model, tokenizer)
    num_layers = len(find_layers(model).layers)
    higher = metric == "accuracy"
    latency_batch = calibration[0]

    points: dict[str, list[DepthResult]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(names) * num_layers, desc="sweep", disable=not cfg.progress)
    importance: dict[str, tuple[float, ...]] = {}
    for name in names:
        points[name], records[name] = [], []
        searched = (search_all_depths(model, score_valid, budget=cfg.search_budget, higher_is_better=higher,
                                      test_score=score_test) if name == "search" else {})
        for depth in range(num_layers, 0, -1):
            choice: Choice = searched.get(depth) or choose(name, model, depth, batches=calibration)
            if choice.scores and name not in importance:
                importance[name] = choice.scores
            with only_layers(model, choice.kept):
                value = score_valid(model)
                ms = latency_ms(model, latency_batch, reps=cfg.latency_reps)
            points[name].append(DepthResult(depth, choice.kept, value, parameters_at(model, choice.kept), ms))
            records[name].append({"depth": depth, "record": choice.record,
                                  "scores": list(choice.scores) if choice.scores else None})
            bar.update()
    bar.close()

    out = Path(cfg.out)
    batch_shape = tuple(latency_batch["input_ids"].shape)
    rows = [[name, r.depth, " ".join(map(str, r.kept)), round(r.score, 6), r.parameters, round(r.latency_ms or 0, 3)]
            for name, results in points.items() for r in results]
    header = ["strategy", "depth", "kept", metric, "parameters", f"latency_ms_batch{batch_shape[0]}x{batch_shape[1]}"]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_text(out / "sweep.csv", buf.getvalue())
    front = set(pareto_front([(r[5], r[3]) for r in rows], higher_is_better=higher))
    md_rows = [[*r[:3], f"{100 * r[3]:.1f} %" if higher else f"{r[3]:.2f}", f"{r[4] / 1e6:.2f}M",
                f"{r[5]:.1f}", "★" if i in front else ""] for i, r in enumerate(rows)]
    table = markdown_table(["strategy", "depth", "kept", metric, "parameters", "ms / batch", "Pareto"], md_rows)
    write_text(out / "sweep.md", f"# layerdrop sweep of `{cfg.model}` on `{cfg.data}`\n\n"
               f"Latency: median of {cfg.latency_reps} eval forwards on a batch of {batch_shape[0]} x "
               f"{batch_shape[1]} tokens; ★ marks the Pareto front (quality against latency).\n\n{table}")
    write_json(out / "sweep.json", {"config": dataclasses.asdict(cfg), "metric": metric, "batch_shape": batch_shape,
                                    "points": {k: [dataclasses.asdict(r) for r in v] for k, v in points.items()},
                                    "records": records, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    plot_quality_vs_depth(points, metric, out / "quality_vs_depth.png", title=Path(cfg.model).name)
    plot_quality_vs_latency(points, metric, out / "quality_vs_latency.png", title=Path(cfg.model).name)
    if importance:
        plot_layer_importance(importance, out / "layer_importance.png", title=Path(cfg.model).name)
    return SweepResult(out=out, metric=metric, points=points, table=table)


def prune_with_strategy(model_path: str, out: str, depth: int, strategy: str, *, data: str | None = None,
                        rows: int = 500, search_budget: int = 200, seed: int = 0) -> dict[str, Any]:
    """Choose ``depth`` layers with ``strategy`` (on ``data`` if given), then write the pruned model.

    The record in ``layerdrop.json`` gets the strategy's own record and, with data,
    the validation (and, for search, test) quality of the kept layers.
    """
    from .prune import prune_saved

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if STRATEGIES[strategy].needs_data and data is None:
        raise ValueError(f"strategy {strategy!r} needs data: pass --data (a dataset name or file)")
    extra: dict[str, Any] = {"strategy": strategy}
    model = None
    if data is not None:
        model = load_saved(model_path).eval()
        tokenizer = AutoTokenizer.from_pretrained(local_folder(model_path))
        cfg = SweepConfig(model=model_path, data=data, out=out, rows=rows, search_budget=search_budget, seed=seed)
        metric, score_valid, score_test, calibration = _prepare(cfg, model, tokenizer)
        higher = metric == "accuracy"
        kw: dict[str, Any] = {"budget": search_budget, "higher_is_better": higher, "test_score": score_test} \
            if strategy == "search" else {}
        choice = choose(strategy, model, depth, score=score_valid, batches=calibration, **kw)
        with only_layers(model, choice.kept):
            extra.update({"strategy_record": choice.record, f"validation_{metric}": score_valid(model)})
        keep = list(choice.kept)
    else:  # every-other, top or data-driven: the config is enough
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(local_folder(model_path))
        if strategy == "data-driven":
            picked = data_driven_choice(learned_rates(config), depth)
        else:
            picked = (every_other_choice if strategy == "every-other" else top_layers_choice)(
                config.num_hidden_layers, depth)
        extra["strategy_record"] = picked.record
        keep = list(picked.kept)
    return prune_saved(model_path, out, keep=keep, extra=extra, model=model)
