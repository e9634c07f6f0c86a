"""What ``layerdrop compare`` compares and how its results are drawn: the method table, one result row per
method and depth, the Markdown tables and the plots, in English or Chinese. ``layerdrop report`` redraws
a page from a ``compare.json`` with these alone; ``layerdrop.recipes.compare`` trains and scores.

>>> [name for name, m in METHODS.items() if m.full == "layerdrop"], [m for m in METHODS if not METHODS[m].per_depth]
(['layerdrop-cut', 'layerdrop-healed'], ['plain-cut', 'layerdrop-cut', 'elastic'])
>>> METHODS["plain-cut"].label, say(METHODS["plain-cut"].label, "zh")
('plain, cut', '普通微调后剪枝')
>>> _label("plain", scratch=True), _label("fixed-depth", "zh", scratch=True)
('plain training (full depth)', '固定深度（从零训练）')
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop.errors import InputError

from .measure import DepthResult, higher_is_better
from .report import format_score, markdown_table, pareto_front, plot_quality_vs_cost, plot_quality_vs_latency
from .words import Language, say

__all__ = ["FULL_RUNS", "METHODS", "SCRATCH_LABELS", "Method", "Row", "plot", "read_report", "tables", "title_of",
           "trained_from_scratch"]


@dataclass(frozen=True)
class Method:
    """One row of :data:`METHODS`."""

    label: str
    """How tables and plots name it."""
    per_depth: bool
    """Whether it trains one model per depth (else it cuts a full-depth model)."""
    full: str
    """The full-depth run it cuts or learns from, and serves full depth with: ``plain`` or ``layerdrop``."""
    needs_full: bool
    """Whether its shallower models need that full-depth run (a cut or a teacher), or only a full-depth row does."""


METHODS: dict[str, Method] = {
    "plain-cut": Method("plain, cut", per_depth=False, full="plain", needs_full=True),
    "layerdrop-cut": Method("LayerDrop, cut", per_depth=False, full="layerdrop", needs_full=True),
    "layerdrop-healed": Method("LayerDrop, cut and healed", per_depth=True, full="layerdrop", needs_full=True),
    "fixed-depth": Method("fixed depth (cut, then fine-tuned)", per_depth=True, full="plain", needs_full=False),
    "distilled": Method("DistilBERT-style (cut, then distilled)", per_depth=True, full="plain", needs_full=True),
    "top-dropped": Method("top layers dropped, fine-tuned", per_depth=True, full="plain", needs_full=False),
    "elastic": Method("one elastic run", per_depth=False, full="elastic-full", needs_full=True),
}
"""Method name -> how it is shown, whether it trains per depth, and which full-depth run it relies on."""

FULL_RUNS = {"plain": "plain fine-tune (full depth)", "layerdrop": "LayerDrop fine-tune (full depth)",
             "elastic-full": "one elastic run (full depth)"}
"""The full-depth runs, as the table's full-depth rows name them."""

SCRATCH_LABELS = {"plain": "plain training (full depth)", "layerdrop": "LayerDrop training (full depth)",
                  "plain-cut": "plain training, cut", "fixed-depth": "fixed depth (from scratch)"}
"""The names a model built from scratch (a preset such as ``gpt2-tiny``) gives the runs that would otherwise
say fine-tune (``plain-cut`` says it only in Chinese, 普通微调后剪枝)."""


def _label(name: str, language: Language = "en", *, scratch: bool = False) -> str:
    """How tables and plots name a method or full-depth run, in ``language``."""
    if scratch and name in SCRATCH_LABELS:
        return say(SCRATCH_LABELS[name], language)
    return say(METHODS[name].label if name in METHODS else FULL_RUNS[name], language)


@dataclass(frozen=True)
class Row:
    """One method at one depth."""

    method: str
    depth: int
    kept: tuple[int, ...]
    scores: tuple[float, ...]
    """Test score (accuracy, or perplexity for a language model) of each seed's model (one for a cut, but for
    the elastic run's seeds at the shallowest depth)."""
    parameters: int
    latency_ms: float
    minutes: float
    """Training minutes of this row's own run (first seed; 0 for a cut of a shared model)."""

    @property
    def score(self) -> float:
        return statistics.fmean(self.scores)



def _serving(rows: list[Row], methods: list[str], metric: str, full_minutes: dict[str, float], num_layers: int,
             language: Language = "en", *, scratch: bool = False) -> list[list[Any]]:
    """Per method: the training runs and minutes that serve every depth of the table, and its quality
    at each (at full depth, that of the full run it relies on)."""
    depths = sorted({r.depth for r in rows}, reverse=True)
    by = {(r.method, r.depth): r for r in rows}
    out = []
    for name in methods:
        method = METHODS[name]
        mine = {d: by[(method.full, d) if d == num_layers else (name, d)] for d in depths}
        uses_full = method.needs_full or num_layers in depths
        runs = int(uses_full) + sum(1 for d in depths if method.per_depth and d < num_layers)
        minutes = (full_minutes[method.full] if uses_full else 0.0) + sum(
            mine[d].minutes for d in depths if d < num_layers)
        out.append([_label(name, language, scratch=scratch), runs, f"{minutes:.1f}",
                    *[format_score(mine[d].score, metric) for d in depths]])
    return out


