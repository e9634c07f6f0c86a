"""``layerdrop exits``: calibrate early exit with a guarantee on validation rows, measure it on test rows,
record it in the model.

1. The exits are the depths the model was trained to serve (``layerdrop train --depths``) and the full
   depth; nested depths resume each other, others run as a cascade (:func:`layerdrop.exits.plan`).
2. One pass over the validation and the test rows gives every row's answer at every exit: a text's class
   probabilities for a classifier, a window's start and end logits for a question-answering model
   (:mod:`layerdrop.exits.spans`, whose rows are questions and whose score is F1).
3. Each rule's threshold is calibrated on the validation rows (:mod:`layerdrop.exits.bound`), each at
   ``(1 - confidence) / rules`` so that choosing among the rules afterwards keeps the guarantee.
4. Each calibrated rule is measured on the test rows: accuracy (F1) against full depth, the realised drop
   beside the promised one, mean layers run and where rows leave; and its batch throughput against full
   depth, the two timed in turn on the same test batches.
5. The rule that runs fewest layers on the validation rows is written into the model's ``config.json``,
   where the server, :func:`layerdrop.exits.exit_predict` and :func:`layerdrop.exits.exit_spans` find it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DataCollatorWithPadding

from layerdrop.config.recipes import ExitsConfig
from layerdrop.core.arch import find_layers
from layerdrop.core.depths import parse_depths
from layerdrop.errors import InputError
from layerdrop.evaluation.measure import encoded_questions, encoded_rows
from layerdrop.evaluation.qa import is_qa_model
from layerdrop.evaluation.report import markdown_table, plot_exit_depths
from layerdrop.evaluation.timer import time_ms
from layerdrop.exits.bound import check_confidence, check_max_drop, rows_needed
from layerdrop.exits.calibrate import Labelled, Outcome, Scored, calibrate_rule, outcome
from layerdrop.exits.record import Exits, record_in_folder
from layerdrop.exits.rules import lookup
from layerdrop.exits.run import Stage, early_exit, stages_of
from layerdrop.exits.spans import early_exit_spans, score_spans
from layerdrop.files import write_json, write_text
from layerdrop.models.classifier import Classifier
from layerdrop.models.loading import from_pretrained, local_folder, read_meta

from .steps import saved_model

__all__ = ["ExitsConfig", "ExitsResult", "RuleResult", "run_exits"]


@dataclass(frozen=True)
class RuleResult:
    """One exit rule, calibrated and measured."""

    rule: str
    """Its name in the rule table."""
    max_drop: float
    """The drop (points) it was calibrated for."""
    threshold: float | None
    """The calibrated threshold; ``None`` when no threshold kept the guarantee (every row runs full depth)."""
    valid: Outcome
    """What it does on the validation rows that calibrated it."""
    test: Outcome
    """What it does on the test rows, measured once."""
    throughput: float | None
    """Test rows per second with early exit over full depth's, timed in turn on the same batches."""


@dataclass(frozen=True)
class ExitsResult:
    """What ``layerdrop exits`` measured and wrote."""

    out: Path
    """The output folder."""
    stages: tuple[Stage, ...]
    """The stages that ran the exits, shallowest first (nested ones resume)."""
    rules: tuple[RuleResult, ...]
    """Each rule at each drop."""
    recorded: Exits | None
    """What calibration chose (written into the model unless ``--no-record``), if any rule kept --max-drop."""
    table: str
    """The Markdown table of the test rows."""


