"""Tables and plots of quality against depth and latency, and of the masks a run drew: Markdown, CSV-ready rows and PNG.

Plots need matplotlib (``pip install layerdrop[plot]``); everything else is plain text.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerdrop.files import write_bytes

from .measure import DepthResult, higher_is_better

if TYPE_CHECKING:
    from layerdrop.core.masklog import MaskLog

__all__ = [
    "depth_table",
    "cost_table",
    "format_score",
    "markdown_table",
    "pareto_front",
    "plot_exit_depths",
    "plot_layer_importance",
    "plot_loss_curves",
    "plot_masks",
    "plot_quality_vs_cost",
    "plot_quality_vs_depth",
    "plot_quality_vs_latency",
]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_PERCENT = ("accuracy", "f1", "exact_match")
"""Metrics that are fractions, shown as percentages."""


def format_score(value: float, metric: str) -> str:
    """``value`` as tables show ``metric``: a fraction as a percentage, anything else to 2 decimals.

    >>> format_score(0.8312, "accuracy"), format_score(41.234, "perplexity")
    ('83.1 %', '41.23')
    """
    return f"{100 * value:.1f} %" if metric in _PERCENT else f"{value:.2f}"


def depth_table(series: Mapping[str, Sequence[DepthResult]], metric: str) -> str:
    """One row per depth, one column per series (e.g. with and without LayerDrop)."""
    depths = sorted({r.depth for results in series.values() for r in results}, reverse=True)
    by = {name: {r.depth: r for r in results} for name, results in series.items()}
    rows = []
    for d in depths:
        any_result = next(by[n][d] for n in by if d in by[n])
        row: list[Any] = [d, ", ".join(map(str, any_result.kept))]
        row += [format_score(by[n][d].score, metric) if d in by[n] else "–" for n in series]
        rows.append(row)
    return markdown_table(["depth", "layers kept", *[f"{n} ({metric})" for n in series]], rows)


def cost_table(series: Mapping[str, Sequence[DepthResult]], metric: str, timed: str) -> str:
    """Quality at each depth beside what the depth costs: parameters, and the latency measured on
    series ``timed`` (ms per batch and relative to its full depth). One quality column per series."""
    depths = sorted({r.depth for results in series.values() for r in results}, reverse=True)
    by = {name: {r.depth: r for r in results} for name, results in series.items()}
    clock = by[timed]
    full_ms = clock[max(clock)].latency_ms
    rows = []
    for d in depths:
        r = clock[d]
        assert r.latency_ms is not None and full_ms is not None  # ``timed`` names a series timed at every depth
        rows.append([d, ", ".join(map(str, r.kept)), f"{r.parameters / 1e6:.1f}M", f"{r.latency_ms:.1f}",
                     f"{r.latency_ms / full_ms:.2f}×",
                     *[format_score(by[n][d].score, metric) if d in by[n] else "–" for n in series]])
    return markdown_table(["depth", "layers kept", "parameters", "ms per batch", "× full depth",
                           *[f"{n} ({metric})" for n in series]], rows)


def pareto_front(points: Sequence[tuple[float, float]], *, higher_is_better: bool = True) -> list[int]:
    """Indices of points (latency, quality) that no other point beats on both axes."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any(
            (l2 <= lat and (q2 >= q if higher_is_better else q2 <= q)) and (l2, q2) != (lat, q)
            for l2, q2 in points
        )
        if not dominated:
            front.append(i)
    return front


def _pyplot() -> Any:  # matplotlib.pyplot
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'layerdrop[plot]'") from err
    return plt


def _finish(plt: Any, fig: Any, ax: Any, path: str | Path, title: str, *, grid_axis: str = "both") -> Path:
    """Grid, legend and title; then write the PNG atomically and free the figure."""
    ax.grid(alpha=0.3, axis=grid_axis)
    if len(ax.get_legend_handles_labels()[1]) > 4:  # many series: beside the plot, off the points
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        ax.legend()
    ax.set_title(title)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    """Write the figure as PNG atomically and free it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def plot_quality_vs_depth(series: Mapping[str, Sequence[DepthResult]], metric: str, path: str | Path,
                          *, title: str = "") -> Path:
    """Line plot of the metric against depth, one line per series; written atomically as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, results in series.items():
        pts = sorted((r.depth, r.score * (100 if metric in _PERCENT else 1)) for r in results)
        ax.plot([d for d, _ in pts], [s for _, s in pts], marker="o", label=name)
    ax.set_xlabel("layers kept")
    ax.set_ylabel(f"{metric} (%)" if metric in _PERCENT else metric)
    if metric == "perplexity":
        ax.set_yscale("log")
    return _finish(plt, fig, ax, path, title)


