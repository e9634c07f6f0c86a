"""The offline demo: LayerDrop against plain training, at every depth, on real data.

(a) MiniLM-L6 fine-tuned on Rotten Tomatoes without and with LayerDrop, then
    cut every-other to each depth 1..6 with no further training: accuracy table.
(b) A small GPT-2-style LM trained from scratch on the King James Bible without
    and with LayerDrop: validation perplexity at each depth.
(c) PNG plots, a Markdown report and the pruned checkpoints, in one folder.

Every number in the report is measured by the run that writes it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, DataCollatorWithPadding

from . import data as datasets
from .evaluate import DepthResult, accuracy, depth_sweep, perplexity
from .files import write_json, write_text
from .models import load_classifier
from .prune import prune_saved
from .report import depth_table, plot_quality_vs_depth
from .train import TrainConfig, encode_classification, encode_lm, run

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. The defaults fit in about 15 minutes on 2 CPU cores; ``full`` is the quality-bar run."""

    out: str = "out/demo"
    """Output folder."""
    full: bool = False
    """Full-size run (all training rows, more epochs; an hour or more on 2 CPU cores)."""
    rt_rows: int = 1500
    """Rotten Tomatoes training rows (ignored with ``full``)."""
    rt_epochs: float = 2.0
    """Fine-tuning epochs on Rotten Tomatoes."""
    rt_eval_rows: int = 1000
    """Test rows scored at each depth (ignored with ``full``: the whole test split)."""
    rt_rate: float = 0.5
    """LayerDrop rate of the classification run."""
    lm_steps: int = 500
    """Training steps of each KJV language model."""
    lm_rate: float = 0.5
    """LayerDrop rate of the language model."""
    lm_eval_rows: int = 400
    """KJV validation paragraphs scored at each depth (ignored with ``full``: all of them)."""
    self_distill: bool = True
    """Train the LayerDrop runs with self-distillation (sub-networks learn from the full network)."""
    seed: int = 0
    """Seed of everything."""
    progress: bool = True
    """Show tqdm bars."""


@dataclass(frozen=True)
class DemoResult:
    """What the demo wrote."""

    out: Path
    """The output folder."""
    report: Path
    """The Markdown report."""
    tables: dict[str, str]
    """Markdown tables by part ("classification", "language model")."""
    seconds: float
    """Wall time."""


def _sizes(cfg: DemoConfig) -> dict[str, Any]:
    if cfg.full:
        return {"rt_rows": None, "rt_eval": None, "rt_epochs": max(cfg.rt_epochs, 3.0), "lm_steps": cfg.lm_steps * 5}
    return {"rt_rows": cfg.rt_rows, "rt_eval": cfg.rt_eval_rows, "rt_epochs": cfg.rt_epochs, "lm_steps": cfg.lm_steps}


