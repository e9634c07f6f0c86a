"""The recipes' settings: frozen dataclasses, importable without torch.

``layerdrop --help`` builds its options from these classes, so this module imports only
the standard library. :class:`TrainConfig` groups its settings like litgpt's ``TrainArgs``
and ``EvalArgs``; every leaf name is unique, so the command line stays flat (``--rate``,
``--lr``) and :meth:`TrainConfig.flat` is the flat record written into ``layerdrop.json``.

>>> cfg = TrainConfig.from_flat(task="clm", model="gpt2-tiny", data="kjv", out="runs/kjv", rate=0.5, lr=1e-3)
>>> cfg.layerdrop.rate, cfg.optim.lr, cfg.flat()["lr"]
(0.5, 0.001, 0.001)
>>> cfg.replace(lr=1e-4).optim.lr
0.0001
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .settings import check_pattern

__all__ = ["CompareConfig", "DataArgs", "DemoConfig", "DistillArgs", "DistillConfig", "ElasticConfig", "LayerDropArgs", "OptimArgs",
           "SweepConfig", "TrainConfig", "build", "flatten"]


@dataclass(frozen=True)
class LayerDropArgs:
    """How ``layerdrop train`` drops layers, and the training options that exist for LayerDrop."""

    rate: float = 0.2
    """LayerDrop rate (0 trains without LayerDrop)."""
    per_layer: str = "uniform"
    """Rate profile over depth: uniform, linear or exponential."""
    granularity: str = "layer"
    """What is dropped: ``layer``, ``sublayer`` or ``head``."""
    pattern: str = "random"
    """Which layers a training step keeps: ``random`` (each independently, the paper) or
    ``every-other`` (as many, placed where pruning to that depth places them)."""
    schedule: str = "constant"
    """Rate schedule: constant, warmup or progressive."""
    rate_warmup_steps: int = 0
    """Steps of the linear rate warm-up (schedule ``warmup``)."""
    pld_gamma: float = 0.001
    """Decay of progressive layer dropping (schedule ``progressive``)."""
    self_distill: bool = False
    """Each step, train the full network on the task and a sampled sub-network toward
    the full network's predictions (KL on soft targets), as DynaBERT does for depth."""
    distill_weight: float = 1.0
    """Weight of the sub-network's KL term with ``self_distill``."""
    distill_temperature: float = 1.0
    """Softmax temperature of the soft targets with ``self_distill``."""
    data_driven: bool = False
    """Learn each layer's drop rate from its activations, averaging --rate (the paper's
    data-driven pruning); then prune with ``--strategy data-driven``."""
    rate_lr: float = 5e-3
    """Learning rate of the data-driven rates' scorer."""


@dataclass(frozen=True)
class OptimArgs:
    """Optimisation: steps, batches, AdamW and its schedule, regularisation, precision."""

    epochs: float = 3.0
    """Training epochs (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps, if positive."""
    batch_size: int = 32
    """Examples per device per micro-step."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimizer step."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    head_lr: float | None = None
    """A separate learning rate for the task head: the classifier's, or QA's span head (``None``: same as ``lr``)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    lr_schedule: str = "linear"
    """Learning-rate schedule after warm-up: ``constant``, ``linear`` (decay to 0) or ``cosine``."""
    warmup: float = 0.06
    """Learning-rate warm-up: a fraction of training (< 1) or a number of steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    dropout: float | None = None
    """Override every dropout probability in the model config (``None`` keeps them)."""
    label_smoothing: float = 0.0
    """Label smoothing of the classification loss."""
    freeze_embeddings: bool = False
    """Keep the input word embeddings fixed (and an output layer tied to them). For a large
    vocabulary (e5-small: 96M of its 118M parameters) a step takes about 40 % less time, and
    tokens absent from the training rows keep their pretrained vectors."""
    bf16: bool = False
    """bfloat16 mixed precision, where the hardware supports it."""


@dataclass(frozen=True)
class DataArgs:
    """Which rows are used and how texts become examples."""

    max_length: int = 128
    """Tokens per example (classification) or per block (language modelling)."""
    long_doc: str | None = None
    """Split long texts into overlapping windows and pool their logits: ``mean`` or ``max``."""
    stride: int = 32
    """Tokens shared by consecutive windows with ``long_doc``, and by question answering's context windows."""
    train_rows: int | None = None
    """Use only the first N training rows (the splits are shuffled)."""
    eval_rows: int | None = None
    """Use only the first N validation and test rows."""
    split_seed: int | None = None
    """Seed of the train/validation/test split (``None``: --seed), so runs of several seeds share one test split."""


