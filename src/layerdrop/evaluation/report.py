"""Tables and plots of quality against depth and latency, of the masks a run drew and of the mechanism itself:
Markdown, CSV-ready rows and PNG, their words in English or Chinese (:mod:`.words`).

Plots need matplotlib (``pip install layerdrop[plot]``); everything else is plain text.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerdrop.errors import InputError
from layerdrop.files import write_bytes

from .measure import DepthResult, higher_is_better
from .words import Language, say

if TYPE_CHECKING:
    from layerdrop.core.masklog import MaskLog

__all__ = [
    "CJK_FONTS",
    "cjk_font",
    "depth_table",
    "cost_table",
    "format_score",
    "markdown_table",
    "pareto_front",
    "plot_exit_depths",
    "plot_layer_importance",
    "plot_loss_curves",
    "plot_masks",
    "plot_mechanism",
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


CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Microsoft YaHei", "PingFang SC",
             "Noto Sans CJK JP")
"""Fonts with Chinese characters, in the order a Chinese figure picks them (Debian's fonts-noto-cjk first)."""


def cjk_font() -> str:
    """The first of :data:`CJK_FONTS` matplotlib can use; a clear error where none is installed (each
    Chinese character would otherwise be drawn as an empty box)."""
    from matplotlib import font_manager

    def installed() -> str | None:
        names = {font.name for font in font_manager.fontManager.ttflist}
        return next((name for name in CJK_FONTS if name in names), None)

    if (name := installed()) is None:  # installed after matplotlib cached its font list: add the files
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name for key in ("CJK", "SourceHanSans", "wqy")):
                font_manager.fontManager.addfont(path)
        name = installed()
    if name is None:
        raise InputError("figures in Chinese need a font with Chinese characters: install Debian's fonts-noto-cjk "
                         "(sudo apt-get install fonts-noto-cjk; .ci/run does), then draw them again")
    return name


@contextmanager
def _figures(language: Language) -> Iterator[Any]:
    """pyplot, drawing text in a font that has the language's characters while the figure is made and saved."""
    plt = _pyplot()
    if language == "en":
        yield plt
        return
    with plt.rc_context({"font.family": "sans-serif", "font.sans-serif": [cjk_font(), "DejaVu Sans"],
                         "axes.unicode_minus": False}):
        yield plt


def _metric_axis(metric: str, language: Language) -> str:
    name = say(metric, language)
    return say("{metric} (%)", language, metric=name) if metric in _PERCENT else name


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
                          *, title: str = "", language: Language = "en") -> Path:
    """Line plot of the metric against depth, one line per series; written atomically as PNG."""
    with _figures(language) as plt:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, results in series.items():
            pts = sorted((r.depth, r.score * (100 if metric in _PERCENT else 1)) for r in results)
            ax.plot([d for d, _ in pts], [s for _, s in pts], marker="o", label=name)
        ax.set_xlabel(say("layers kept", language))
        ax.set_ylabel(_metric_axis(metric, language))
        if metric == "perplexity":
            ax.set_yscale("log")
        return _finish(plt, fig, ax, path, title)


def plot_quality_vs_latency(series: Mapping[str, Sequence[DepthResult]], metric: str, path: str | Path,
                            *, title: str = "", overall: bool = False, language: Language = "en") -> Path:
    """Scatter of quality against latency, with each series' Pareto front drawn as a line, and with
    ``overall`` the front over every series' points too (dashed)."""
    with _figures(language) as plt:
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
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=1,
                    label=say("Pareto front, all", language))
        ax.set_xlabel(say("latency (ms per batch)", language))
        ax.set_ylabel(_metric_axis(metric, language))
        return _finish(plt, fig, ax, path, title)


def plot_quality_vs_cost(series: Mapping[str, Sequence[tuple[float, float, int]]], path: str | Path,
                         *, metric: str = "accuracy", title: str = "", language: Language = "en") -> Path:
    """Scatter of quality against the training minutes each model needed, one colour per method,
    each point labelled with its depth: ``series[name] = [(minutes, score, depth), ...]``."""
    with _figures(language) as plt:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        scale = 100 if metric in _PERCENT else 1
        for name, points in series.items():
            ax.scatter([p[0] for p in points], [scale * p[1] for p in points], label=name, alpha=0.7)
            for minutes, score, depth in points:
                ax.annotate(str(depth), (minutes, scale * score), fontsize=7, xytext=(3, 2),
                            textcoords="offset points")
        ax.set_xlabel(say("training minutes (with the full-depth run it needs)", language))
        ax.set_ylabel(_metric_axis(metric, language))
        return _finish(plt, fig, ax, path, title)


def plot_loss_curves(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path, *, title: str = "",
                     language: Language = "en") -> Path:
    """Training loss against optimizer step, one line per run: ``curves[name] = [(step, loss), ...]``."""
    with _figures(language) as plt:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, curve in curves.items():
            ax.plot([p[0] for p in curve], [p[1] for p in curve], label=name, linewidth=1)
        ax.set_xlabel(say("optimizer step", language))
        ax.set_ylabel(say("training loss", language))
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


def plot_layer_importance(scores: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "",
                          language: Language = "en") -> Path:
    """Grouped bars of per-layer importance, one group per layer and one colour per metric.

    Each metric is divided by its largest value, so metrics on different scales share an axis.
    """
    with _figures(language) as plt:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        names = list(scores)
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            values = list(scores[name])
            top = max((abs(v) for v in values), default=1.0) or 1.0
            ax.bar([i + k * width for i in range(len(values))], [v / top for v in values], width=width, label=name)
        n = max((len(v) for v in scores.values()), default=0)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(n)], [str(i) for i in range(n)])
        ax.set_xlabel(say("layer", language))
        ax.set_ylabel(say("importance (relative to the largest)", language))
        return _finish(plt, fig, ax, path, title, grid_axis="y")


