"""The offline demo: LayerDrop against plain training, at every depth, on real data.

(a) MiniLM-L6 fine-tuned on Rotten Tomatoes without LayerDrop and as one elastic run (``layerdrop train
    --depths``: each step also trains the every-other sub-networks of the served depths; ``elastic=False``:
    the earlier demo's random dropping), then cut every-other to each depth 1..6 with no further training.
(b) A small GPT-2-style LM trained from scratch on the King James Bible the same two ways: test perplexity
    at each depth.
(c) PNG plots, a Markdown report and the pruned checkpoints, in one folder.

With ``references`` (on with ``full``, the quality-bar run) MiniLM-L6 is also pruned every-other to each
reference depth *first* and then fine-tuned without LayerDrop: the separately trained model that "depth on
demand" must match.

Every number in the report is measured by the run that writes it. A run that stops is resumed by running the
same command again: finished trainings are reused, unfinished ones continue from their last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithPadding

from layerdrop import data
from layerdrop.config.args import TrainConfig
from layerdrop.config.recipes import DemoConfig
from layerdrop.core.depths import every_other, parse_depths
from layerdrop.data import encode_classification, lm_eval_blocks
from layerdrop.evaluation.measure import DepthResult, accuracy, depth_sweep, perplexity
from layerdrop.evaluation.report import cost_table, depth_table, plot_quality_vs_depth, plot_quality_vs_latency
from layerdrop.files import write_json, write_text
from layerdrop.models.loading import from_pretrained, load_classifier, local_folder, read_meta

from .prune_saved import prune_saved
from .train import finished_run, run_or_reuse

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo wrote."""

    out: Path
    """The output folder."""
    report: Path
    """The Markdown report."""
    tables: dict[str, str]
    """Markdown tables by part ("classification", "language model")."""
    verdict: list[str]
    """What the demo must show, one line per condition with its numbers, then a summary sentence."""
    seconds: float
    """Wall time."""


LATENCY_BATCH = 32
"""Test rows (or LM blocks) in the batch whose forward is timed at each depth."""

REFERENCE_DEPTHS = (4, 3)
"""Depths at which ``references`` trains a separately pruned-then-fine-tuned MiniLM-L6."""


def _sizes(cfg: DemoConfig) -> dict[str, Any]:
    if cfg.full:
        return {"rt_rows": None, "rt_eval": None, "rt_epochs": cfg.rt_epochs, "lm_steps": cfg.lm_steps * 2}
    return {"rt_rows": cfg.rt_rows, "rt_eval": cfg.rt_eval_rows, "rt_epochs": cfg.rt_epochs, "lm_steps": cfg.lm_steps}


