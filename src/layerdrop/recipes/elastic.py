"""A recipe: make a pretrained decoder depth-elastic by continuing its training with LayerDrop.

A decoder pretrained without LayerDrop breaks when cut: SmolLM2-135M loses most of its
quality with every other layer removed. :func:`run_elastic` scores the model at a few
depths (every-other layers), continues its causal-LM training on a corpus with
LayerDrop (self-distilled by default: the full network keeps learning the text while a
sampled sub-network learns to match it), and scores the same depths again. The
before/after table is the point; ``layerdrop elastic`` is the command line.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from layerdrop import data
from layerdrop.config.args import TrainConfig
from layerdrop.config.recipes import ElasticConfig
from layerdrop.core.depths import parse_depths
from layerdrop.data import lm_eval_blocks
from layerdrop.errors import InputError
from layerdrop.evaluation.measure import DepthResult, depth_sweep, perplexity
from layerdrop.evaluation.report import depth_table
from layerdrop.files import write_json, write_text
from layerdrop.models.loading import from_pretrained, model_folder

from .train import run_or_reuse

__all__ = ["ElasticConfig", "ElasticResult", "run_elastic"]


@dataclass(frozen=True)
class ElasticResult:
    """What :func:`run_elastic` measured and wrote."""

    before: list[DepthResult]
    """Perplexity at each depth before continued training."""
    after: list[DepthResult]
    """The same after it."""
    table: str
    """Markdown table of both."""
    model_dir: Path
    """The depth-elastic model (plain HF folder)."""
    train_seconds: float
    """Wall time of the continued training."""
    report: Path
    """The Markdown report."""


def _depths(text: str, num_layers: int) -> list[int]:
    """The depths of ``text`` that the model has; depths beyond it are left out (one default serves every model)."""
    kept = [d for d in parse_depths(text) if d <= num_layers]
    if not kept:
        raise InputError(f"every depth in {text!r} exceeds the model's {num_layers} layers")
    return kept


def run_elastic(cfg: ElasticConfig, log: Callable[[str], None] = lambda _: None) -> ElasticResult:
    """Score, continue training with LayerDrop, score again; write ``report.md`` and ``results.json``."""
    out = Path(cfg.out)
    folder = model_folder(cfg.model)
    depths = _depths(cfg.depths, from_pretrained(AutoConfig, folder).num_hidden_layers)
    tokenizer = from_pretrained(AutoTokenizer, folder)
    valid = data.load(cfg.data, seed=cfg.seed, label_column=None).valid
    valid = valid.subset(range(min(cfg.eval_rows, len(valid))))
    blocks, collate = lm_eval_blocks(tokenizer, valid.texts, cfg.max_length)

    def score(path: str) -> list[DepthResult]:
        model = from_pretrained(AutoModelForCausalLM, path).eval()
        return depth_sweep(model, lambda m: perplexity(m, blocks, collate, batch_size=cfg.batch_size),
                           depths=depths, progress=cfg.progress, desc="perplexity by depth")

    log(f"scoring {cfg.model} before training")
    before = score(folder)
    log(f"continued training with LayerDrop {cfg.rate} for {cfg.steps} steps")
    tc = TrainConfig.from_flat(task="clm", model=cfg.model, data=cfg.data, out=str(out / "train"), rate=cfg.rate,
                               self_distill=cfg.self_distill, seed=cfg.seed, max_steps=cfg.steps,
                               batch_size=cfg.batch_size, lr=cfg.lr, warmup=0.1, max_length=cfg.max_length,
                               eval_rows=cfg.eval_rows, save_steps=max(cfg.steps // 5, 10), logging_steps=10,
                               progress=cfg.progress, evaluate=False)
    start = time.time()
    model_dir = run_or_reuse(tc)
    seconds = time.time() - start
    log("scoring the trained model")
    after = score(str(model_dir))

    series = {"before": before, f"after {cfg.steps} steps of LayerDrop {cfg.rate}": after}
    table = depth_table(series, "perplexity")
    report = write_text(out / "report.md", "\n".join([
        f"# Depth-elastic {cfg.model}", "",
        f"Validation perplexity on {len(blocks)} blocks of {cfg.max_length} tokens of {cfg.data} "
        f"({cfg.eval_rows} paragraphs), every-other layers at each depth. Continued causal-LM training: "
        f"{cfg.steps} steps of {cfg.batch_size} x {cfg.max_length} tokens, LayerDrop {cfg.rate}"
        f"{', self-distilled' if cfg.self_distill else ''}, learning rate {cfg.lr:g}, "
        f"{seconds / 60:.1f} minutes.", "", table,
        f"The model: `{model_dir}` (plain `transformers` folder).", ""]))
    write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "train_seconds": seconds,
                                      "before": [dataclasses.asdict(r) for r in before],
                                      "after": [dataclasses.asdict(r) for r in after]})
    return ElasticResult(before=before, after=after, table=table, model_dir=model_dir,
                         train_seconds=seconds, report=report)
