"""``layerdrop report``: Markdown pages whose tables and figures are refilled from the runs' JSON.

A page marks each generated part with a pair of HTML comments (invisible once rendered) that say
what to draw and from which run; the prose around them is the author's::

    <!-- layerdrop:compare runs/compare-minilm -->
    (everything here is replaced on each refresh)
    <!-- /layerdrop -->

The first word after ``layerdrop:`` is a kind of :data:`RENDERERS`; then a run folder or file,
relative to ``runs`` (a glob for the kinds that gather several runs); then ``key=value`` options.
``image=PATH`` names the PNG a figure is drawn to, relative to the page. A block whose run is
missing is left as it was and reported, so a page can be refreshed after re-running only some
of its commands; re-running all of them and refreshing rebuilds every number and picture.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop.errors import InputError
from layerdrop.evaluation.report import format_score, markdown_table
from layerdrop.evaluation.words import Language, language_of, say
from layerdrop.files import write_bytes, write_text

__all__ = ["RENDERERS", "Block", "Refresh", "Renderer", "copy_runs", "find_blocks", "refresh_page", "refresh_text"]

_BLOCK = re.compile(r"^<!-- layerdrop:(?P<kind>[\w-]+) (?P<args>[^\n]*?) -->\r?\n(?P<body>.*?)<!-- /layerdrop -->",
                    re.S | re.M)
_OPENER = re.compile(r"^<!-- layerdrop:", re.M)
"""A block's first line starts a line; the marker elsewhere (in prose or code) is text."""


@dataclass(frozen=True)
class Block:
    """One generated part of a page."""

    kind: str
    """Which renderer draws it (a key of :data:`RENDERERS`)."""
    source: str
    """The run folder, file or glob it is drawn from, relative to the runs folder."""
    options: Mapping[str, str]
    """The ``key=value`` options after the source."""
    span: tuple[int, int]
    """Where its body lies in the page's text (start, end)."""


def find_blocks(text: str) -> list[Block]:
    """The blocks of a page, in order.

    >>> page = ("Intro.\\n<!-- layerdrop:masks runs/a/masks.safetensors image=img/a.png -->\\nold\\n"
    ...         "<!-- /layerdrop -->\\n")
    >>> [(b.kind, b.source, dict(b.options), page[slice(*b.span)]) for b in find_blocks(page)]
    [('masks', 'runs/a/masks.safetensors', {'image': 'img/a.png'}, 'old\\n')]
    """
    blocks = []
    for match in _BLOCK.finditer(text):
        if _OPENER.search(match["body"]):  # the block before it was never closed: refreshing would eat the prose
            raise InputError(f"block {match[0].splitlines()[0]!r} has no <!-- /layerdrop --> before the next block: "
                             "close it, or nothing between them could be kept")
        source, *rest = shlex.split(match["args"]) or [""]
        if not source or any(not opt.partition("=")[0] or "=" not in opt for opt in rest):
            raise InputError(f"block {match[0].splitlines()[0]!r}: expected a source, then key=value options")
        options = dict(opt.partition("=")[::2] for opt in rest)
        blocks.append(Block(match["kind"], source, options, match.span("body")))
    starts = [m.start() for m in _OPENER.finditer(text)]
    if len(starts) != len(blocks):
        parsed = {text.rfind("\n", 0, b.span[0] - 1) + 1 for b in blocks}  # where each parsed block's line starts
        line = next(text[i:].splitlines()[0] for i in starts if i not in parsed)
        raise InputError(f"{line.strip()!r}: expected `<!-- layerdrop:KIND SOURCE [key=value ...] -->`, a new line, "
                         "and later `<!-- /layerdrop -->`")
    return blocks


@dataclass(frozen=True)
class Refresh:
    """What refreshing a page did."""

    text: str
    """The page with every block whose runs exist redrawn."""
    refreshed: list[Block]
    missing: list[Block]
    """Blocks left as they were because their runs are not there."""
    files: list[Path]
    """Every run file the refreshed blocks were drawn from (what ``layerdrop report --copy-to`` ships)."""