def _native_bf16() -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU that does, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 autocast is emulated, and slower than float32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)  # private probes, present in torch 2.x; absent means "don't know"
    return any(getattr(cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def _bf16(cfg: DemoConfig) -> bool:
    return _native_bf16() if cfg.bf16 is None else cfg.bf16


Part = Literal["rt", "lm"]
"""The demo's two parts: (a) the Rotten Tomatoes classifier, (b) the KJV language model."""


def _rate_and_depths(cfg: DemoConfig, part: Part) -> tuple[float, str]:
    return (cfg.rt_rate, cfg.rt_depths) if part == "rt" else (cfg.lm_rate, cfg.lm_depths)


def _layerdrop(cfg: DemoConfig, part: Part) -> dict[str, Any]:
    """The LayerDrop run's own settings: one elastic run for the part's depths (every-other layers), or
    random dropping at its rate."""
    rate, depths = _rate_and_depths(cfg, part)
    if cfg.elastic:  # no head per depth: on validation rows they changed depth 3 by -0.5, 2 by +0.3, for a minute
        served = ",".join(map(str, parse_depths(depths)))  # one record, however the depths were written
        return {"depths": served, "strategy": "every-other", **({"depth_heads": False} if part == "rt" else {})}
    return {"rate": rate, "self_distill": cfg.self_distill, "pattern": cfg.pattern}


def _rt_config(cfg: DemoConfig, sizes: dict[str, Any], out: Path, model: str, layerdrop: bool) -> TrainConfig:
    return TrainConfig.from_flat(
        task="classification", model=model, data="rotten-tomatoes", out=str(out), seed=cfg.seed,
        epochs=sizes["rt_epochs"], **(_layerdrop(cfg, "rt") if layerdrop else {"rate": 0.0}),
        train_rows=sizes["rt_rows"], eval_rows=sizes["rt_eval"], batch_size=32, lr=5e-5, head_lr=1e-3,
        max_length=64, pooling="mean", bf16=_bf16(cfg), save_steps=200, logging_steps=25, progress=cfg.progress,
        evaluate=False,  # the depth sweeps below score the test split
    )


def _rt_test(cfg: DemoConfig, sizes: dict[str, Any], tc: TrainConfig, model_dir: Path, split: str = "test"
             ) -> tuple[Callable[[Any], float], dict[str, Any]]:
    """The accuracy scorer on the demo's test rows (or validation rows, to choose settings on),
    and a batch of them (no labels) to time."""
    tokenizer = from_pretrained(AutoTokenizer, model_dir)
    test = getattr(data.load("rotten-tomatoes", seed=cfg.seed), split)
    if sizes["rt_eval"]:
        test = test.subset(range(min(sizes["rt_eval"], len(test))))
    rows, _ = encode_classification(tokenizer, test, tc.inputs.max_length, desc=split)
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    batch = {k: v for k, v in collate(rows[:LATENCY_BATCH]).items() if k != "labels"}
    return (lambda m: accuracy(m, rows, collate)), batch


def _train_minutes(model_dir: Path) -> float | None:
    """Training minutes recorded by ``layerdrop train`` (``None`` for a run saved before they were)."""
    seconds = read_meta(model_dir).get("train_seconds")
    return None if seconds is None else seconds / 60


def _run(cfg: DemoConfig, sizes: dict[str, Any], out: Path, part: Part, layerdrop: bool) -> TrainConfig:
    """One part's plain or LayerDrop training, in its own folder of ``out``."""
    folder = out / _slug(cfg, part, layerdrop)
    return (_rt_config(cfg, sizes, folder, "minilm-l6", layerdrop) if part == "rt" else
            _lm_config(cfg, sizes, folder, layerdrop))


def _classification(cfg: DemoConfig, out: Path, sizes: dict[str, Any], minutes: dict[str, float | None]
                    ) -> dict[str, list[DepthResult]]:
    series: dict[str, list[DepthResult]] = {}
    for label, layerdrop in (("no LayerDrop", False), (_label(cfg, "rt"), True)):
        tc = _run(cfg, sizes, out, "rt", layerdrop)
        model_dir = run_or_reuse(tc)
        minutes[f"classification, {label}"] = _train_minutes(model_dir)
        model = load_classifier(model_dir)
        score, batch = _rt_test(cfg, sizes, tc, model_dir)
        series[label] = depth_sweep(model, score, latency_batch=batch, progress=cfg.progress,
                                    desc=f"depths ({label})")
        if layerdrop:
            prune_saved(str(model_dir), out / "checkpoints" / "minilm-rt-layerdrop-depth3", depth=3,
                        model=model)
    if cfg.references or cfg.full:
        series["pruned first, then fine-tuned"] = _references(cfg, out, sizes)
    return series


def _references(cfg: DemoConfig, out: Path, sizes: dict[str, Any]) -> list[DepthResult]:
    """MiniLM-L6 cut every-other to each reference depth, then fine-tuned without LayerDrop."""
    results = []
    for depth in REFERENCE_DEPTHS:
        base = out / f"minilm-l6-depth{depth}"
        if not (base / "config.json").is_file():
            prune_saved(local_folder("minilm-l6"), base, depth=depth)
        tc = _rt_config(cfg, sizes, out / f"rt-reference-depth{depth}", str(base), layerdrop=False)
        model_dir = run_or_reuse(tc)
        model = load_classifier(model_dir)
        score = _rt_test(cfg, sizes, tc, model_dir)[0](model)
        n_params = sum(p.numel() for p in model.parameters())
        results.append(DepthResult(depth, every_other(6, depth), score, n_params))
    return results


def _slug(cfg: DemoConfig, part: Part, layerdrop: bool) -> str:
    """The run's folder name: ``rt-plain``, ``rt-elastic-6-3-2``, ``kjv-layerdrop0.5-every-other``."""
    task = "rt" if part == "rt" else "kjv"
    rate, depths = _rate_and_depths(cfg, part)
    if not layerdrop:
        return f"{task}-plain"
    if cfg.elastic:
        return f"{task}-elastic-" + "-".join(map(str, parse_depths(depths)))
    return f"{task}-layerdrop{rate:g}" + (f"-{cfg.pattern}" if cfg.pattern != "random" else "")


def _label(cfg: DemoConfig, part: Part) -> str:
    rate, depths = _rate_and_depths(cfg, part)
    if cfg.elastic:
        return "elastic, depths " + ", ".join(map(str, parse_depths(depths)))
    return f"LayerDrop {rate}" + (f", {cfg.pattern}" if cfg.pattern != "random" else "")


def _lm_config(cfg: DemoConfig, sizes: dict[str, Any], out: Path, layerdrop: bool) -> TrainConfig:
    return TrainConfig.from_flat(
        task="clm", model="gpt2-tiny", data="kjv", out=str(out), seed=cfg.seed, max_steps=sizes["lm_steps"],
        **(_layerdrop(cfg, "lm") if layerdrop else {"rate": 0.0}),
        batch_size=16, lr=1e-3, warmup=0.05, lr_schedule="cosine", max_length=128, vocab_size=4000,
        bf16=_bf16(cfg), save_steps=200, logging_steps=50, progress=cfg.progress,
        evaluate=False,  # the depth sweep below scores the test split
    )


def _kjv_texts(cfg: DemoConfig, split: str) -> list[str]:
    """The KJV paragraphs the demo scores: the first ``lm_eval_rows`` of ``split`` (all with ``full``)."""
    texts = getattr(data.load("kjv", seed=cfg.seed), split).texts
    return list(texts) if cfg.full else list(texts[:cfg.lm_eval_rows])


def _lm_test(cfg: DemoConfig, tc: TrainConfig, model_dir: Path, split: str = "test"
             ) -> tuple[Callable[[Any], float], dict[str, Any]]:
    """The perplexity scorer on the demo's KJV test paragraphs (or validation ones, to choose
    settings on), and a batch of blocks (no labels) to time."""
    tokenizer = from_pretrained(AutoTokenizer, model_dir)
    blocks, collate = lm_eval_blocks(tokenizer, _kjv_texts(cfg, split), tc.inputs.max_length)
    batch = {k: v for k, v in collate(blocks[:LATENCY_BATCH]).items() if k != "labels"}
    return (lambda m: perplexity(m, blocks, collate)), batch


def _language_model(cfg: DemoConfig, out: Path, sizes: dict[str, Any], minutes: dict[str, float | None]
                    ) -> dict[str, list[DepthResult]]:
    series: dict[str, list[DepthResult]] = {}
    for label, layerdrop in (("no LayerDrop", False), (_label(cfg, "lm"), True)):
        tc = _run(cfg, sizes, out, "lm", layerdrop)
        model_dir = run_or_reuse(tc)
        minutes[f"language model, {label}"] = _train_minutes(model_dir)
        model = from_pretrained(AutoModelForCausalLM, model_dir).eval()
        score, batch = _lm_test(cfg, tc, model_dir)
        series[label] = depth_sweep(model, score, latency_batch=batch, progress=cfg.progress,
                                    desc=f"depths ({label})")
        if layerdrop:
            half = model.config.num_hidden_layers // 2
            prune_saved(str(model_dir), out / "checkpoints" / "gpt2-kjv-layerdrop-half", depth=half,
                        model=model)
    return series


def _verdict(series: dict[str, list[DepthResult]], higher_is_better: bool) -> str:
    (plain_name, plain), (ld_name, ld) = list(series.items())[:2]
    by_plain = {r.depth: r.score for r in plain}
    wins = [r.depth for r in ld if (r.score > by_plain[r.depth]) == higher_is_better and r.score != by_plain[r.depth]]
    losses = [r.depth for r in ld if r.depth not in wins and r.score != by_plain[r.depth]]
    parts = [f"{ld_name} is better at depths {wins}" if wins else f"{ld_name} is better at no depth"]
    if losses:
        parts.append(f"worse at depths {losses}")
    return "; ".join(parts) + "."


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _demo_bar(cls: dict[str, list[DepthResult]], lm: dict[str, list[DepthResult]]) -> list[str]:
    """What the demo must show, checked on this run's numbers: one line per condition, then one
    sentence saying how many were met."""
    (_, plain), (name, ld) = list(cls.items())[:2]
    p, d = {r.depth: 100 * r.score for r in plain}, {r.depth: 100 * r.score for r in ld}
    full = max(p)
    checks = [(d[full] - p[full] >= -1, f"classification, full depth: {name} {d[full]:.1f} % against "
               f"{p[full]:.1f} % without LayerDrop ({d[full] - p[full]:+.1f} points; bar: at most 1 below)")]
    checks += [(d[k] - p[k] >= 3, f"classification, {k} layers: {d[k]:.1f} % against {p[k]:.1f} % for the plain "
                f"model cut the same way ({d[k] - p[k]:+.1f} points; bar: at least 3 above)") for k in (3, 2)]
    (_, lm_plain), (_, lm_ld) = list(lm.items())[:2]
    q, e = {r.depth: r.score for r in lm_plain}, {r.depth: r.score for r in lm_ld}
    top, half = max(e), max(e) // 2
    rise = 100 * (e[half] / e[top] - 1)
    checks.append((rise <= 5, f"language model, half depth ({half} of {top} layers): perplexity {e[half]:.1f} "
                   f"against {e[top]:.1f} at full depth ({rise:+.1f} %; bar: within 5 %)"))
    shallow = [k for k in sorted(e) if k <= 3]
    worse = [k for k in shallow if e[k] >= q[k]]
    checks.append((not worse, "language model, depths " + ", ".join(map(str, shallow)) + ": perplexity "
                   + ", ".join(f"{e[k]:.1f} against {q[k]:.1f}" for k in shallow)
                   + " for the plain LM cut the same way (bar: better at each)"))
    gap = 100 * (e[top] / q[top] - 1)
    checks.append((gap <= 10, f"language model, full depth: perplexity {e[top]:.1f} against {q[top]:.1f} without "
                   f"LayerDrop ({gap:+.1f} %; bar: within 10 %)"))
    lines = [f"- {text}: {_met(ok)}." for ok, text in checks]
    missed = len([ok for ok, _ in checks if not ok])
    summary = (f"In short: {len(checks) - missed} of {len(checks)} conditions met. "
               + ("One LayerDrop model keeps near full quality at full depth and stays clearly better than the "
                  "plain model when both are cut." if not missed else
                  "Where a line says not met, these few minutes of training were not enough for LayerDrop to "
                  "show it; docs/results.md lists what was tried and the full-size run (about two hours) "
                  "that measures it."))
    return [*lines, "", summary]


def _quality_bar(cls: dict[str, list[DepthResult]], lm: dict[str, list[DepthResult]]) -> list[str]:
    """The issue's bar, checked on this run's numbers: one line per condition, met or not."""
    (_, plain), (ld_name, ld), *rest = cls.items()
    plain_at, ld_at = {r.depth: r.score for r in plain}, {r.depth: r.score for r in ld}
    lines = []
    reference = {6: plain_at[6], **({r.depth: r.score for r in rest[0][1]} if rest else {})}
    for depth, ref in sorted(reference.items(), reverse=True):
        diff = 100 * (ld_at[depth] - ref)
        lines.append(f"- depth {depth}: {ld_name} {100 * ld_at[depth]:.1f} % against the reference "
                     f"{100 * ref:.1f} % ({diff:+.1f} points; bar: at most 2 below): "
                     f"{'met' if diff >= -2 else 'not met'}.")
    diff = 100 * (ld_at[6] - plain_at[6])
    lines.append(f"- full depth against no LayerDrop: {diff:+.1f} points (bar: at most 1 below): "
                 f"{'met' if diff >= -1 else 'not met'}.")
    (_, lm_plain), (lm_name, lm_ld) = list(lm.items())[:2]
    full, half = lm_ld[-1], next(r for r in lm_ld if r.depth == lm_ld[-1].depth // 2)
    rise = 100 * (half.score / full.score - 1)
    plain_full, plain_half = lm_plain[-1], next(r for r in lm_plain if r.depth == half.depth)
    lines.append(f"- language model, {lm_name} at half depth: perplexity {half.score:.1f} against "
                 f"{full.score:.1f} at full depth ({rise:+.1f} %; bar: within 15 %): "
                 f"{'met' if rise <= 15 else 'not met'}; without LayerDrop {plain_half.score:.1f} against "
                 f"{plain_full.score:.1f} ({100 * (plain_half.score / plain_full.score - 1):+.1f} %).")
    return lines


def _precision(cfg: DemoConfig) -> str:
    if not _bf16(cfg):
        return "Training in float32" + (" (this machine does not compute bfloat16 natively)."
                                        if cfg.bf16 is None else ".")
    return ("Training under bfloat16 autocast with float32 master weights"
            + (" (on by default where the CPU or GPU computes bfloat16 natively: same accuracy within noise, "
               "about two thirds of the float32 training time; docs/results.md)." if cfg.bf16 is None else "."))


def _recipe(cfg: DemoConfig, part: Part) -> str:
    """How the LayerDrop run of one part was trained, in a sentence."""
    rate, depths = _rate_and_depths(cfg, part)
    if not cfg.elastic:
        return (f"LayerDrop run: rate {rate}" + (", self-distilled" if cfg.self_distill else "")
                + (", every-other sub-networks" if cfg.pattern == "every-other" else "") + ".")
    served = ", ".join(map(str, parse_depths(depths)))
    return (f"Elastic run (`--depths {depths} --strategy every-other`): each step the full network "
            f"learns the task, and the every-other sub-network of each of depths {served} learns 0.5 × the task "
            "+ 0.5 × the full network's predictions (KL, T = 2) in the same step"
            + ("; one head serves every depth (`--no-depth-heads`)." if part == "rt" else "."))


class _Clock:
    """Minutes spent on one output folder over every invocation, kept in ``timing.json``.

    A stopped run is resumed by running the demo again, so one invocation's time is
    not the run's time. Each invocation's minutes are written after every stage.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / "timing.json"
        self.start = time.time()
        earlier = json.loads(self.path.read_text()).get("invocations", []) if self.path.is_file() else []
        self.earlier: list[float] = [float(m) for m in earlier]

    def tick(self) -> None:
        write_json(self.path, {"invocations": [*self.earlier, self.now]})

    @property
    def now(self) -> float:
        """Minutes of this invocation so far."""
        return (time.time() - self.start) / 60

    @property
    def total(self) -> float:
        """Minutes of every invocation so far, this one included."""
        return sum(self.earlier) + self.now

    def describe(self) -> str:
        if not self.earlier:
            return f"in {self.now:.1f} minutes"
        return (f"in {self.total:.1f} minutes over {len(self.earlier) + 1} invocations "
                f"({self.now:.1f} in the last one, which reused the finished trainings)")


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = lambda _: None) -> DemoResult:
    """Run the demo; ``log`` receives one line per stage (the CLI prints them)."""
    out = Path("out/demo-full" if cfg.full and cfg.out == DemoConfig.out else cfg.out)
    sizes = _sizes(cfg)
    for part, layerdrop in itertools.product(("rt", "lm"), (False, True)):  # an earlier demo's finished runs are
        finished_run(_run(cfg, sizes, out, cast(Part, part), layerdrop))   # refused here, before any training
    clock = _Clock(out)
    log(f"(a) MiniLM-L6 on Rotten Tomatoes: no LayerDrop, then {_label(cfg, 'rt')}")
    minutes: dict[str, float | None] = {}
    cls = _classification(cfg, out, sizes, minutes)
    clock.tick()
    log(f"(b) GPT-2-style LM on the King James Bible: no LayerDrop, then {_label(cfg, 'lm')}")
    lm = _language_model(cfg, out, sizes, minutes)
    clock.tick()

    plot_quality_vs_depth(cls, "accuracy", out / "classification.png", title="MiniLM-L6, Rotten Tomatoes (test)")
    plot_quality_vs_depth(lm, "perplexity", out / "language_model.png", title="GPT-2-style LM, KJV (test)")
    plot_quality_vs_latency(cls, "accuracy", out / "classification_latency.png",
                            title="MiniLM-L6: accuracy against latency")
    plot_quality_vs_latency(lm, "perplexity", out / "language_model_latency.png",
                            title="GPT-2-style LM: perplexity against latency")
    tables = {"classification": depth_table(cls, "accuracy"), "language model": depth_table(lm, "perplexity")}
    ld_cls, ld_lm = list(cls)[1], list(lm)[1]
    verdict = _demo_bar(cls, lm)
    trained = ", ".join(f"{name} {m:.1f} min" if m is not None else f"{name} (not recorded)"
                        for name, m in minutes.items())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    report = [
        "# layerdrop demo report", "",
        f"Measured by `layerdrop demo{' --full' if cfg.full else ''}` {clock.describe()}. "
        "Every model is pruned every-other after training, with no further training. "
        f"{_precision(cfg)}", "",
        "## (a) MiniLM-L6 fine-tuned on Rotten Tomatoes", "",
        f"Training rows: {sizes['rt_rows'] or 'all'}, epochs: {sizes['rt_epochs']:g}, mean pooling; "
        f"accuracy on {sizes['rt_eval'] or 'all'} test rows. "
        f"{_recipe(cfg, 'rt')}", "",
        tables["classification"], _verdict(cls, True), "",
        *(["The reference at depth k is MiniLM-L6 cut every-other to k layers first, then fine-tuned "
           "the same way without LayerDrop; at depth 6 it is the no-LayerDrop model.", ""]
          if len(cls) > 2 else []),
        "![accuracy by depth](classification.png)", "",
        "## (b) GPT-2-style language model on the King James Bible", "",
        f"Trained from scratch for {sizes['lm_steps']} steps (preset gpt2-tiny, tokenizer trained on the text). "
        f"{_recipe(cfg, 'lm')} "
        f"Perplexity on {len(_kjv_texts(cfg, 'test'))} KJV test paragraphs (lower is better).", "",
        tables["language model"], _verdict(lm, False), "", "![perplexity by depth](language_model.png)", "",
        "## Depth on demand: what each depth costs", "",
        f"Parameters of the model cut to each depth, and the median time of one eval forward of a batch of "
        f"{LATENCY_BATCH} test rows (KJV: {LATENCY_BATCH} blocks of 128 tokens), measured in this run on the "
        f"{ld_cls} model (the plain model has the same shape). Training time: {trained}. "
        f"Peak memory of the run: {peak_gb:.1f} GB.", "",
        cost_table(cls, "accuracy", ld_cls), cost_table(lm, "perplexity", ld_lm),
        "![accuracy against latency](classification_latency.png) "
        "![perplexity against latency](language_model_latency.png)", "",
        "## What the demo must show", "", *verdict, "",
        *(["## The quality bar", "", *_quality_bar(cls, lm), ""] if len(cls) > 2 else []),
        "## Files", "",
        "- `checkpoints/`: pruned LayerDrop models, each with `layerdrop.json`. The classifier is a "
        "sentence-transformers model (`SentenceTransformer(folder).encode(texts)` gives its logits; "
        "`AutoModel.from_pretrained(folder)` the encoder alone), the language model a plain "
        "`AutoModelForCausalLM`.",
        "- `results.json`: every number above.",
        "- `timing.json`: the minutes of each invocation that worked on this folder.", "",
    ]
    path = write_text(out / "report.md", "\n".join(report))
    write_json(out / "results.json", {
        "config": dataclasses.asdict(cfg),
        "classification": {k: [dataclasses.asdict(r) for r in v] for k, v in cls.items()},
        "language_model": {k: [dataclasses.asdict(r) for r in v] for k, v in lm.items()},
        "minutes": clock.total,
        "train_minutes": minutes,
        "peak_memory_gb": peak_gb,
    })
    clock.tick()
    return DemoResult(out=out, report=path, tables=tables, verdict=verdict, seconds=60 * clock.now)