def tables(rows: list[Row], metric: str, full_minutes: dict[str, float], num_layers: int,
           language: Language = "en", *, scratch: bool = False) -> str:
    """The report's Markdown: one row per method and depth, then what serving every depth costs each method
    (``num_layers``: the full model's depth, which the rows need not include), in ``language``;
    ``scratch``: the model was built from scratch, so no row says fine-tune."""
    methods = list(dict.fromkeys(r.method for r in rows if r.method in METHODS))
    full_ms = max(r.latency_ms for r in rows if r.depth == max(x.depth for x in rows))
    front = set(pareto_front([(r.latency_ms, r.score) for r in rows], higher_is_better=higher_is_better(metric)))
    header = [say(h, language) for h in ("method", "depth", "layers kept")]
    header += [say("test {metric}", language, metric=say(metric, language)),
               *[say(h, language) for h in ("seeds", "parameters", "ms per batch", "× full", "training (min)",
                                            "Pareto")]]
    cut = say("(cut)", language)
    md_rows = [[_label(r.method, language, scratch=scratch), r.depth, ", ".join(map(str, r.kept)),
                format_score(r.score, metric),
                " / ".join(format_score(s, metric).removesuffix(" %") for s in r.scores) if len(r.scores) > 1 else "",
                f"{r.parameters / 1e6:.1f}M", f"{r.latency_ms:.1f}", f"{r.latency_ms / full_ms:.2f}",
                cut if r.method in METHODS and not METHODS[r.method].per_depth else f"{r.minutes:.1f}",
                "★" if i in front else ""]
               for i, r in enumerate(rows)]
    depths = sorted({r.depth for r in rows}, reverse=True)
    serving = markdown_table([*[say(h, language) for h in ("method", "training runs", "training minutes")],
                              *[say("at {depth}", language, depth=d) for d in depths]],
                             _serving(rows, methods, metric, full_minutes, num_layers, language,
                                      scratch=scratch))
    minutes = say(", ", language).join(
        say("{name} {minutes} min", language, name=say(k.removesuffix("-full"), language), minutes=f"{v:.1f}")
        for k, v in full_minutes.items())
    return (markdown_table(header, md_rows) + "\n" + say(
        "What serving every depth of the table costs each method (full-depth runs: {minutes}):", language,
        minutes=minutes) + "\n\n" + serving)


def plot(rows: list[Row], metric: str, full_minutes: dict[str, float], path: str | Path, *,
         against: str = "latency", title: str = "", language: Language = "en", scratch: bool = False) -> Path:
    """Quality against latency (``against="latency"``) or against the training minutes each point needs,
    its full-depth run included (``"training"``), one series per method (named as :func:`tables` names it)."""
    names = list(dict.fromkeys(r.method for r in rows))
    if against == "latency":
        series = {_label(m, language, scratch=scratch): [
            DepthResult(r.depth, r.kept, r.score, r.parameters, r.latency_ms) for r in rows if r.method == m]
            for m in names}
        return plot_quality_vs_latency(series, metric, path, title=title, language=language)
    if against != "training":
        raise InputError(f"against={against!r}: choose latency or training")

    def cost(r: Row) -> float:  # with the full-depth run the model needs
        method = METHODS.get(r.method)
        full = full_minutes[method.full] if method is not None and (method.needs_full or not method.per_depth) else 0.0
        return r.minutes + full
    return plot_quality_vs_cost({_label(m, language, scratch=scratch): [(cost(r), r.score, r.depth) for r in rows
                                                                         if r.method == m]
                                 for m in names}, path, metric=metric, title=title, language=language)


def read_report(path: str | Path,
                language: Language = "en") -> tuple[list[Row], str, dict[str, float], int, str, bool]:
    """The rows, metric, full-depth minutes, the full model's depth, the plot title (in ``language``) and
    whether the model was built from scratch (``scratch`` of :func:`tables`) of a ``compare.json`` (the file
    or its run folder)."""
    path = Path(path)
    data = json.loads((path / "compare.json" if path.is_dir() else path).read_text())
    fields = [f.name for f in dataclasses.fields(Row)]
    rows: list[Row] = []
    for r in data["rows"]:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k in fields}
        rows.append(Row(**values))
    num_layers = data.get("layers", max(r.depth for r in rows))  # older reports: their depths included the full one
    model = data["config"]["model"]
    plot_title = title_of(model, data["config"]["data"], language)
    scratch = data.get("from_scratch", trained_from_scratch(model))  # older reports did not record it
    return rows, data["metric"], data["full_minutes"], num_layers, plot_title, scratch


def trained_from_scratch(model: str) -> bool:
    """Whether ``layerdrop compare`` builds ``model`` untrained (a preset) rather than fine-tuning it."""
    from layerdrop.models import presets  # transformers, only when a report is read or a comparison run

    return model in presets.PRESETS


def title_of(model: str, data: str, language: Language = "en") -> str:
    return say("{model} on {data}", language, model=Path(model).name, data=data)


