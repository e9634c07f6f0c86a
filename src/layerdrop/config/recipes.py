"""The settings of the commands beyond training: ``compare``, ``demo``, ``elastic``, ``exits``, ``heads``, ``sweep`` and
``serve``. Frozen dataclasses importable without torch, like :mod:`layerdrop.config.args` (which
holds training's and distillation's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from layerdrop.core.depths import parse_depths
from layerdrop.errors import InputError

from .settings import check_pattern

__all__ = ["CompareConfig", "DemoConfig", "ElasticConfig", "ExitsConfig", "HeadsConfig", "ServeConfig", "SweepConfig"]


@dataclass(frozen=True)
class CompareConfig:
    """What ``layerdrop compare`` trains and scores. Change with ``dataclasses.replace``."""

    model: str = "minilm-l6"
    """The model every method starts from: a pretrained encoder (classification) or decoder
    (language modelling), bundled, a local folder or, online, a hub name; or a preset trained from scratch."""
    data: str = "rotten-tomatoes"
    """A labelled dataset, or a corpus for a decoder (bundled name or file): trained on its training
    split, scored on its test split."""
    out: str = "runs/compare"
    """Output folder: each method's runs, compare.md, compare.csv, compare.json and the plots."""
    depths: str = "4,3"
    """Comma-separated depths to compare (cut every-other, or at the layers a run recorded); the model's own depth
    adds the full models' row."""
    methods: str = "plain-cut,layerdrop-cut,layerdrop-healed,fixed-depth,distilled,top-dropped,elastic"
    """Comma-separated methods: plain-cut, layerdrop-cut, layerdrop-healed, fixed-depth, distilled, top-dropped,
    elastic (one run trained for every depth of --depths: layerdrop train --depths)."""
    seeds: str = "0"
    """Comma-separated seeds of every training at the shallowest depth (the noisiest; for the elastic method,
    one whole run per seed); the first seed trains the rest."""
    rate: float = 0.5
    """LayerDrop rate of the LayerDrop run."""
    pattern: str = "every-other"
    """Which layers a LayerDrop step keeps: random or every-other."""
    self_distill: bool = True
    """Self-distil the LayerDrop run (the project's best recipe)."""
    alpha_task: float = 0.5
    """The elastic run's weight of the task on each sub-network (layerdrop train --alpha-task)."""
    alpha_kd: float = 0.5
    """The elastic run's weight of the full network's soft targets on each sub-network (--alpha-kd)."""
    heal_epochs: float = 1.0
    """Epochs of the LayerDrop model's heal at each depth (the fine-tunes run --epochs)."""
    train_rows: int = 6000
    """Training rows of every run (0: all)."""
    eval_rows: int = 0
    """Test rows scored (0: the whole test split)."""
    epochs: float = 2.0
    """Epochs of every fine-tune and distillation."""
    max_steps: int = 0
    """Optimizer steps of every fine-tune and distillation instead of --epochs (0: use --epochs)."""
    heal_steps: int = 0
    """With --max-steps: steps of each heal (0: half of --max-steps)."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 5e-5
    """Peak learning rate."""
    head_lr: float | None = 1e-3
    """Learning rate of the classifier head."""
    max_length: int = 64
    """Tokens per example."""
    freeze_embeddings: bool = False
    """Keep the word embeddings fixed in every run (worth it for e5-small's large vocabulary)."""
    latency_reps: int = 5
    """Timed forwards per depth; the median is reported."""
    keep_checkpoints: bool = False
    """Keep each finished run's checkpoints whole (weights and optimizer state, to train it further);
    by default only their training logs stay, since a comparison's many runs fill a disk (about
    21 GB for e5-small)."""
    progress: bool = True
    """Show tqdm bars."""

    def __post_init__(self) -> None:
        check_pattern(self.pattern)  # a bad value fails here, before any training


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. The defaults take about 15 minutes on 2 quiet CPU cores (the README); ``full`` is the
    quality-bar run."""

    out: str = "out/demo"
    """Output folder (with ``full``, the default becomes ``out/demo-full``)."""
    full: bool = False
    """The quality-bar run: all training rows, the whole test and validation splits, 2x the LM
    steps, and the per-depth references (about two hours on 2 CPU cores)."""
    rt_rows: int = 6000
    """Rotten Tomatoes training rows (ignored with ``full``)."""
    rt_epochs: float = 2.0
    """Fine-tuning epochs on Rotten Tomatoes."""
    rt_eval_rows: int = 1000
    """Test rows scored at each depth (ignored with ``full``: the whole test split)."""
    rt_depths: str = "6,3,2"
    """Depths the elastic classifier is trained to serve (every-other layers)."""
    lm_steps: int = 300
    """Training steps of each KJV language model (2x with --full)."""
    lm_depths: str = "6,3"
    """Depths the elastic language model is trained to serve (every-other layers)."""
    lm_eval_rows: int = 400
    """KJV test paragraphs scored at each depth (ignored with ``full``: all of them)."""
    elastic: bool = True
    """Train the LayerDrop runs as one elastic run each (``layerdrop train --depths``): every step the full
    network learns the task and the every-other sub-network of each of --rt-depths / --lm-depths learns it and
    the full network's predictions; one head serves every depth. Off: the earlier demo's random dropping at
    --rt-rate / --lm-rate, with --self-distill and --pattern."""
    rt_rate: float = 0.5
    """With --no-elastic: LayerDrop rate of the classification run."""
    lm_rate: float = 0.5
    """With --no-elastic: LayerDrop rate of the language model."""
    self_distill: bool = True
    """With --no-elastic: train the LayerDrop runs with self-distillation (sub-networks learn from the full
    network)."""
    pattern: str = "every-other"
    """With --no-elastic: which layers a LayerDrop step keeps: ``random`` (the paper) or ``every-other`` (the
    sub-networks that pruning every-other keeps; see ``docs/training.md``)."""
    references: bool = False
    """Also fine-tune MiniLM-L6 pruned every-other to 4 and 3 layers before training: the
    quality bar's per-depth references (always on with ``full``)."""
    bf16: bool | None = None
    """Train under bfloat16 autocast with float32 master weights (``None``: where the CPU or GPU
    computes bfloat16 natively). Same accuracy within noise, about 0.65x the training time on
    CPUs with AVX512-BF16 (docs/results.md)."""
    seed: int = 0
    """Seed of everything."""
    progress: bool = True
    """Show tqdm bars."""

    def __post_init__(self) -> None:  # a bad value fails here, before any training
        check_pattern(self.pattern)
        parse_depths(self.rt_depths, 6, "--rt-depths")  # both demo models have 6 layers
        parse_depths(self.lm_depths, 6, "--lm-depths")
        if self.elastic:  # the random-dropping settings would be ignored
            ignored = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(self)
                       if f.name in ("rt_rate", "lm_rate", "self_distill", "pattern")
                       and getattr(self, f.name) != f.default]
            if ignored:
                raise InputError(f"{', '.join(ignored)} set how --no-elastic drops layers at random; the elastic "
                                 "runs train --rt-depths / --lm-depths instead: add --no-elastic, or drop them")


