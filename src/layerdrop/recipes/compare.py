"""``layerdrop compare``: every way to get a smaller model, at every depth, with its cost.

From one pretrained encoder and one labelled dataset (accuracy), or one decoder and one corpus
(perplexity), it trains and scores, on the same splits and with the same scoring code:

* ``plain-cut``: fine-tune the full model, cut it every-other to each depth;
* ``layerdrop-cut``: one LayerDrop run (Fan et al. 2020), cut the same way;
* ``layerdrop-healed``: that run's cut, distilled from its full self (prune-and-heal);
* ``fixed-depth``: cut the pretrained model first, then fine-tune at the depth;
* ``distilled``: cut first, then distil from the fine-tuned full model (DistilBERT-style);
* ``top-dropped``: keep the bottom layers, then fine-tune (Sajjad et al. 2020);
* ``elastic``: one run trained for every depth of the table (``layerdrop train --depths``), cut to each
  depth at the layers it recorded.

and writes ``compare.md`` (quality, parameters and latency per method and depth, and what serving
every depth costs each method in training runs and minutes), ``compare.csv``, ``compare.json`` and
plots of quality against latency and against training time. Every training is a
``layerdrop train`` or ``layerdrop distill`` run in its own folder, reused when finished and
continued when not, so the command resumes where it stopped. See docs/comparison.md.

A preset (``gpt2-tiny``, ...) is built once, untrained, with its tokenizer trained on the
training text, and every method starts from that model: "fine-tune" is then training from
scratch (the tables and plots say so), and ``top-dropped`` would repeat ``fixed-depth`` from other
random layers.
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

from torch import nn
from transformers import AutoConfig, AutoTokenizer

from layerdrop.config.args import DistillConfig, TrainConfig, build
from layerdrop.config.recipes import CompareConfig
from layerdrop.core.apply import only_layers
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import every_other, layers_at, parse_depths
from layerdrop.errors import InputError
from layerdrop.evaluation.comparison import (
    METHODS,
    Method,
    Row,
    plot,
    read_report,
    tables,
    title_of,
    trained_from_scratch,
)
from layerdrop.evaluation.measure import higher_is_better, interleaved_latency_ms, parameters_at, validation_scorers
from layerdrop.files import atomic_dir, write_json, write_text
from layerdrop.models import presets
from layerdrop.models.loading import META_FILE, from_pretrained, load_saved, local_folder, read_meta
from layerdrop.training.checkpoints import drop_resume_state

from . import distill, train
from .prune_saved import prune_saved
from .steps import changed_settings, splits

__all__ = ["METHODS", "CompareResult", "Method", "Row", "plot", "read_report", "run_compare", "tables"]


@dataclass(frozen=True)
class CompareResult:
    """What ``layerdrop compare`` measured and wrote."""

    out: Path
    metric: str
    """``accuracy`` or ``perplexity``: what every row's scores are."""
    rows: list[Row]
    full_minutes: dict[str, float]
    """Training minutes of the full-depth plain and LayerDrop runs."""
    table: str
    """compare.md's tables."""


def _names(text: str, known: dict[str, Any] | None, what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise InputError(f"no {what} in {text!r}")
    unknown = [n for n in names if known is not None and n not in known]
    if unknown:
        raise InputError(f"unknown {what} {unknown}; choose from {', '.join(known or ())}")
    return names


def check(cfg: CompareConfig) -> tuple[list[str], list[int], list[int]]:
    """The methods, depths and seeds ``cfg`` names; ``ValueError`` for a bad one, before anything runs."""
    methods = _names(cfg.methods, METHODS, "method")
    depths = list(parse_depths(cfg.depths))
    try:
        seeds = list(dict.fromkeys(int(s) for s in _names(cfg.seeds, None, "seed")))
    except ValueError:
        raise InputError(f"--seeds takes comma-separated integers, like 0,1, got {cfg.seeds!r}") from None
    if cfg.heal_epochs <= 0 or cfg.epochs <= 0:
        raise InputError("--epochs and --heal-epochs must be above 0")
    if cfg.max_steps < 0 or cfg.heal_steps < 0:
        raise InputError("--max-steps and --heal-steps count steps: 0 or more")
    if cfg.heal_steps and not cfg.max_steps:
        raise InputError("--heal-steps goes with --max-steps; without it, give --heal-epochs")
    if trained_from_scratch(cfg.model) and cfg.freeze_embeddings:
        raise InputError(f"--freeze-embeddings keeps pretrained word embeddings; {cfg.model!r} is built from scratch "
                         "with random ones: compare it without the flag")
    if trained_from_scratch(cfg.model) and "top-dropped" in methods:
        if cfg.methods != _DEFAULT_METHODS:
            raise InputError(f"{cfg.model} is trained from scratch, so top-dropped would be fixed-depth from other "
                             "random layers: leave it out of --methods")
        methods.remove("top-dropped")
    return methods, depths, seeds


_DEFAULT_METHODS = CompareConfig.methods


def task_for(model: str) -> str:
    """What compare trains ``model`` for: ``clm`` for a decoder (a GPT-2 or Llama preset, a
    ``*ForCausalLM`` folder), else ``classification``.

    >>> task_for("gpt2-tiny"), task_for("bert-tiny")
    ('clm', 'classification')
    """
    if model in presets.PRESETS:
        return "clm" if "clm" in presets.PRESETS[model].tasks else "classification"
    names = from_pretrained(AutoConfig, local_folder(model)).architectures or ()
    return "clm" if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names) else "classification"