def plot_quality_vs_latency(series: Mapping[str, Sequence[DepthResult]], metric: str, path: str | Path,
                            *, title: str = "", overall: bool = False) -> Path:
    """Scatter of quality against latency, with each series' Pareto front drawn as a line, and with
    ``overall`` the front over every series' points too (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    higher, scale = higher_is_better(metric), 100 if metric in _PERCENT else 1
    everything = []
    for name, results in series.items():
        pts = [(r.latency_ms or 0.0, r.score * scale) for r in results]
        everything += pts
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name, alpha=0.6)
        front = sorted(pts[i] for i in pareto_front(pts, higher_is_better=higher))
        ax.plot([p[0] for p in front], [p[1] for p in front], linewidth=1)
    if overall:
        front = sorted(everything[i] for i in pareto_front(everything, higher_is_better=higher))
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=1, label="Pareto front, all")
    ax.set_xlabel("latency (ms per batch)")
    ax.set_ylabel(f"{metric} (%)" if metric in _PERCENT else metric)
    return _finish(plt, fig, ax, path, title)


def plot_quality_vs_cost(series: Mapping[str, Sequence[tuple[float, float, int]]], path: str | Path,
                         *, metric: str = "accuracy", title: str = "") -> Path:
    """Scatter of quality against the training minutes each model needed, one colour per method,
    each point labelled with its depth: ``series[name] = [(minutes, score, depth), ...]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    scale = 100 if metric in _PERCENT else 1
    for name, points in series.items():
        ax.scatter([p[0] for p in points], [scale * p[1] for p in points], label=name, alpha=0.7)
        for minutes, score, depth in points:
            ax.annotate(str(depth), (minutes, scale * score), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("training minutes (with the full-depth run it needs)")
    ax.set_ylabel(f"{metric} (%)" if metric in _PERCENT else metric)
    return _finish(plt, fig, ax, path, title)


def plot_loss_curves(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path, *, title: str = "") -> Path:
    """Training loss against optimizer step, one line per run: ``curves[name] = [(step, loss), ...]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, curve in curves.items():
        ax.plot([p[0] for p in curve], [p[1] for p in curve], label=name, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    return _finish(plt, fig, ax, path, title)


def plot_exit_depths(shares: Mapping[str, Mapping[int, float]], path: str | Path, *, title: str = "") -> Path:
    """Grouped bars of the share of rows leaving at each exit depth, one colour per exit rule:
    ``shares[rule][depth]`` in [0, 1]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    depths = sorted({d for by in shares.values() for d in by})
    width = 0.8 / max(len(shares), 1)
    for k, (name, by) in enumerate(shares.items()):
        ax.bar([i + k * width for i in range(len(depths))], [100 * by.get(d, 0.0) for d in depths], width=width,
               label=name)
    ax.set_xticks([i + width * (len(shares) - 1) / 2 for i in range(len(depths))], [str(d) for d in depths])
    ax.set_xlabel("exit depth (layers run)")
    ax.set_ylabel("rows leaving there (%)")
    return _finish(plt, fig, ax, path, title, grid_axis="y")


def plot_layer_importance(scores: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "") -> Path:
    """Grouped bars of per-layer importance, one group per layer and one colour per metric.

    Each metric is divided by its largest value, so metrics on different scales share an axis.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = list(scores)
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        values = list(scores[name])
        top = max((abs(v) for v in values), default=1.0) or 1.0
        ax.bar([i + k * width for i in range(len(values))], [v / top for v in values], width=width, label=name)
    n = max((len(v) for v in scores.values()), default=0)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(n)], [str(i) for i in range(n)])
    ax.set_xlabel("layer")
    ax.set_ylabel("importance (relative to the largest)")
    return _finish(plt, fig, ax, path, title, grid_axis="y")


def plot_masks(log: MaskLog, path: str | Path, *, forwards: int = 200, title: str = "") -> Path:
    """Which layers ran at each of the first ``forwards`` training forwards of a :class:`MaskLog`
    (a heatmap of layers x forwards; at granularity sublayer or head, the share of parts run), and
    beside it the histogram of how many layers ran per forward over the whole log."""
    plt = _pyplot()
    fig, (heat, hist) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    shown = log.parts.float().mean(2) if log.parts is not None else log.keep.float()  # (N, L)
    shown = shown[:forwards].T  # (L, n)
    heat.imshow(shown.numpy(), aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1, origin="lower")
    heat.set_xlabel("training forward")
    heat.set_ylabel("layer")
    layers = log.keep.shape[1]
    heat.set_yticks(range(0, layers, max(1, layers // 12)))
    unit = {"sublayer": "share of sublayers run", "head": "share of heads kept"}.get(log.granularity, "ran (black)")
    heat.set_title(f"{title}: {unit}" if title else unit, fontsize=9)
    counts = log.layers_run.bincount(minlength=layers + 1)
    hist.bar(range(layers + 1), counts.tolist(), color="0.3")
    hist.set_xticks(range(0, layers + 1, max(1, (layers + 1) // 7)))  # whole numbers of layers
    hist.set_xlabel("layers run")
    hist.set_ylabel("forwards")
    hist.set_title(f"{len(log.keep)} forwards, mean {log.layers_run.float().mean():.2f}" if len(log.keep) else "",
                   fontsize=9)
    return _save(plt, fig, path)