@dataclass(frozen=True)
class ElasticConfig:
    """The ``layerdrop elastic`` recipe's settings. Change with ``dataclasses.replace``."""

    model: str = "smollm2-135m"
    """A causal LM: a bundled name, a local folder or, online, a hub name."""
    data: str = "kjv"
    """Text to continue training on (a bundled dataset or a file)."""
    out: str = "runs/elastic"
    """Output folder: the training run, ``report.md`` and ``results.json``."""
    depths: str = "30,20,15"
    """Comma-separated depths to score before and after (every-other layers); depths above
    the model's layer count are left out."""
    rate: float = 0.5
    """LayerDrop rate of the continued training."""
    self_distill: bool = True
    """Train a sampled sub-network toward the full network's predictions too."""
    steps: int = 100
    """Optimizer steps of continued training."""
    batch_size: int = 4
    """Blocks per step."""
    max_length: int = 128
    """Tokens per block."""
    lr: float = 1e-4
    """Peak learning rate (AdamW, linear decay after a 10 % warm-up)."""
    eval_rows: int = 40
    """Validation paragraphs scored at each depth."""
    seed: int = 0
    """Seed of data order and masks."""
    progress: bool = True
    """Show tqdm bars."""


@dataclass(frozen=True)
class HeadsConfig:
    """What ``layerdrop heads`` fits. Change with ``dataclasses.replace``."""

    model: str
    """A saved classifier trained with --depths; each served depth below the full one gets a head of its own."""
    out: str
    """Output folder for heads.md and heads.json."""
    data: str = ""
    """The labelled dataset: fitted on its training rows, chosen on its validation rows (empty: the one MODEL was
    trained on, with its recorded seed, split seed and training rows)."""
    depths: str = ""
    """Comma-separated depths to fit (empty: those MODEL was trained to serve, below the full one)."""
    l2: float = 1e-3
    """Weight of the squared head weights in the fit (chosen on validation rows: docs/comparison.md)."""
    keep: Literal["better", "all"] = "better"
    """``better``: keep a depth's own head only where it beats the shared head on the validation rows; ``all``."""
    train_rows: int = 0
    """Training rows to fit on (0: those MODEL was trained on, as its record says)."""
    max_length: int = 0
    """Tokens per text (0: the length MODEL was trained at)."""
    batch_size: int = 64
    """Rows per forward while the features are computed."""
    record: bool = True
    """Write the heads into MODEL (depth_heads.safetensors, listed in layerdrop.json), where views, cuts, serve
    and early exit pick them by depth."""
    progress: bool = True
    """Show tqdm bars."""