def _from_scratch(cfg: CompareConfig, task: str, base: TrainConfig, out: Path) -> str:
    """The untrained preset every method (and every seed) starts from, written once to
    ``out/init``, its tokenizer trained on the training split as ``layerdrop train`` would."""
    folder = out / "init"
    made_from = {"model": cfg.model, "data": cfg.data, "train_rows": cfg.train_rows, "vocab_size": base.vocab_size}
    if (folder / "config.json").is_file():
        shown = changed_settings(read_meta(folder).get("compare_init", {}), made_from)
        if shown:
            raise InputError(f"{folder} was built for other settings ({shown}): choose another --out")
        return str(folder)
    preset = presets.PRESETS[cfg.model]
    train_split = splits(task, cfg.data, 0, base.inputs)[0]
    tokenizer = presets.train_tokenizer(train_split.texts, preset.tokenizer_kind, vocab_size=base.vocab_size)
    model = presets.build(cfg.model, tokenizer, task=task, seed=0)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, {"compare_init": made_from})
    return str(folder)


def _minutes(model_dir: Path) -> float:
    meta = read_meta(model_dir)
    return (meta.get("train_seconds", 0.0) + meta.get("teacher_cache_seconds", 0.0)) / 60


def run_compare(cfg: CompareConfig, log: Callable[[str], None] = lambda _: None) -> CompareResult:
    """Train every method at every depth (or reuse finished runs), score them all on the test split, write the
    report."""
    # 1. validate; the settings every training shares; a preset is built once, untrained
    methods, depths, seeds = check(cfg)
    task = task_for(cfg.model)
    out = Path(cfg.out)
    head_lr = cfg.head_lr if task == "classification" else None  # a decoder's untied output layer is no new head
    common = dict(data=cfg.data, train_rows=cfg.train_rows or None, eval_rows=cfg.eval_rows or None, epochs=cfg.epochs,
                  max_steps=cfg.max_steps or -1, batch_size=cfg.batch_size, lr=cfg.lr, head_lr=head_lr,
                  max_length=cfg.max_length, freeze_embeddings=cfg.freeze_embeddings, progress=cfg.progress,
                  save_steps=100)
    base = TrainConfig.from_flat(task=task, model=cfg.model, out="", rate=0.0, **common)
    start = _from_scratch(cfg, task, base, out) if trained_from_scratch(cfg.model) else cfg.model
    heal = {"epochs": cfg.heal_epochs, "max_steps": (cfg.heal_steps or cfg.max_steps // 2) if cfg.max_steps else -1}

    def finished(model_dir: Path) -> Path:
        if not cfg.keep_checkpoints:  # the exported model is what the comparison needs; the logs stay
            drop_resume_state(model_dir.parent / "checkpoints")
        return model_dir

    def fine_tune(model: str, name: str, seed: int = 0, **layerdrop: Any) -> Path:
        log(f"training {name}")
        split = {"split_seed": 0} if seed else {}  # every seed trains and scores on seed 0's split
        return finished(train.run_or_reuse(base.replace(model=model, out=str(out / name), seed=seed, **split,
                                                        **layerdrop)))

    def distil(teacher: Path, name: str, depth: int, seed: int, **length: Any) -> Path:
        log(f"distilling {name}")
        return finished(distill.run_or_reuse(build(DistillConfig, {
            **common, "teacher": str(teacher), "out": str(out / name), "depth": depth, "seed": seed, **length,
            **({"split_seed": 0} if seed else {})})))

    def cut(name: str, depth: int | None = None, keep: list[int] | None = None) -> Path:
        if not (out / name / META_FILE).is_file():
            prune_saved(start, out / name, depth=depth, keep=keep)
        return out / name

    # 2. the full-depth models every cut and teacher comes from
    plain = fine_tune(start, "plain")
    needs_ld = any(METHODS[m].full == "layerdrop" for m in methods)
    ld = fine_tune(start, "layerdrop", rate=cfg.rate, pattern=cfg.pattern, self_distill=cfg.self_distill) \
        if needs_ld else None
    model = load_saved(str(plain)).eval()
    num_layers = len(find_layers(model).layers)
    depths = [d for d in depths if d <= num_layers]
    if not depths:
        raise InputError(f"no depth of --depths is at most the model's {num_layers} layers")
    trained: dict[tuple[str, int], list[Path]] = {}
    weights: dict[str, Any] = {"depths": ",".join(map(str, sorted({num_layers, *depths}, reverse=True))),
                               "alpha_task": cfg.alpha_task, "alpha_kd": cfg.alpha_kd}  # the elastic runs'
    elastic = fine_tune(start, "elastic", **weights) if "elastic" in methods else None  # one run for every depth
    if elastic is not None:  # its other seeds serve the shallowest depth
        trained[("elastic", min(depths))] = [fine_tune(start, f"elastic-seed{seed}", seed, **weights)
                                              for seed in seeds[1:] if min(depths) < num_layers]

    # 3. one model per method, depth and seed that trains per depth
    def healed(tag: str, depth: int, seed: int) -> Path:  # the LayerDrop run cut to depth, then distilled
        assert ld is not None  # needs_ld: layerdrop-healed's full-depth model is the LayerDrop run
        return distil(ld, f"layerdrop-healed{tag}", depth, seed, **heal)

    for depth in (d for d in depths if d < num_layers):
        for seed in seeds if depth == min(depths) else seeds[:1]:
            tag = f"{depth}" + (f"-seed{seed}" if seed else "")
            runs = {  # the loop's values bound as defaults: each lambda trains this depth and seed
                "layerdrop-healed": lambda tag=tag, depth=depth, seed=seed: healed(tag, depth, seed),
                "fixed-depth": lambda tag=tag, depth=depth, seed=seed: fine_tune(
                    str(cut(f"cut{depth}", depth=depth)), f"fixed{tag}", seed),
                "distilled": lambda tag=tag, depth=depth, seed=seed: distil(plain, f"distilled{tag}", depth, seed),
                "top-dropped": lambda tag=tag, depth=depth, seed=seed: fine_tune(
                    str(cut(f"bottom{depth}", keep=list(range(depth)))), f"top-dropped{tag}", seed),
            }
            for name in methods:
                if METHODS[name].per_depth:
                    trained.setdefault((name, depth), []).append(runs[name]())

    # 4. score every row on the same test rows; latency and size per depth
    log("scoring")
    full_runs = {"plain": plain, **({"layerdrop": ld} if ld else {}), **({"elastic-full": elastic} if elastic else {})}
    rows, metric, full_minutes = _score(cfg, model, full_runs, trained, methods, depths)

    # 5. write the report
    table = _report(cfg, out, metric, rows, full_minutes, num_layers)
    return CompareResult(out=out, metric=metric, rows=rows, full_minutes=full_minutes, table=table)


def _score(cfg: CompareConfig, model: nn.Module, full_runs: dict[str, Path], trained: dict[tuple[str, int], list[Path]],
           methods: list[str], depths: list[int]) -> tuple[list[Row], str, dict[str, float]]:
    """Every row of the comparison, scored on the same test rows, with each depth's latency and size:
    the full-depth runs (``model`` is the plain one, loaded) cut to each depth, and the runs trained per depth."""
    num_layers = len(find_layers(model).layers)
    tokenizer = from_pretrained(AutoTokenizer, local_folder(str(full_runs["plain"])))
    scorers = validation_scorers(model, tokenizer, cfg.data, rows=cfg.eval_rows or 10**9, batch_size=cfg.batch_size,
                                 max_length=cfg.max_length)
    batch = scorers.calibration[0]
    full_minutes = {name: _minutes(folder) for name, folder in full_runs.items()}
    full_models = {name: model if name == "plain" else load_saved(str(folder)).eval()
                   for name, folder in full_runs.items()}
    rows: list[Row] = []
    cuts_timed = {depth: every_other(num_layers, depth) for depth in depths}  # in turn, so drift touches all alike
    ms_at = dict(zip(depths, interleaved_latency_ms([(model, cuts_timed[d]) for d in depths], batch,
                                                     cfg.latency_reps), strict=True))

    def cut_score(full_model: nn.Module, depth: int) -> float:  # at the layers it records, else every-other
        with only_layers(full_model, layers_at(full_model.config, num_layers, depth)):
            return scorers.test(full_model)

    for depth in depths:
        kept, ms = cuts_timed[depth], ms_at[depth]
        size = parameters_at(model, kept)
        cuts = {run_name: cut_score(full_model, depth) for run_name, full_model in full_models.items()}
        if depth == num_layers:  # the full-depth runs themselves, once each
            rows += [Row(run_name, depth, kept, (cuts[run_name],), size, ms, full_minutes[run_name])
                     for run_name in full_runs]
            continue
        for name in methods:
            method = METHODS[name]
            if not method.per_depth:  # a cut of its full run (and of the other seeds' runs, where there are some)
                others = [cut_score(load_saved(str(f)).eval(), depth) for f in trained.get((name, depth), [])]
                scores: tuple[float, ...] = (cuts[method.full], *others)
                shown_kept, minutes = layers_at(full_models[method.full].config, num_layers, depth), 0.0
            else:
                folders = trained[(name, depth)]
                scores = tuple(scorers.test(load_saved(str(f)).eval()) for f in folders)
                shown_kept = tuple(range(depth)) if name == "top-dropped" else kept
                minutes = _minutes(folders[0])
            rows.append(Row(name, depth, shown_kept, scores, size, ms, minutes))
    return rows, scorers.metric, full_minutes


def _report(cfg: CompareConfig, out: Path, metric: str, rows: list[Row], full_minutes: dict[str, float],
            num_layers: int) -> str:
    scratch = trained_from_scratch(cfg.model)
    table = tables(rows, metric, full_minutes, num_layers, scratch=scratch)
    batch = "the first validation batch"
    better = "higher" if higher_is_better(metric) else "lower"
    write_text(out / "compare.md", f"# layerdrop compare: `{cfg.model}` on `{cfg.data}`\n\n"
               f"{metric.capitalize()} on the test split ({cfg.eval_rows or 'all'} rows; {better} is better); "
               f"latency: median of {cfg.latency_reps} forwards of {batch} ({cfg.batch_size} examples, up to "
               f"{cfg.max_length} tokens), every depth timed in turn; ★: Pareto front of {metric} against latency "
               f"over all rows; "
               f"training minutes: the Trainer's wall time (for a distillation also its teacher's cached "
               f"logits).\n\n{table}")
    buf = io.StringIO()
    csv.writer(buf).writerows([["method", "depth", "kept", metric, f"seed_{metric}", "parameters", "latency_ms",
                                "training_minutes"],
                               *[[r.method, r.depth, " ".join(map(str, r.kept)), round(r.score, 6),
                                  " ".join(f"{s:.6f}" for s in r.scores), r.parameters, round(r.latency_ms, 3),
                                  round(r.minutes, 2)] for r in rows]])
    write_text(out / "compare.csv", buf.getvalue())
    write_json(out / "compare.json", {"config": dataclasses.asdict(cfg), "metric": metric, "full_minutes": full_minutes,
                                      "layers": num_layers, "from_scratch": scratch,
                                      "rows": [{**dataclasses.asdict(r), "score": r.score} for r in rows],
                                      "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    title = title_of(cfg.model, cfg.data)
    plot(rows, metric, full_minutes, out / "quality_vs_latency.png", title=title, scratch=scratch)
    plot(rows, metric, full_minutes, out / "quality_vs_training.png", against="training", title=title,
         scratch=scratch)
    return table
