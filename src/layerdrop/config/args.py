"""Training's and distillation's settings: frozen dataclasses, importable without torch (the other
commands' are in :mod:`layerdrop.config.recipes`).

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

__all__ = ["EACH_STEP", "DataArgs", "DepthArgs", "DistillArgs", "DistillConfig", "LayerDropArgs", "OptimArgs",
           "TrainConfig", "build", "flatten"]


@dataclass(frozen=True)
class LayerDropArgs:
    """How ``layerdrop train`` drops layers, and the training options that exist for LayerDrop."""

    rate: float | None = None
    """LayerDrop rate (0 trains without LayerDrop). By default 0.2, or 0 with --depths, which trains named
    sub-networks in place of random ones."""
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


EACH_STEP = ("all", "sandwich")
"""Which of ``--depths`` a training step runs: every one, or the sandwich (the smallest and ``--sandwich``
others drawn at random)."""


@dataclass(frozen=True)
class DepthArgs:
    """Training for the depths to be served (one elastic run): each step trains the full network and a
    sub-network at each named depth, each learning from a teacher."""

    depths: str | None = None
    """Depths to serve, comma-separated (6,4,3; the full one is always trained). Each step the full network
    learns the task and each depth's sub-network learns --alpha-task x the task + --alpha-kd x the soft
    targets of the full network in the same step (or of --teacher). Replaces random dropping: --rate is not
    used. The model records each depth's layers, so prune, view, sweep and serve keep the same ones."""
    strategy: str = "top"
    """How each of --depths chooses its layers, a row of the strategy table: top (the first k layers, nested:
    depth k continues depth j's computation), every-other, or angular / block-influence (calibrated on
    --data's validation rows before training)."""
    each_step: str = "all"
    """Which of --depths a step trains besides the full network: all, or sandwich (the smallest and
    --sandwich others drawn at random; BigNAS)."""
    sandwich: int = 1
    """With --each-step sandwich: how many of the other depths, drawn at random each step, also train."""
    teacher: str | None = None
    """A fine-tuned model folder (same tokenizer, labels and task) that every depth, the full one included,
    learns from instead of the full network in the same step (DynaBERT)."""
    alpha_kd: float = 0.5
    """Weight of each depth's soft-target loss: KL to the teacher's predictions at --temperature, times T^2."""
    alpha_task: float = 0.5
    """Weight of each depth's task loss (the full network's, too, when --teacher teaches it)."""
    temperature: float = 2.0
    """Softmax temperature of the soft targets with --depths."""
    alpha_hidden: float = 0.0
    """Weight of hidden-state matching with --depths: the output of a depth's j-th layer against the
    teacher's layer it stands for ((j + 1) x L / depth; TinyBERT's and DynaBERT's uniform mapping), as
    normalised hidden states."""
    depth_heads: bool | None = None
    """After training, fit each of --depths its own classifier head on its frozen pooled features of the
    training rows, kept where it beats the shared head on the validation rows (what layerdrop heads does; about
    a minute on 2 cores, counted in the training time). Default: on for a classifier with a pooled head (not
    --pooling native, not --long-doc)."""


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
    group_by_length: bool = False
    """Batch training rows of similar length together (Hugging Face's ``group_by_length`` order; a resumed run
    repeats it): less padding, so less compute per step where lengths vary (a classifier's short texts; not an
    LM's equal blocks)."""
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


_GROUPS = {"layerdrop": LayerDropArgs, "served": DepthArgs, "optim": OptimArgs, "inputs": DataArgs}
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
    served: DepthArgs = field(default_factory=DepthArgs)
    """Training for named depths."""
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
    """The distillation loss: each term's weight (DistilBERT's task-specific values by default), and the
    teacher's cache."""

    alpha_kd: float = 0.5
    """Weight of the soft-target loss: KL to the teacher's predictions at --temperature, times T^2
    (for question answering, on start and end logits). DistilBERT's SQuAD distillation: 0.5."""
    alpha_task: float = 0.5
    """Weight of the task's own loss on the labels (next token for a language model). DistilBERT's SQuAD
    distillation: 0.5."""
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
    """For ``layerdrop.recipes.distill.run``: continue from the newest complete checkpoint in ``out/checkpoints``
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