def refresh_text(text: str, runs: str | Path = ".", page_dir: str | Path | None = None,
                 language: Language = "en") -> Refresh:
    """``text`` with each block's body redrawn from its runs under ``runs``, its words in ``language``.

    Figures are drawn to their ``image=`` paths relative to ``page_dir``; with ``page_dir=None``
    nothing is drawn and only the text is computed (to check whether a page is up to date).
    """
    runs = Path(runs)
    pieces, last, refreshed, missing, files = [], 0, [], [], []
    for block in find_blocks(text):
        if block.kind not in RENDERERS:
            raise InputError(f"unknown block kind {block.kind!r}; choose from {', '.join(RENDERERS)}")
        if Path(block.source).is_absolute() or ".." in Path(block.source).parts:
            raise InputError(f"block {block.kind} {block.source}: give the run's path relative to the runs folder")
        sources = sorted(runs.glob(block.source)) if any(c in block.source for c in "*?[") else \
            [p for p in [runs / block.source] if p.exists()]
        start, end = block.span
        pieces.append(text[last:start])
        renderer = RENDERERS[block.kind]
        try:
            read = [_file(path, renderer.reads) for path in _named(sources, block.options)] if sources else []
            if not read:
                raise _MissingRuns(block.source)
            pieces.append(renderer.draw(read, block.options, None if page_dir is None else Path(page_dir), language))
            refreshed.append(block)
            files += [path for path in read if path not in files]
        except _MissingRuns:
            pieces.append(text[start:end])
            missing.append(block)
        last = end
    pieces.append(text[last:])
    return Refresh("".join(pieces), refreshed, missing, files)