@dataclass(frozen=True)
class ExitsConfig:
    """What ``layerdrop exits`` calibrates and measures. Change with ``dataclasses.replace``."""

    model: str
    """A saved classifier or question-answering model (``layerdrop train classification`` / ``qa``), best one
    trained with --depths: its served depths are the exits, and nested ones (--strategy top) continue each
    other's computation."""
    data: str
    """The labelled dataset (a SQuAD-format file for QA) it was trained on: calibrated on its validation rows,
    measured on its test rows, split as training split it."""
    out: str
    """Output folder for exits.md, exits.json and the exit-depth histogram."""
    rules: str = "max-prob,entropy,patience"
    """Comma-separated exit rules: max-prob, entropy (DeeBERT), patience (PABEE). Each is calibrated; the one
    that runs fewest layers on the validation rows is recorded."""
    max_drop: float = 0.5
    """Accuracy (QA: F1) points early exit may lose against full depth (delta), guaranteed with --confidence; the
    drop the record uses for a request that names none. A drop d can pass only on about
    ln(rules / (1 - confidence)) / d validation rows or more (d as a fraction: 679 rows for 0.5 points with the
    defaults)."""
    more_drops: str = "0.25,1,2"
    """Further drops (points, comma-separated) calibrated, measured and recorded, for requests that name one."""
    confidence: float = 0.9
    """Probability, over the validation rows drawn, that the expected loss is at most --max-drop."""
    depths: str = ""
    """Comma-separated exits; empty: the depths the model was trained to serve (--depths), and the full one."""
    record: bool = True
    """Write the chosen rule and threshold into MODEL's config.json, where serve and exit_predict find them."""
    rows: int = 0
    """Validation and test rows (QA: questions) each (0: all)."""
    batch_size: int = 32
    """Rows per batch, of scoring and of the throughput measurement."""
    max_length: int = 0
    """Tokens per text or QA window (0: the length the model was trained at, which serve truncates to as well;
    calibrate at the length you serve)."""
    timing_batches: int = 4
    """Test batches timed for throughput, full depth and each rule at each drop in turn, per round."""
    latency_reps: int = 3
    """Timed rounds; the sum of each round is compared and the median round reported."""
    progress: bool = True
    """Show tqdm bars."""