def build(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from flat leaf values: a field typed as a dataclass (a group) is built from its
    own fields' values, recursively; a leaf missing from ``values`` keeps its default."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: build(hints[f.name], values) if dataclasses.is_dataclass(hints[f.name]) else values[f.name]
              for f in dataclasses.fields(cls)
              if dataclasses.is_dataclass(hints[f.name]) or f.name in values}
    return cls(**kwargs)


def flatten(config: Any) -> dict[str, Any]:
    """Every leaf setting of a config dataclass by name, the fields of its groups included: the
    inverse of :func:`build`, and the record a recipe writes into ``layerdrop.json``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out.update(flatten(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return out


_GROUPS = {"layerdrop": LayerDropArgs, "optim": OptimArgs, "inputs": DataArgs}
"""Group field of :class:`TrainConfig` -> its dataclass."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``layerdrop train`` needs: the run's identity at top level, the rest in groups.

    Build from flat names with :meth:`from_flat`, change with :meth:`replace`.
    """

    task: str
    """``classification``, ``mlm`` (masked-LM continued pre-training), ``clm`` (causal LM) or
    ``qa`` (extractive question answering)."""
    model: str
    """A local model folder, a bundled name (``minilm-l6``, ``e5-small``, ``smollm2-135m``), a preset
    (``bert-tiny``, ``gpt2-tiny``, ...) or, online, a hub name."""
    data: str
    """A bundled dataset name or a CSV/TSV/JSONL file or ``datasets`` folder; for ``qa`` a SQuAD-format JSON file."""
    out: str
    """Output folder: ``checkpoints/``, ``model/`` and ``metrics.json`` go here."""
    seed: int = 0
    """Seed of data splits, initialisation, data order and LayerDrop masks."""
    pooling: str = "mean"
    """Classification pooling: mean, cls or last (a head on the pooled states, saved in the
    sentence-transformers layout), or native: the architecture's own ``*ForSequenceClassification``
    (BERT's pooler over [CLS]; GPT-2's and Llama's last token), which ``pipeline("text-classification")`` runs."""
    tokenizer: str | None = None
    """For presets: ``train`` (train one on the training text, the default) or a model to borrow from."""
    vocab_size: int = 8000
    """Vocabulary of a trained tokenizer."""
    save_steps: int = 200
    """Save a checkpoint every N optimizer steps."""
    logging_steps: int = 20
    """Log loss, rate and layers run every N steps."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``out/checkpoints``."""
    evaluate: bool = True
    """Score the validation and test splits at full depth after training."""
    record_masks: bool = False
    """Write every training forward's keep-mask to ``out/masks.safetensors`` (a few bytes each), for
    figures of which layers ran; the masks drawn are the same with or without it."""
    progress: bool = True
    """Show tqdm bars."""
    layerdrop: LayerDropArgs = field(default_factory=LayerDropArgs)
    """LayerDrop settings."""
    optim: OptimArgs = field(default_factory=OptimArgs)
    """Optimisation settings."""
    inputs: DataArgs = field(default_factory=DataArgs)
    """Rows and encoding."""

    @classmethod
    def leaf_names(cls) -> dict[str, str | None]:
        """Every leaf setting -> its group field (``None`` for a top-level one)."""
        names: dict[str, str | None] = {}
        for f in dataclasses.fields(cls):
            group = _GROUPS.get(f.name)
            names.update({g.name: f.name for g in dataclasses.fields(group)} if group else {f.name: None})
        return names

    @classmethod
    def from_flat(cls, **settings: Any) -> TrainConfig:
        """Build from flat leaf names (``rate=0.5, lr=1e-4``), as the command line and the record name them."""
        names = cls.leaf_names()
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise TypeError(f"unknown TrainConfig setting(s) {unknown}; known: {sorted(names)}")
        return build(cls, settings)

    def flat(self) -> dict[str, Any]:
        """Every leaf setting by name: the ``trained_with`` record of ``layerdrop.json``."""
        return flatten(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with the named leaf settings changed (``cfg.replace(lr=1e-4, resume=True)``)."""
        return self.from_flat(**{**self.flat(), **changes})


@dataclass(frozen=True)
class DistillArgs:
    """The distillation loss: each term's weight (DistilBERT's task-specific values by default), and the teacher's cache."""

    alpha_kd: float = 0.5
    """Weight of the soft-target loss: KL to the teacher's predictions at --temperature, times T^2
    (for question answering, on start and end logits). DistilBERT's SQuAD distillation: 0.5."""
    alpha_task: float = 0.5
    """Weight of the task's own loss on the labels (next token for a language model). DistilBERT's SQuAD distillation: 0.5."""
    temperature: float = 2.0
    """Softmax temperature of the soft targets (DistilBERT: 2)."""
    alpha_cos: float = 0.0
    """Weight of the cosine loss between the student's and the teacher's last hidden states
    (DistilBERT's pre-training used 1.0; its ablation lost 1.46 GLUE points without it)."""
    alpha_hidden: float = 0.0
    """Weight of intermediate-layer matching: each student layer's output against the teacher
    layer it was cut from (BERT-PKD), as normalised hidden states."""
    cache_teacher: bool = True
    """Compute the teacher's logits on the training rows once, save them in --out, and reuse them
    every epoch instead of running the teacher each step. Used where it is cheaper: for
    classification without --alpha-cos or --alpha-hidden (which need the teacher's hidden states
    each step), when the run sees each row more than once."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything ``layerdrop distill`` needs. Build with :func:`build` from flat names; change with
    :meth:`replace`."""

    teacher: str
    """A trained model folder (a classifier, QA model or language model saved by layerdrop or
    transformers) or a bundled model: what the student learns from. It is never changed."""
    data: str
    """A bundled dataset name or a CSV/TSV/JSONL file (a SQuAD-format JSON file for a QA teacher):
    its training split is distilled on, its validation and test splits scored."""
    out: str
    """Output folder: ``initial-student/``, ``checkpoints/``, ``model/`` and ``metrics.json`` go here."""
    depth: int | None = None
    """The student is the teacher cut to this many layers, chosen by --strategy (every-other keeps
    0, 2, 4, 7, 9, 11 of 12: DistilBERT's initialisation). The same teacher at full depth then
    heals its own cut: prune-and-heal."""
    strategy: str = "every-other"
    """How --depth chooses the student's layers: every-other, search, block-influence, angular, top
    or data-driven (search and the importance metrics use --data's validation rows)."""
    student: str | None = None
    """A model folder to distil into instead of a cut teacher: same tokenizer, same labels, no more layers."""
    calibration_rows: int = 64
    """Validation rows that score or calibrate a --strategy that needs data."""
    seed: int = 0
    """Seed of data splits, head initialisation and data order."""
    save_steps: int = 200
    """Save a checkpoint every N optimizer steps."""
    logging_steps: int = 20
    """Log the loss every N steps."""
    resume: bool = False
    """For ``layerdrop.distill.run``: continue from the newest complete checkpoint in ``out/checkpoints``
    (the settings must match). The command always continues an unfinished run, and reuses a finished one."""
    evaluate: bool = True
    """Score the student (and the teacher, once) on the validation and test splits."""
    progress: bool = True
    """Show tqdm bars."""
    distill: DistillArgs = field(default_factory=DistillArgs)
    """The loss."""
    optim: OptimArgs = field(default_factory=OptimArgs)
    """Optimisation settings."""
    inputs: DataArgs = field(default_factory=DataArgs)
    """Rows and encoding."""

    def flat(self) -> dict[str, Any]:
        """Every leaf setting by name: the ``distilled_with`` record of ``layerdrop.json``."""
        return flatten(self)

    def replace(self, **changes: Any) -> DistillConfig:
        """A copy with the named leaf settings changed (``cfg.replace(alpha_kd=1.0)``)."""
        unknown = sorted(set(changes) - set(self.flat()))
        if unknown:
            raise TypeError(f"unknown DistillConfig setting(s) {unknown}")
        return build(DistillConfig, {**self.flat(), **changes})


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
    """Comma-separated depths to compare (every-other layers); the model's own depth adds the full models' row."""
    methods: str = "plain-cut,layerdrop-cut,layerdrop-healed,fixed-depth,distilled,top-dropped"
    """Comma-separated methods: plain-cut, layerdrop-cut, layerdrop-healed, fixed-depth, distilled, top-dropped."""
    seeds: str = "0"
    """Comma-separated seeds of every training at the shallowest depth (the noisiest); the first seed trains the rest."""
    rate: float = 0.5
    """LayerDrop rate of the LayerDrop run."""
    pattern: str = "every-other"
    """Which layers a LayerDrop step keeps: random or every-other."""
    self_distill: bool = True
    """Self-distil the LayerDrop run (the project's best recipe)."""
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
    """Sizes of the demo. The defaults take about 20 minutes on 2 CPU cores (docs/results.md); ``full`` is the quality-bar run."""

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
    rt_rate: float = 0.5
    """LayerDrop rate of the classification run."""
    lm_steps: int = 500
    """Training steps of each KJV language model."""
    lm_rate: float = 0.5
    """LayerDrop rate of the language model."""
    lm_eval_rows: int = 400
    """KJV test paragraphs scored at each depth (ignored with ``full``: all of them)."""
    self_distill: bool = True
    """Train the LayerDrop runs with self-distillation (sub-networks learn from the full network)."""
    pattern: str = "every-other"
    """Which layers a LayerDrop step keeps: ``random`` (the paper) or ``every-other`` (the
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

    def __post_init__(self) -> None:
        check_pattern(self.pattern)  # a bad value fails here, before any training


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
    strategies: str = "every-other"
    """Comma-separated strategies: every-other, search, block-influence, angular, top, data-driven."""
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
    """Comma-separated depths to serve (every-other layers); empty: every depth from 1 to the model's."""
    strategy: str = "every-other"
    """How each depth chooses its layers: every-other (a LayerDrop model), or angular / block-influence for a model
    trained without LayerDrop (these need --data)."""
    data: str = ""
    """A dataset name or text file whose validation rows calibrate --strategy."""
    sweep: str = ""
    """A ``layerdrop sweep`` folder or sweep.json whose every-other scores are shown as each depth's quality."""
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
    """torch threads of the worker (0: torch's default)."""

    def __post_init__(self) -> None:
        for name in ("port", "max_body_bytes", "max_inputs", "max_prompt_tokens", "max_tokens", "queue_size",
                     "batch_inputs", "profile_reps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0 or self.threads < 0:
            raise ValueError("--batch-wait-ms and --threads cannot be negative")
        if self.max_inputs > self.batch_inputs:
            raise ValueError(f"--max-inputs {self.max_inputs} is over --batch-inputs {self.batch_inputs}: one request "
                             "must fit in one forward; raise --batch-inputs or lower --max-inputs")
        if any(not d.strip().isdigit() for d in self.depths.split(",")) and self.depths.strip():
            raise ValueError(f"--depths {self.depths!r}: give comma-separated layer counts, e.g. 6,4,3")