def refresh_page(page: str | Path, runs: str | Path = ".", *, write: bool = True) -> Refresh:
    """Refresh a page file in place (atomically), or with ``write=False`` only say what would change.

    A Chinese page (``*.zh-CN.md``) gets its tables and figures in Chinese."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    result = refresh_text(text, runs, page.parent if write else None, language_of(page.name))
    if write and result.text != text:
        write_text(page, result.text)
    return result


def copy_runs(files: list[Path], runs: str | Path, to: str | Path) -> list[Path]:
    """Copy the run files a page was drawn from (``Refresh.files``) from ``runs`` to the same places under
    ``to``, each written atomically, so the page can be redrawn and checked from ``to`` alone."""
    runs, to = Path(runs), Path(to)
    return [write_bytes(to / path.relative_to(runs), path.read_bytes()) for path in files]


# --------------------------------------------------------------------------- renderers


class _MissingRuns(LookupError):
    """Some runs a block names are not there yet: the block is left as it was, like one whose source is missing."""


def _file(source: Path, name: str) -> Path:
    """The file a block reads from one run: the source itself, or ``name`` inside the folder (a folder
    without it holds a run still in progress: the block waits for it)."""
    path = source / name if source.is_dir() else source
    if not path.is_file():
        raise _MissingRuns(str(path))
    return path


def _image(options: Mapping[str, str], page_dir: Path | None, draw: Callable[[Path], Any], alt: str) -> str:
    """Draw a figure to ``image=`` (relative to the page) and return its Markdown."""
    if "image" not in options:
        raise InputError("a figure block needs image=PATH (relative to the page)")
    if page_dir is not None:
        draw(page_dir / options["image"])
    return f"![{options.get('alt', alt)}]({options['image']})\n"


def _choice(options: Mapping[str, str], key: str, choices: tuple[str, ...]) -> str:
    value = options.get(key, choices[0])
    if value not in choices:
        raise InputError(f"{key}={value}: choose {' or '.join(choices)}")
    return value


def _ints(options: Mapping[str, str], key: str) -> list[int]:
    try:
        return [int(x) for x in options[key].split(",")]
    except ValueError:
        raise InputError(f"{key}={options[key]}: expected comma-separated whole numbers") from None


def _compare(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    from layerdrop.evaluation.comparison import read_report, tables

    rows, metric, full_minutes, num_layers, _, scratch = read_report(files[0])
    return tables(rows, metric, full_minutes, num_layers, language, scratch=scratch)


def _compare_plot(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    from layerdrop.evaluation.comparison import plot, read_report

    rows, metric, full_minutes, _, title, scratch = read_report(files[0], language)
    against = _choice(options, "against", ("latency", "training"))
    return _image(options, page_dir, lambda p: plot(rows, metric, full_minutes, p, against=against, title=title,
                                                    language=language, scratch=scratch),
                  say("{metric} against {against}: {title}", language, metric=say(metric, language),
                      against=say(against, language), title=title))


def _sweep(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    from .sweep import read_points, tables

    points, metric, _ = read_points(files[0])
    return tables(points, metric, language)


def _sweep_plot(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    from layerdrop.evaluation.report import plot_quality_vs_depth, plot_quality_vs_latency

    from .sweep import read_points

    points, metric, title = read_points(files[0])
    against = _choice(options, "against", ("depth", "latency"))
    draw = {"depth": plot_quality_vs_depth, "latency": plot_quality_vs_latency}[against]
    return _image(options, page_dir, lambda p: draw(points, metric, p, title=title, language=language),
                  say("{metric} against {against}", language, metric=say(metric, language),
                      against=say(against, language)))


def _run_name(path: Path) -> str:
    """A run's name on a page: its folder's (the file's parent for a file)."""
    return path.parent.name if path.is_file() else path.name


def _named(sources: list[Path], options: Mapping[str, str]) -> list[Path]:
    """The sources named by ``runs=a,b,...`` in that order (all of them, by name, without it).

    A block naming a run that is not there yet is left as it was, like a block whose source is missing.
    """
    if "runs" not in options:
        return sources
    by_name = {_run_name(path): path for path in sources}
    wanted = options["runs"].split(",")
    if unknown := [name for name in wanted if name not in by_name]:
        raise _MissingRuns(f"no run named {', '.join(unknown)} among {', '.join(by_name)}")
    return [by_name[name] for name in wanted]


def _runs(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Each run's name (its folder) and its JSON file, as ``runs=`` picked and ordered them."""
    return [(_run_name(path), json.loads(path.read_text())) for path in files]


def _code(name: str) -> str:
    """A run's or a strategy's name in a table cell, set as code: a name, in every page's language."""
    return f"`{name}`"


def _levers(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    """One row per ``experiments/levers.py`` run: its score at each depth, seconds per step and last loss."""
    runs = _runs(files)  # experiments/levers.py
    metric = "perplexity" if runs[0][1]["task"] == "lm" else "accuracy"
    shown = _ints(options, "depths") if "depths" in options else \
        sorted({r["depth"] for r in runs[0][1]["rows"]}, reverse=True)
    rows = []
    for name, data in runs:
        by_depth = {r["depth"]: r["score"] for r in data["rows"]}
        steps, seconds = data.get("steps"), data.get("train_seconds")
        curve = data.get("loss_curve") or []
        rows.append([_code(name), *[format_score(by_depth[d], metric) if d in by_depth else "" for d in shown],
                     f"{seconds / steps:.2f}" if steps and seconds else "",
                     f"{curve[-1][1]:.3f}" if curve else "",
                     f"{max(loss for _, loss in curve):.3f}" if curve else ""])
    name = say(metric, language)
    return markdown_table([say("run", language), *[say("{metric} at {depth}", language, metric=name, depth=d)
                                                   for d in shown],
                           *[say(h, language) for h in ("s / step", "last loss", "highest loss")]], rows)


def _levers_loss(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    """The training loss curves of ``experiments/levers.py`` runs, one line per run."""
    from layerdrop.evaluation.report import plot_loss_curves

    curves = {name: data["loss_curve"] for name, data in _runs(files)}
    title = options.get("title", say("training loss", language))
    return _image(options, page_dir, lambda p: plot_loss_curves(curves, p, title=title, language=language), title)


def _generation(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    """``experiments/lecture_generation.py``: perplexity, speed and repetition per depth, then self-speculative
    decoding.

    Several runs (a glob, ``runs=`` to order them) share one table with a column naming each run.
    """
    runs = _runs(files)
    named = len(runs) > 1

    def num(value: float, digits: int = 2) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    rows = [[*([_code(name)] if named else []), r["depth"], num(r["perplexity"]),
             *[num(r[way][key], d) for way in ("greedy", "sampled")
               for key, d in (("tokens_per_second", 1), ("distinct_2", 3), ("repeated_4grams", 3))]]
            for name, data in runs for r in data["depths"]]
    model = [say("model", language)] if named else []
    table = markdown_table([*model, *[say(h, language) for h in (
        "depth", "perplexity", "greedy tokens/s", "greedy distinct-2", "greedy repeated 4-grams", "sampled tokens/s",
        "sampled distinct-2", "sampled repeated 4-grams")]], rows)
    speculative = [[*([_code(name)] if named else []), s["draft_depth"], num(s["acceptance"], 3),
                    num(s["tokens_per_second"], 1), num(s["speed_up"])]
                   for name, data in runs for r in data["depths"] for s in r.get("speculative", [])]
    if speculative:
        table += "\n" + say("Self-speculative decoding at full depth (greedy):", language) + "\n\n" + markdown_table(
            [*model, *[say(h, language) for h in ("draft depth", "acceptance", "tokens/s", "speed-up")]], speculative)
    return table


def _importance(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    """A ``layerdrop sweep``'s per-layer scores (learned keep rates, importance metrics): a table and a bar chart."""
    from layerdrop.evaluation.report import plot_layer_importance

    path = files[0]
    records = json.loads(path.read_text())["records"]
    scores = {name: next(r["scores"] for r in rows if r["scores"])
              for name, rows in records.items() if any(r["scores"] for r in rows)}
    if not scores:
        raise InputError(f"{path}: no strategy recorded per-layer scores; sweep with data-driven or "
                         "block-influence (angular scores windows of layers, not layers)")
    layers = max(len(v) for v in scores.values())
    header = [say("strategy", language), *[say("layer {index}", language, index=i) for i in range(layers)]]
    table = markdown_table(header,
                           [[_code(name), *[f"{v:.3g}" for v in values]] for name, values in scores.items()])
    title = options.get("title", say("per-layer scores", language))
    return table + "\n" + _image(options, page_dir,
                                 lambda p: plot_layer_importance(scores, p, title=title, language=language), title)


def _masks(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    """A recorded run's keep-masks (``--record-masks``) as a heatmap and a layers-run histogram."""
    from layerdrop.core.masklog import load_mask_log
    from layerdrop.evaluation.report import plot_masks

    path = files[0]
    forwards = _ints(options, "forwards")[0] if "forwards" in options else 200
    title = options.get("title", "")
    return _image(options, page_dir,
                  lambda p: plot_masks(load_mask_log(path), p, forwards=forwards, title=title, language=language),
                  title or say("keep-masks", language))


def _mechanism(files: list[Path], options: Mapping[str, str], page_dir: Path | None, language: Language) -> str:
    """The mechanism drawn from a run's real masks: its first ``steps=`` training forwards (3), each with its
    skipped layers, then the every-other cut to ``depth=`` layers (half, rounded up) at inference."""
    from layerdrop.core.depths import every_other
    from layerdrop.core.masklog import load_mask_log
    from layerdrop.evaluation.report import plot_mechanism

    log = load_mask_log(files[0])
    layers = log.keep.shape[1]
    steps = _ints(options, "steps")[0] if "steps" in options else 3
    depth = _ints(options, "depth")[0] if "depth" in options else (layers + 1) // 2
    if not 1 <= steps <= len(log.keep) or not 1 <= depth <= layers:
        raise InputError(f"mechanism {files[0]}: steps={steps} must be 1..{len(log.keep)} (forwards recorded), "
                         f"depth={depth} 1..{layers}")
    keep = log.keep[:steps].tolist()
    title = options.get("title", "LayerDrop")
    return _image(options, page_dir, lambda p: plot_mechanism(keep, every_other(layers, depth), p, language=language),
                  title)


@dataclass(frozen=True)
class Renderer:
    """One kind of block: the file it reads in each run, and what it draws from those files."""

    reads: str
    """The file name inside a run folder (a block may also name the file itself)."""
    draw: Callable[[list[Path], Mapping[str, str], Path | None, Language], str]
    """(files, options, page folder or None, language) -> the block's new body."""


RENDERERS: dict[str, Renderer] = {
    "compare": Renderer("compare.json", _compare),
    "compare-plot": Renderer("compare.json", _compare_plot),
    "sweep": Renderer("sweep.json", _sweep),
    "sweep-plot": Renderer("sweep.json", _sweep_plot),
    "levers": Renderer("sweep.json", _levers),
    "levers-loss": Renderer("sweep.json", _levers_loss),
    "generation": Renderer("generation.json", _generation),
    "importance": Renderer("sweep.json", _importance),
    "masks": Renderer("masks.safetensors", _masks),
    "mechanism": Renderer("masks.safetensors", _mechanism),
}
"""Block kind -> what draws it from its runs: ``compare`` (``layerdrop compare``'s tables), ``sweep``
(``layerdrop sweep``'s table), ``levers`` (one row per ``experiments/levers.py`` run, a glob; ``runs=a,b``
picks and orders them), ``generation`` (``experiments/lecture_generation.py``, one run or a glob), and the
figures ``compare-plot`` (``against=latency|training``), ``sweep-plot`` (``against=depth|latency``),
``levers-loss``, ``importance`` (a sweep's per-layer scores, with their table), ``masks`` and
``mechanism`` (a run's first masks drawn as the networks they ran, then the cut; ``steps=``, ``depth=``),
each with ``image=``.

>>> sorted(k for k in RENDERERS if k.endswith(("-plot", "-loss")) or k in ("masks", "mechanism", "importance"))
['compare-plot', 'importance', 'levers-loss', 'masks', 'mechanism', 'sweep-plot']
"""