@dataclass(frozen=True)
class SweepConfig:
    """What ``layerdrop sweep`` measures."""

    model: str
    """A saved model folder: a classifier, a question-answering model or a causal LM."""
    data: str
    """A bundled dataset name or a CSV/TSV/JSONL file; its --split is scored."""
    out: str
    """Output folder for sweep.csv, sweep.json, sweep.md and the plots."""
    split: str = "validation"
    """Which split each point is scored on: validation, or test for a final table (search and
    the importance metrics still choose layers on validation rows)."""
    strategies: str = ""
    """Comma-separated strategies: every-other, search, block-influence, angular, top, data-driven, trained
    (empty: the model's own, trained for a model trained with --depths, else every-other)."""
    rows: int = 500
    """Rows of the split scored per point (and test rows for search's final check)."""
    batch_size: int = 32
    """Batch size of scoring and of the latency measurement."""
    max_length: int = 128
    """Tokens per example (classification) or per block (language model)."""
    latency_reps: int = 5
    """Timed forwards per point, every point timed in turn (rounds); the median is reported."""
    dtype: str = "float32"
    """Comma-separated precisions to run every point at: float32, bfloat16, int8 (torch's dynamic
    quantization of the linear layers). Layers are chosen once, at float32; the Pareto front spans
    every depth and precision."""
    calibration_rows: int = 64
    """Rows of calibration data for the importance metrics."""
    search_budget: int = 200
    """Most score evaluations a search may spend."""
    seed: int = 0
    """Seed of the data splits."""
    progress: bool = True
    """Show a tqdm bar."""


@dataclass(frozen=True)
class ServeConfig:
    """What ``layerdrop serve`` serves, and its limits. Change with ``dataclasses.replace``."""

    model: str
    """A saved classifier (``layerdrop train classification``) or causal LM folder, or a bundled name."""
    depths: str = ""
    """Comma-separated depths to serve; empty: every depth from 1 to the model's."""
    strategy: str = ""
    """How each depth chooses its layers. Empty: the model's own (the layers it was trained to serve at
    each depth, for a model trained with --depths; else every-other, for a LayerDrop model). For a model
    trained without LayerDrop: angular / block-influence (calibrated on --data) or search (scored on
    --data's validation rows)."""
    data: str = ""
    """A dataset name or text file whose validation rows calibrate or score --strategy."""
    sweep: str = ""
    """A ``layerdrop sweep`` folder or sweep.json whose scores for the served strategy are shown as each depth's
    quality."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 exposes the server to the network."""
    port: int = 8000
    """Port to listen on."""
    name: str = ""
    """The model's name in the API (empty: the folder's name); ``NAME@K`` asks for K layers."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 beyond)."""
    max_inputs: int = 32
    """Most texts in one classify request (at most --batch-inputs)."""
    max_prompt_tokens: int = 1024
    """Longest prompt accepted, in tokens (422 beyond; also bounded by the model's context)."""
    max_tokens: int = 256
    """Largest max_tokens a completion may ask for."""
    queue_size: int = 16
    """Requests waiting for the worker before new ones get 503."""
    batch_inputs: int = 32
    """Most texts the worker classifies in one forward (requests at one depth are batched)."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more classify requests at the same depth while others are queued
    (a lone request runs at once)."""
    profile_reps: int = 3
    """Timed forwards per point of each depth's start-up profile (the median is kept)."""
    threads: int = 0
    """torch threads of the worker (0: torch's default; with --replicas, an equal share of Ray's cores)."""
    replicas: int = 0
    """Serve on Ray Serve with this many replicas, each its own copy of the weights and its own queue, behind
    Ray's HTTP proxy at --host:--port (0: one process under uvicorn, no Ray; pip install 'layerdrop[ray]')."""

    def __post_init__(self) -> None:
        for name in ("port", "max_body_bytes", "max_inputs", "max_prompt_tokens", "max_tokens", "queue_size",
                     "batch_inputs", "profile_reps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0 or self.threads < 0 or self.replicas < 0:
            raise InputError("--batch-wait-ms, --threads and --replicas cannot be negative")
        if self.max_inputs > self.batch_inputs:
            raise InputError(f"--max-inputs {self.max_inputs} is over --batch-inputs {self.batch_inputs}: one request "
                             "must fit in one forward; raise --batch-inputs or lower --max-inputs")
        if any(not d.strip().isdigit() for d in self.depths.split(",")) and self.depths.strip():
            raise InputError(f"--depths {self.depths!r}: give comma-separated layer counts, e.g. 6,4,3")