def run_exits(cfg: ExitsConfig, log: Callable[[str], None] = lambda _: None) -> ExitsResult:
    """Calibrate, measure and record early exit for ``cfg.model``."""
    # 1. check the settings; the model, its exits and the stages that run them
    drops = _drops(cfg)
    check_confidence(cfg.confidence)
    for name in ("rows", "timing_batches"):
        if getattr(cfg, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.latency_reps < 1 or cfg.batch_size < 1:
        raise InputError("--latency-reps and --batch-size must be at least 1")
    rules = [lookup(name.strip()) for name in cfg.rules.split(",") if name.strip()]
    if not rules:
        raise InputError(f"--rules {cfg.rules!r} names no rule; choose from max-prob, entropy, patience")
    model = saved_model(cfg.model, record=cfg.record, what="the exits")
    qa = is_qa_model(model)
    if not (qa or isinstance(model, Classifier)):
        raise InputError(f"{cfg.model} is neither a layerdrop classifier nor a question-answering model: early exit "
                         "scores the head of one trained by layerdrop train classification or layerdrop train qa "
                         "(best with --depths 6,4,3)")
    num_layers = len(find_layers(model).layers)
    stages = stages_of(model, parse_depths(cfg.depths, num_layers) if cfg.depths else None)
    if len(stages) < 2:
        raise InputError(f"{cfg.model} records no depths to exit at: train it with layerdrop train --depths 6,4,3, "
                         "or name the exits with --depths")
    depths = tuple(s.depth for s in stages)
    layers_run = tuple(sum(len(s.blocks) for s in stages[:e + 1]) for e in range(len(stages)))

    # 2. every row's answer at every exit, on the validation and the test rows (a question's windows for QA)
    folder = local_folder(cfg.model)
    tokenizer = from_pretrained(AutoTokenizer, folder)
    trained = read_meta(folder).get("trained_with") or {}
    seed = int(trained["split_seed"] if trained.get("split_seed") is not None else trained.get("seed", 0))
    length = cfg.max_length or trained.get("max_length") or (384 if qa else 128)
    log("scoring every exit")
    valid: Scored
    test: Scored
    if qa:
        stride = None if trained.get("stride") is None else int(trained["stride"])  # None: the sweep's default
        questions = encoded_questions(tokenizer, cfg.data, seed=seed, max_length=length, stride=stride,
                                      rows=cfg.rows or None)
        collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        (valid, _), (test, test_batches) = (score_spans(model, encoding, part, collate, stages,
                                                        batch_size=cfg.batch_size, progress=cfg.progress, desc=name)
                                            for name, (part, encoding) in questions.items())
        exit_at: Callable[..., Any] = early_exit_spans
    else:
        encoded = encoded_rows(tokenizer, cfg.data, seed=seed, max_length=length, rows=cfg.rows or None)
        (valid, _), (test, test_batches) = (_labelled_rows(cast(Classifier, model), encoded[name], cfg, stages, name)
                                            for name in ("valid", "test"))
        exit_at = early_exit

    # 3. + 4. calibrate each rule at each drop on the validation rows; measure it on the test rows
    confidence = 1 - (1 - cfg.confidence) / len(rules)  # each rule's share of the error rate
    calibrated = [(rule, drop, threshold) for rule in rules for drop, threshold in zip(drops, calibrate_rule(
        valid, rule, max_drops=[d / 100 for d in drops], confidence=confidence), strict=True)]
    timed = test_batches[:cfg.timing_batches]
    log("timing full depth and each rule in turn")
    speed = _throughput(model, exit_at, stages, timed, calibrated, cfg.latency_reps) if timed else {}
    results = tuple(RuleResult(
        rule=rule.name, max_drop=drop, threshold=threshold,
        valid=outcome(valid, rule, threshold, layers=layers_run, depths=depths),
        test=outcome(test, rule, threshold, layers=layers_run, depths=depths),
        throughput=speed.get((rule.name, drop))) for rule, drop, threshold in calibrated)

    # 5. record the rule that runs fewest layers on the validation rows at --max-drop; write the report
    usable = [r for r in results if r.threshold is not None and r.max_drop == cfg.max_drop]
    recorded = None
    if usable:  # a drop that kept no threshold is recorded too: every row then runs full depth
        best = min(usable, key=lambda r: r.valid.mean_layers).rule
        thresholds = tuple((r.max_drop, r.threshold) for r in results if r.rule == best)
        recorded = Exits(best, depths, thresholds, cfg.max_drop, cfg.confidence, cfg.data, len(valid))
    if cfg.record:  # nothing kept the bound: an older record must not stand for this calibration
        record_in_folder(cfg.model, recorded)
    out = Path(cfg.out)
    table = _table(results, num_layers, len(valid), confidence, valid.metric)
    write_text(out / "exits.md", _report(cfg, stages, results, recorded, table, len(valid),
                                         len(test), len(timed), valid.metric))
    write_json(out / "exits.json", {
        "config": dataclasses.asdict(cfg), "stages": [dataclasses.asdict(s) for s in stages],
        "rules": [{**dataclasses.asdict(r), "valid": {**dataclasses.asdict(r.valid), "drop": r.valid.drop},
                   "test": {**dataclasses.asdict(r.test), "drop": r.test.drop}} for r in results],
        "recorded": dataclasses.asdict(recorded) if recorded else None, "valid_rows": len(valid),
        "test_rows": len(test), "threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    plot_exit_depths({r.rule: r.test.shares for r in results}, out / "exit_depths.png",
                     title=f"{Path(cfg.model).name}: where test {'windows' if qa else 'rows'} leave")
    return ExitsResult(out=out, stages=stages, rules=results, recorded=recorded, table=table)


def _labelled_rows(model: Classifier, encoded: tuple[list[dict[str, Any]], Callable[..., Any]], cfg: ExitsConfig,
                   stages: tuple[Stage, ...], name: str) -> tuple[Labelled, list[dict[str, Any]]]:
    """A classifier's texts of one split, each text's probabilities at every exit, and the batches that ran."""
    examples, collate = encoded
    probs, labels, batches = [], [], []
    for i in tqdm(range(0, len(examples), cfg.batch_size), desc=name, disable=not cfg.progress):
        batch = collate(examples[i:i + cfg.batch_size])
        labels.append(batch.pop("labels"))
        probs.append(early_exit(model, batch, stages).probs)
        batches.append(batch)
    return Labelled(torch.cat(probs), torch.cat(labels)), batches  # (N, E, C), (N,)


def _drops(cfg: ExitsConfig) -> tuple[float, ...]:
    """--max-drop and --more-drops, in points, smallest first."""
    try:
        more = [float(d) for d in cfg.more_drops.split(",") if d.strip()]
    except ValueError:
        raise InputError(f"--more-drops {cfg.more_drops!r}: give accuracy points, comma-separated, e.g. 0.25,1,2"
                         ) from None
    check_max_drop(cfg.max_drop, "--max-drop")
    for drop in more:
        check_max_drop(drop, "--more-drops")
    return tuple(sorted({cfg.max_drop, *more}))


@torch.no_grad()
def _throughput(model: Any, exit_at: Callable[..., Any], stages: tuple[Stage, ...], batches: list[dict[str, Any]],
                calibrated: list[tuple[Any, float, float | None]], reps: int) -> dict[tuple[str, float], float]:
    """Rows per second with each calibrated (rule, drop) over full depth's on ``batches``: full depth and each
    timed in turn, one pass over the batches each per round, after a warm-up round; the median round's ratio."""
    ratios: dict[tuple[str, float], list[float]] = {(r.name, d): [] for r, d, t in calibrated if t is not None}
    for round_ in range(1 + reps):
        full = _pass_ms(lambda b: model(**b), batches, model)
        for rule, drop, threshold in calibrated:
            if threshold is not None:
                took = _pass_ms(lambda b: exit_at(model, b, stages, rule, threshold), batches,  # noqa: B023
                                model)
                if round_:
                    ratios[(rule.name, drop)].append(full / took)
    return {key: statistics.median(r) for key, r in ratios.items() if r}


def _pass_ms(run: Callable[[dict[str, Any]], Any], batches: list[dict[str, Any]], on: Classifier) -> float:
    """Milliseconds of ``run`` over every batch, each call timed alone (the device synchronised)."""
    total = 0.0
    for batch in batches:
        total += time_ms(lambda: run(batch), on)  # noqa: B023 (called at once)
    return total


def _table(results: tuple[RuleResult, ...], num_layers: int, rows_valid: int, confidence: float, metric: str) -> str:
    rows = []
    for r in results:
        t = r.test
        needed = rows_needed(r.max_drop / 100, confidence)
        none = f"none (full depth){f'; needs ≥ {needed} rows' if needed > rows_valid else ''}"
        rows.append([
            r.rule, f"{r.max_drop:g}", none if r.threshold is None else f"{r.threshold:.6g}",
            f"{100 * t.accuracy:.1f} %", f"{100 * t.full_accuracy:.1f} %", f"{100 * t.drop:+.2f}",
            "yes" if 100 * t.drop <= r.max_drop else "no", f"{100 * t.harmful:.2f}",
            f"{t.mean_layers:.2f} ({100 * t.mean_layers / num_layers:.0f} %)",
            " / ".join(f"{d}: {100 * s:.0f} %" for d, s in t.shares.items()),
            "" if r.throughput is None else f"{r.throughput:.2f}×"])
    qa = metric == "f1"  # a question's windows leave each at its own exit
    return markdown_table(["rule", "max drop", "threshold", "F1" if qa else metric, "full depth", "drop (points)",
                           "within", "harmful (%)", "mean layers (per window)" if qa else "mean layers",
                           "windows leaving at" if qa else "rows leaving at", "throughput vs full"], rows)


def _report(cfg: ExitsConfig, stages: tuple[Stage, ...], results: tuple[RuleResult, ...], recorded: Exits | None,
            table: str, valid_rows: int, test_rows: int, timed: int, metric: str) -> str:
    how = ", ".join(f"{s.depth} ({'resumes' if s.resumes else 'from the start'}: layers "
                    f"{' '.join(map(str, s.blocks))})" for s in stages)
    each = 1 - (1 - cfg.confidence) / len({r.rule for r in results})  # each rule's confidence
    at = ", ".join(f"{'none' if t is None else f'{t:.6g}'} for {d:g} points" for d, t in recorded.thresholds
                   ) if recorded else ""
    chosen = (f"Recorded in `{cfg.model}/config.json`: `{recorded.rule}`, thresholds {at}."
              if recorded and cfg.record else
              f"Chosen (not recorded): `{recorded.rule}`, thresholds {at}." if recorded else
              f"No rule kept a drop of {cfg.max_drop:g} points on these {valid_rows} validation rows, so nothing is "
              f"recorded: a drop that small can pass only on {rows_needed(cfg.max_drop / 100, each)} rows or more; "
              "allow a larger --max-drop or a lower --confidence, or calibrate on more rows.")
    return (f"# layerdrop exits: `{cfg.model}` on `{cfg.data}`\n\n"
            f"Exits: {how}. Each rule's threshold was chosen on {valid_rows} validation rows so that, with "
            f"probability at least {cfg.confidence:g}, the {'F1' if metric == 'f1' else metric} early exit loses is at "
            f"most the row's max drop{' (rows are questions)' if metric == 'f1' else ''} "
            f"(Learn then Test, exact binomial bound on the harmful rows, each rule at its share of "
            f"{1 - cfg.confidence:.2g}); measured here on {test_rows} test rows. Throughput: batches of "
            f"{cfg.batch_size}, the first {timed} test batches, full depth and each rule timed in turn, median of "
            f"{cfg.latency_reps} rounds.\n\n{table}\n{chosen}\n")