def _classification(cfg: DemoConfig, out: Path, sizes: dict[str, Any]) -> dict[str, list[DepthResult]]:
    series: dict[str, list[DepthResult]] = {}
    for label, rate in (("no LayerDrop", 0.0), (f"LayerDrop {cfg.rt_rate}", cfg.rt_rate)):
        tc = TrainConfig(
            task="classification", model="minilm-l6", data="rotten-tomatoes", out=str(out / _slug("rt", rate)),
            rate=rate, self_distill=cfg.self_distill and rate > 0, seed=cfg.seed, epochs=sizes["rt_epochs"],
            train_rows=sizes["rt_rows"], eval_rows=sizes["rt_eval"], batch_size=32, lr=5e-5, head_lr=1e-3,
            max_length=64, pooling="mean", save_steps=10_000, logging_steps=25, progress=cfg.progress,
            evaluate=False,  # the depth sweep below scores the test split
        )
        result = run(tc)
        model = load_classifier(result.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
        test = datasets.load("rotten-tomatoes", seed=cfg.seed).test
        if sizes["rt_eval"]:
            test = test.subset(range(min(sizes["rt_eval"], len(test))))
        rows, _ = encode_classification(tokenizer, test, dataclasses.replace(tc, progress=False), "test")
        collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        series[label] = depth_sweep(model, lambda m: accuracy(m, rows, collate), progress=cfg.progress,
                                    desc=f"depths ({label})")
        if rate > 0:
            prune_saved(str(result.model_dir), out / "checkpoints" / "minilm-rt-layerdrop-depth3", depth=3,
                        model=model)
    return series


def _slug(task: str, rate: float) -> str:
    return f"{task}-layerdrop{rate:g}" if rate > 0 else f"{task}-plain"


def _language_model(cfg: DemoConfig, out: Path, sizes: dict[str, Any]) -> dict[str, list[DepthResult]]:
    series: dict[str, list[DepthResult]] = {}
    for label, rate in (("no LayerDrop", 0.0), (f"LayerDrop {cfg.lm_rate}", cfg.lm_rate)):
        tc = TrainConfig(
            task="clm", model="gpt2-tiny", data="kjv", out=str(out / _slug("kjv", rate)), rate=rate,
            self_distill=cfg.self_distill and rate > 0, seed=cfg.seed, max_steps=sizes["lm_steps"],
            batch_size=16, lr=1e-3, warmup=0.05, lr_schedule="cosine", max_length=128, vocab_size=4000,
            eval_rows=cfg.lm_eval_rows if not cfg.full else None, save_steps=10_000, logging_steps=50,
            progress=cfg.progress, evaluate=False,  # the depth sweep below scores the validation split
        )
        result = run(tc)
        model = AutoModelForCausalLM.from_pretrained(result.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
        valid = datasets.load("kjv", seed=cfg.seed).valid
        if not cfg.full:
            valid = valid.subset(range(min(cfg.lm_eval_rows, len(valid))))
        blocks = encode_lm(tokenizer, valid.texts, tc.max_length, "valid", progress=False)
        collate = DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="pt")
        series[label] = depth_sweep(model, lambda m: perplexity(m, blocks, collate), progress=cfg.progress,
                                    desc=f"depths ({label})")
        if rate > 0:
            half = model.config.num_hidden_layers // 2
            prune_saved(str(result.model_dir), out / "checkpoints" / "gpt2-kjv-layerdrop-half", depth=half,
                        model=model)
    return series


def _verdict(series: dict[str, list[DepthResult]], higher_is_better: bool) -> str:
    (plain_name, plain), (ld_name, ld) = series.items()
    by_plain = {r.depth: r.score for r in plain}
    wins = [r.depth for r in ld if (r.score > by_plain[r.depth]) == higher_is_better and r.score != by_plain[r.depth]]
    losses = [r.depth for r in ld if r.depth not in wins and r.score != by_plain[r.depth]]
    parts = [f"{ld_name} is better at depths {wins}" if wins else f"{ld_name} is better at no depth"]
    if losses:
        parts.append(f"worse at depths {losses}")
    return "; ".join(parts) + "."


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = lambda _: None) -> DemoResult:
    """Run the demo; ``log`` receives one line per stage (the CLI prints them)."""
    start = time.time()
    out = Path(cfg.out)
    sizes = _sizes(cfg)
    log("(a) MiniLM-L6 on Rotten Tomatoes, without and with LayerDrop")
    cls = _classification(cfg, out, sizes)
    log("(b) GPT-2-style LM on the King James Bible, without and with LayerDrop")
    lm = _language_model(cfg, out, sizes)

    plot_quality_vs_depth(cls, "accuracy", out / "classification.png", title="MiniLM-L6, Rotten Tomatoes (test)")
    plot_quality_vs_depth(lm, "perplexity", out / "language_model.png", title="GPT-2-style LM, KJV (valid)")
    tables = {"classification": depth_table(cls, "accuracy"), "language model": depth_table(lm, "perplexity")}
    minutes = (time.time() - start) / 60
    report = [
        "# layerdrop demo report", "",
        f"Measured by `layerdrop demo{' --full' if cfg.full else ''}` in {minutes:.1f} minutes. "
        "Every model is pruned every-other after training, with no further training.", "",
        "## (a) MiniLM-L6 fine-tuned on Rotten Tomatoes", "",
        f"Training rows: {sizes['rt_rows'] or 'all'}, epochs: {sizes['rt_epochs']:g}, mean pooling; "
        f"accuracy on {sizes['rt_eval'] or 'all'} test rows. "
        f"LayerDrop run: rate {cfg.rt_rate}{', self-distilled' if cfg.self_distill else ''}.", "",
        tables["classification"], _verdict(cls, True), "", "![accuracy by depth](classification.png)", "",
        "## (b) GPT-2-style language model on the King James Bible", "",
        f"Trained from scratch for {sizes['lm_steps']} steps (preset gpt2-tiny, tokenizer trained on the text). "
        f"LayerDrop run: rate {cfg.lm_rate}{', self-distilled' if cfg.self_distill else ''}. "
        "Validation perplexity (lower is better).", "",
        tables["language model"], _verdict(lm, False), "", "![perplexity by depth](language_model.png)", "",
        "## Files", "",
        "- `checkpoints/`: pruned LayerDrop models, loadable with plain `transformers` "
        "(`AutoModel.from_pretrained`), each with `layerdrop.json`.",
        "- `results.json`: every number above.", "",
    ]
    path = write_text(out / "report.md", "\n".join(report))
    write_json(out / "results.json", {
        "config": dataclasses.asdict(cfg),
        "classification": {k: [dataclasses.asdict(r) for r in v] for k, v in cls.items()},
        "language_model": {k: [dataclasses.asdict(r) for r in v] for k, v in lm.items()},
        "minutes": minutes,
    })
    return DemoResult(out=out, report=path, tables=tables, seconds=time.time() - start)