def plot_masks(log: MaskLog, path: str | Path, *, forwards: int = 200, title: str = "",
               language: Language = "en") -> Path:
    """Which layers ran at each of the first ``forwards`` training forwards of a :class:`MaskLog`
    (a heatmap of layers x forwards; at granularity sublayer or head, the share of parts run), and
    beside it the histogram of how many layers ran per forward over the whole log."""
    with _figures(language) as plt:
        fig, (heat, hist) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 1]})
        shown = log.parts.float().mean(2) if log.parts is not None else log.keep.float()  # (N, L)
        shown = shown[:forwards].T  # (L, n)
        heat.imshow(shown.numpy(), aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1,
                    origin="lower")
        heat.set_xlabel(say("training forward", language))
        heat.set_ylabel(say("layer", language))
        layers = log.keep.shape[1]
        heat.set_yticks(range(0, layers, max(1, layers // 12)))
        unit = say({"sublayer": "share of sublayers run", "head": "share of heads kept"}.get(log.granularity,
                                                                                              "ran (black)"), language)
        heat.set_title(say("{title}: {unit}", language, title=title, unit=unit) if title else unit, fontsize=9)
        counts = log.layers_run.bincount(minlength=layers + 1)
        hist.bar(range(layers + 1), counts.tolist(), color="0.3")
        hist.set_xticks(range(0, layers + 1, max(1, (layers + 1) // 7)))  # whole numbers of layers
        hist.set_xlabel(say("layers run", language))
        hist.set_ylabel(say("forwards", language))
        hist.set_title(say("{forwards} forwards, mean {mean}", language, forwards=len(log.keep),
                           mean=f"{log.layers_run.float().mean():.2f}") if len(log.keep) else "", fontsize=9)
        return _save(plt, fig, path)


def plot_mechanism(keep: Sequence[Sequence[bool]], kept: Sequence[int], path: str | Path, *,
                   language: Language = "en") -> Path:
    """The mechanism in one picture: a few training steps, each with its own keep-mask (``keep[step][layer]``),
    a skipped layer never called and its input passed on unchanged; then the model cut at inference to
    the layers ``kept``, the others gone. Drawn from a run's real masks by ``layerdrop report``."""
    from matplotlib.patches import FancyArrowPatch, Rectangle

    steps, layers = len(keep), len(keep[0]) if keep else 0
    if not steps or any(len(mask) != layers for mask in keep) or not kept or max(kept) >= layers:
        raise InputError(f"plot_mechanism: expected masks of equal length and kept layers below {layers}")
    with _figures(language) as plt:
        fig, ax = plt.subplots(figsize=(1.7 * (steps + 1) + 1.2, 0.55 * layers + 1.6))
        width, height, gap = 1.0, 0.38, 0.17

        def column(x: float, run: Sequence[bool] | None, heading: str, shown: Sequence[int]) -> None:
            """One network: layers bottom to top; a run's skipped layers dashed, with the path around them."""
            ax.text(x + width / 2, (layers + 0.3) * (height + gap) + 0.25, heading, ha="center", va="bottom",
                    fontsize=9)
            ax.text(x + width / 2, -0.35, say("input", language), ha="center", va="top", fontsize=8)
            ax.text(x + width / 2, len(shown) * (height + gap) + 0.12, say("output", language), ha="center",
                    va="bottom", fontsize=8)
            for row, layer in enumerate(shown):
                y = row * (height + gap) + gap
                ran = run is None or run[layer]
                ax.add_patch(Rectangle((x, y), width, height, facecolor="0.25" if ran else "white",
                                       edgecolor="0.25", linestyle="-" if ran else "--", linewidth=1))
                ax.text(x + width / 2, y + height / 2, say("layer {index}", language, index=layer), ha="center",
                        va="center", fontsize=8, color="white" if ran else "0.45")
                if not ran:  # its input goes around it, unchanged
                    ax.add_patch(FancyArrowPatch((x + width / 2, y - gap / 2), (x + width / 2, y + height + gap / 2),
                                                 connectionstyle="arc3,rad=2.4", arrowstyle="-|>",
                                                 mutation_scale=8, color="tab:red", linewidth=1.2, zorder=3))
            top = len(shown) * (height + gap)
            ax.annotate("", xy=(x + width / 2, top + 0.1), xytext=(x + width / 2, -0.3),
                        arrowprops={"arrowstyle": "-|>", "color": "0.7", "linewidth": 0.8}, zorder=0)

        for step, mask in enumerate(keep):
            column(1.7 * step, mask, say("training step {step}", language, step=step + 1), range(layers))
        x = 1.7 * steps + 0.5
        ax.plot([x - 0.35, x - 0.35], [-0.6, (layers + 1.4) * (height + gap)], color="0.6", linewidth=0.8)
        column(x, None, say("inference: {depth} layers kept", language, depth=len(kept)), sorted(kept))
        ax.text(0, -0.95, say("white, dashed: skipped (never called; red: its input passes on unchanged)",
                              language), fontsize=8, va="top")
        ax.set_xlim(-0.2, x + width + 0.4)
        ax.set_ylim(-1.3, (layers + 1.4) * (height + gap))
        ax.axis("off")
        return _save(plt, fig, path)
