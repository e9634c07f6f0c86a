"""Training with LayerDrop: a Hugging Face ``Trainer`` callback, and the ``layerdrop train`` pipeline.

Use the callback with your own ``Trainer``::

    layerdrop.apply(model, rate=0.5)
    trainer = Trainer(model=model, args=TrainingArguments(..., restore_callback_states_from_checkpoint=True))
    layerdrop.train.attach(trainer, schedule="progressive")   # first in line, so TensorBoard sees its logs

It drives a rate schedule, logs ``layerdrop/rate`` and ``layerdrop/layers_run``
(mean layers actually run per forward since the last log), and stores the mask
generator in each checkpoint so a resumed run repeats the same masks.

:func:`run` is the whole pipeline behind ``layerdrop train``: data, model,
LayerDrop, Trainer, evaluation and an atomic export.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ExportableState

from . import data as datasets
from .core import (LayerDropState, apply, check_pattern, find_state, get_rng_state, only_layers, scale_rates,
                   set_rng_state)
from .distributed import DEFAULT_CHECK_EVERY, check_trainer_setup, configure_trainer, watch, world_size
from .evaluate import pooled_accuracy
from .files import atomic_dir, write_bytes, write_json
from .learned import LearnedRates, learn_rates, record_learned_rates
from .models import META_FILE, Classifier, model_folder, save_classifier
from .rates import SCHEDULES, schedule_factor

__all__ = [
    "TASKS",
    "LayerDropCallback",
    "LayerDropTrainer",
    "TrainConfig",
    "TrainResult",
    "attach",
    "last_complete_checkpoint",
    "run",
    "run_or_reuse",
    "self_distill_loss",
]

TASKS = ("classification", "mlm", "clm")
"""What ``layerdrop train`` trains."""

LEARNED_FILE = "learned_rates.safetensors"
"""The data-driven scorer's state, saved into each checkpoint (it is not part of the model)."""

CHECKPOINT_DONE = "layerdrop-complete.json"
"""Written last into a checkpoint folder: only checkpoints that have it are resumed from."""


# --------------------------------------------------------------------------- callback


def _applied(model: nn.Module) -> tuple[nn.Module, LayerDropState]:
    found = find_state(model)
    if found is not None:
        return found
    raise ValueError(
        "LayerDropCallback needs a model with LayerDrop applied: call layerdrop.apply(model, rate=...) "
        "before training"
    )


def _encode_rng(rng: dict[str, Any]) -> dict[str, Any]:
    return {**rng, "generator": base64.b64encode(rng["generator"].numpy().tobytes()).decode("ascii")}


def _decode_rng(rng: dict[str, Any]) -> dict[str, Any]:
    raw = bytearray(base64.b64decode(rng["generator"]))
    return {**rng, "generator": torch.frombuffer(raw, dtype=torch.uint8).clone()}


class LayerDropCallback(TrainerCallback, ExportableState):
    """Rate schedule, logging and resumable masks for a LayerDrop model under HF ``Trainer``.

    Args:
        schedule: ``"constant"``, ``"warmup"`` (linear over ``warmup_steps``) or
            ``"progressive"`` (Zhang & He 2020, with ``gamma``); see :mod:`layerdrop.rates`.
        warmup_steps: Optimizer steps of the linear rate warm-up.
        gamma: Decay of progressive layer dropping (their default 0.001).
        check_every: Under DDP or FSDP, check that all ranks draw the same masks at the first
            training forward and every this many; see :func:`layerdrop.distributed.watch`.

    The generator state is saved in ``trainer_state.json`` of each checkpoint. On
    resume it is restored either by ``TrainingArguments(restore_callback_states_from_checkpoint=True)``
    (Trainer then re-creates this callback at the end of its list, after the
    reporting callbacks) or, keeping this instance in place, by :meth:`restore`.
    """

    def __init__(self, schedule: str = "constant", warmup_steps: int = 0, gamma: float = 0.001,
                 check_every: int = DEFAULT_CHECK_EVERY) -> None:
        schedule_factor(schedule, 0, warmup_steps=warmup_steps, gamma=gamma)  # validates the name
        self.check_every = check_every
        self._watch: RemovableHandle | None = None
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.gamma = gamma
        self.rng: dict[str, Any] | None = None
        """Generator state restored from a checkpoint, applied when training begins."""
        self.learned: dict[str, torch.Tensor] | None = None
        """Data-driven scorer state restored from a checkpoint, applied when training begins."""
        self._model: nn.Module | None = None
        self._last = (0, 0)

    def restore(self, checkpoint: str | Path) -> None:
        """Take the mask generator from ``checkpoint/trainer_state.json``; applied when training begins."""
        path = Path(checkpoint) / "trainer_state.json"
        if not path.is_file():
            raise FileNotFoundError(f"{checkpoint} is not a Trainer checkpoint: it has no trainer_state.json")
        saved = json.loads(path.read_text()).get("stateful_callbacks", {}).get(type(self).__name__)
        if not saved:
            raise ValueError(f"{checkpoint} holds no {type(self).__name__} state: was it trained with one?")
        self.rng = (saved[0] if isinstance(saved, list) else saved)["attributes"]["rng"]
        learned = Path(checkpoint) / LEARNED_FILE
        self.learned = safetensors.torch.load_file(learned) if learned.is_file() else None

    def _state(self) -> LayerDropState:
        if self._model is None:
            raise RuntimeError("LayerDropCallback is used before training began")
        return _applied(self._model)[1]

    def _set_scale(self, step: int) -> None:
        module, _ = _applied(self._model)  # type: ignore[arg-type]
        scale_rates(module, schedule_factor(self.schedule, step, warmup_steps=self.warmup_steps, gamma=self.gamma))

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        self._model = model
        module, ld = _applied(model)
        if self.rng is not None:
            set_rng_state(module, _decode_rng(self.rng))
            self.rng = None
        if self.learned is not None and ld.learner is not None:
            ld.learner.load_state_dict(self.learned)
            self.learned = None
        self._set_scale(state.global_step)
        self._last = (ld.draws, ld.layers_run)
        if world_size() > 1:
            check_trainer_setup(args, model)
            self._watch = watch(module, every=self.check_every)

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._set_scale(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        learner = self._state().learner
        if learner is not None:  # Trainer zeroes only the model's gradients
            learner.zero_grad(set_to_none=True)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if logs is None or self._model is None or not any(k in logs for k in ("loss", "train_loss")):
            return
        ld = self._state()
        rates = ld.rates
        extra = {"layerdrop/rate": round(sum(rates) / len(rates), 4)}
        if ld.learner is not None:
            extra.update({f"layerdrop/rate_{i}": round(r, 4) for i, r in enumerate(rates)})
        draws = ld.draws - self._last[0]
        if draws:
            extra["layerdrop/layers_run"] = round((ld.layers_run - self._last[1]) / draws, 3)
        self._last = (ld.draws, ld.layers_run)
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        learner = self._state().learner if self._model is not None else None
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if learner is not None and args.should_save and folder.is_dir():
            tensors = {k: v.detach().cpu().contiguous() for k, v in learner.state_dict().items()}
            write_bytes(folder / LEARNED_FILE, safetensors.torch.save(tensors))

    def state(self) -> dict[str, Any]:
        """For ``Trainer``'s checkpoints: settings and the mask generator."""
        module, _ = _applied(self._model) if self._model is not None else (None, None)
        rng = _encode_rng(get_rng_state(module)) if module is not None else self.rng
        return {
            "args": {"schedule": self.schedule, "warmup_steps": self.warmup_steps, "gamma": self.gamma,
                     "check_every": self.check_every},
            "attributes": {"rng": rng},
        }


def attach(trainer: Trainer, **kwargs: Any) -> LayerDropCallback:
    """Add a :class:`LayerDropCallback` ahead of the reporting callbacks, and return it.

    Also sets the trainer's DDP up for LayerDrop (``find_unused_parameters=True``, see
    :func:`layerdrop.distributed.configure_trainer`), which matters when it runs on several ranks.
    """
    callback = LayerDropCallback(**kwargs)
    configure_trainer(trainer)  # DDP must tolerate skipped layers
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def self_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on softened predictions, averaged over predictions, times ``T**2``.

    ``student`` and ``teacher`` are logits ``(..., C)``; the teacher is not back-propagated through.
    """
    s = (student / temperature).flatten(0, -2).log_softmax(-1)  # (N, C)
    t = (teacher.detach() / temperature).flatten(0, -2).log_softmax(-1)  # (N, C)
    return nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


class LayerDropTrainer(Trainer):
    """``Trainer`` with two LayerDrop options: self-distillation and a separate head learning rate.

    Args:
        self_distill: Per step, the full network (every layer) learns the task and the
            sub-network LayerDrop samples learns to match the full network's predictions.
            Costs one extra forward and backward of the sub-network per step.
        distill_weight: Weight of the KL term.
        distill_temperature: Softmax temperature of the soft targets.
        head_lr: Learning rate of parameters under ``head.`` (a :class:`Classifier`'s head).
        rate_learner: The scorer of data-driven rates (:func:`layerdrop.learn_rates`); it is
            not part of the model, so it gets its own optimizer parameter group.
        rate_lr: Learning rate of ``rate_learner``.
    """

    def __init__(self, *args: Any, self_distill: bool = False, distill_weight: float = 1.0,
                 distill_temperature: float = 1.0, head_lr: float | None = None,
                 rate_learner: LearnedRates | None = None, rate_lr: float = 5e-3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.self_distill = self_distill
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.head_lr = head_lr
        self.rate_learner = rate_learner
        self.rate_lr = rate_lr

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        if not (self.self_distill and model.training):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.rate_learner is None or not model.training:
                return result
            loss = result[0] if return_outputs else result
            loss = loss + self.rate_learner.policy_loss(loss)
            return (loss, result[1]) if return_outputs else loss
        module, state = _applied(model)
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        with only_layers(module, range(len(state.settings.rates))):
            full = model(**inputs)  # the whole network, on the task
        task = self.label_smoother(full, labels) if labels is not None else full.loss
        sub = model(**{k: v for k, v in inputs.items() if k != "labels"})  # a sampled sub-network
        distill = self_distill_loss(sub.logits, full.logits, self.distill_temperature)
        loss = task + self.distill_weight * distill
        if self.rate_learner is not None:  # the sub-network's gap to the full one, free of data noise
            loss = loss + self.rate_learner.policy_loss(distill)
        return (loss, full) if return_outputs else loss

    def create_optimizer(self, model=None):  # type: ignore[no-untyped-def]
        if self.head_lr is None:
            super().create_optimizer(model)
        else:
            self._create_head_lr_optimizer(model)
        if self.rate_learner is not None:
            self.optimizer.add_param_group({"params": list(self.rate_learner.parameters()), "lr": self.rate_lr,
                                            "weight_decay": 0.0})
        return self.optimizer

    def _create_head_lr_optimizer(self, model=None) -> None:  # type: ignore[no-untyped-def]
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        groups = []
        for in_head in (False, True):
            for decayed in (True, False):
                params = [p for n, p in model.named_parameters()
                          if p.requires_grad and n.startswith("head.") == in_head and (n in decay) == decayed]
                if params:
                    groups.append({"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
                                   "lr": self.head_lr if in_head else self.args.learning_rate})
        self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=(self.args.adam_beta1,
                                           self.args.adam_beta2), eps=self.args.adam_epsilon)


class _MarkComplete(TrainerCallback):
    """After ``Trainer`` has written a checkpoint, mark it complete (atomically)."""

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json(folder / CHECKPOINT_DONE, {"global_step": state.global_step})


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` under ``folder`` that was completely written."""
    found = []
    for p in Path(folder).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / CHECKPOINT_DONE).is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


# --------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``layerdrop train`` needs. Change with ``dataclasses.replace``."""

    task: str
    """``classification``, ``mlm`` (masked-LM continued pre-training) or ``clm`` (causal LM)."""
    model: str
    """A local model folder, a bundled name (``minilm-l6``, ``smollm2-135m``), a preset
    (``bert-tiny``, ``gpt2-tiny``, ...) or, online, a hub name."""
    data: str
    """A bundled dataset name or a CSV/TSV/JSONL file or ``datasets`` folder."""
    out: str
    """Output folder: ``checkpoints/``, ``model/`` and ``metrics.json`` go here."""
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
    seed: int = 0
    """Seed of data splits, initialisation, data order and LayerDrop masks."""
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
    weight_decay: float = 0.01
    """AdamW weight decay."""
    lr_schedule: str = "linear"
    """Learning-rate schedule after warm-up: ``linear`` or ``cosine``."""
    warmup: float = 0.06
    """Learning-rate warm-up: a fraction of training (< 1) or a number of steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    dropout: float | None = None
    """Override every dropout probability in the model config (``None`` keeps them)."""
    label_smoothing: float = 0.0
    """Label smoothing of the classification loss."""
    head_lr: float | None = None
    """A separate learning rate for the classification head (``None``: same as ``lr``)."""
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
    bf16: bool = False
    """bfloat16 mixed precision, where the hardware supports it."""
    max_length: int = 128
    """Tokens per example (classification) or per block (language modelling)."""
    pooling: str = "mean"
    """Classification pooling: mean, cls or last."""
    long_doc: str | None = None
    """Split long texts into overlapping windows and pool their logits: ``mean`` or ``max``."""
    stride: int = 32
    """Tokens shared by consecutive windows with ``long_doc``."""
    train_rows: int | None = None
    """Use only the first N training rows (the splits are shuffled)."""
    eval_rows: int | None = None
    """Use only the first N validation and test rows."""
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
    progress: bool = True
    """Show tqdm bars."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished ``layerdrop train`` run produced."""

    out: Path
    """The output folder."""
    model_dir: Path
    """The exported model (plain HF folder, plus the classifier head for classification)."""
    metrics: dict[str, float]
    """Validation and test metrics at full depth."""
    steps: int
    """Optimizer steps taken in total."""
    seconds: float
    """Wall time of this call."""
    resumed_from: Path | None
    """The checkpoint this run continued from, if any."""
    main_process: bool = True
    """Whether this process wrote the files; under several processes only rank 0 does."""


def _dropout_overrides(config: Any, p: float) -> dict[str, float]:
    names = [k for k, v in config.to_dict().items()
             if isinstance(v, float) and "layerdrop" not in k
             and (k.endswith("dropout") or k.endswith("dropout_prob") or k.endswith("_pdrop"))]
    return {k: p for k in names}


def _load_model(cfg: TrainConfig, num_labels: int | None, texts: Sequence[str]) -> tuple[nn.Module, Any]:
    from . import presets

    if cfg.model in presets.PRESETS:
        preset = presets.PRESETS[cfg.model]
        if cfg.tokenizer in (None, "train"):
            kind = "wordpiece" if preset.model_type == "bert" else "bpe"
            tokenizer = presets.train_tokenizer(texts, kind, vocab_size=cfg.vocab_size)
        else:
            tokenizer = presets.borrow_tokenizer(cfg.tokenizer)
        overrides = {}
        if cfg.dropout is not None:
            from transformers import AutoConfig

            overrides = _dropout_overrides(AutoConfig.for_model(preset.model_type, **preset.config), cfg.dropout)
        task = "classification" if cfg.task == "classification" else cfg.task
        model = presets.build(cfg.model, tokenizer, task=task, num_labels=num_labels, seed=cfg.seed, **overrides)
        if cfg.task == "classification":
            model = Classifier(model, num_labels or 2, cfg.pooling)
        return model, tokenizer

    path = model_folder(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load_kwargs: dict[str, Any] = {}
    if cfg.dropout is not None:
        from transformers import AutoConfig

        load_kwargs.update(_dropout_overrides(AutoConfig.from_pretrained(path), cfg.dropout))
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # new weights (a head) are seeded without touching the caller's RNG
        if cfg.task == "classification":
            model = Classifier(AutoModel.from_pretrained(path, **load_kwargs), num_labels or 2, cfg.pooling)
        elif cfg.task == "mlm":
            model = AutoModelForMaskedLM.from_pretrained(path, **load_kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
    return model, tokenizer


class _Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _batched(n: int, size: int = 512) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def encode_classification(
    tokenizer: PreTrainedTokenizerBase, split: datasets.TextDataset, cfg: TrainConfig, desc: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """Tokenize a split; with ``long_doc``, each text becomes overlapping windows.

    Returns the examples and, for each, the index of the text it came from.
    """
    rows: list[dict[str, Any]] = []
    doc_of: list[int] = []
    windows = cfg.long_doc is not None
    for chunk in tqdm(_batched(len(split)), desc=desc, disable=not cfg.progress, unit="batch"):
        enc = tokenizer([split.texts[i] for i in chunk], truncation=True, max_length=cfg.max_length,
                        stride=cfg.stride if windows else 0, return_overflowing_tokens=windows)
        origin = enc.pop("overflow_to_sample_mapping", list(range(len(chunk))))
        for j in range(len(enc["input_ids"])):
            doc = chunk[origin[j]]
            row = {k: enc[k][j] for k in enc.keys()}
            if split.labels is not None:
                row["labels"] = split.labels[doc]
            rows.append(row)
            doc_of.append(doc)
    return rows, doc_of


def encode_lm(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block: int, desc: str,
              progress: bool) -> list[dict[str, Any]]:
    """Concatenate tokenized texts (separated by EOS or SEP) and cut them into blocks of ``block`` tokens."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    stream: list[int] = []
    for chunk in tqdm(_batched(len(texts)), desc=desc, disable=not progress, unit="batch"):
        for ids in tokenizer([texts[i] for i in chunk], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
    n = len(stream) // block
    if n == 0:
        raise ValueError(f"{desc}: {len(stream)} tokens is less than one block of {block}; use less --max-length")
    return [{"input_ids": stream[i * block:(i + 1) * block]} for i in range(n)]


def lm_eval_blocks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block: int,
                   split: str = "valid") -> tuple[list[dict[str, Any]], DataCollatorForLanguageModeling]:
    """Blocks of ``texts`` to score a causal LM on, and the collator that labels them.

    For :func:`layerdrop.evaluate.perplexity`; a tokenizer without a pad token gets EOS as one.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    blocks = encode_lm(tokenizer, texts, block, split, progress=False)
    return blocks, DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="pt")


def _check(cfg: TrainConfig) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of {list(TASKS)}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown rate schedule {cfg.schedule!r}; choose one of {list(SCHEDULES)}")
    if cfg.lr_schedule not in ("linear", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {cfg.lr_schedule!r}; choose linear or cosine")
    if cfg.long_doc not in (None, "mean", "max"):
        raise ValueError(f"unknown long-document pooling {cfg.long_doc!r}; choose mean or max")
    if cfg.long_doc and cfg.task != "classification":
        raise ValueError("--long-doc applies to classification only")
    if cfg.data_driven and (cfg.rate <= 0 or cfg.granularity != "layer"):
        raise ValueError("--data-driven learns per-layer rates that average --rate: it needs --rate > 0 "
                         "and --granularity layer")
    check_pattern(cfg.pattern)  # before loading anything
    if cfg.data_driven and cfg.pattern != "random":
        raise ValueError("--data-driven learns which layers to drop; --pattern every-other fixes where the kept "
                         "layers go. Use one or the other.")
    if cfg.long_doc and not 0 <= cfg.stride < cfg.max_length // 2:
        raise ValueError(f"stride must be between 0 and max_length / 2 ({cfg.max_length // 2}), got {cfg.stride}")


def _recorded(cfg: TrainConfig) -> dict[str, Any]:
    """The settings written into ``layerdrop.json`` as ``trained_with`` (all but ``progress``)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}


def run_or_reuse(cfg: TrainConfig) -> Path:
    """The exported model of ``cfg``: reused if ``cfg.out`` already holds this finished run,
    continued from the last complete checkpoint if it holds an unfinished one, else trained.

    A finished run with other settings is a ``FileExistsError``; ``resume`` and ``out`` do not
    count, and a setting the run's record lacks (added in a later version) counts as its default.
    """
    out = Path(cfg.out)
    meta_file = out / "model" / META_FILE
    if meta_file.is_file():
        defaults = _recorded(TrainConfig(task=cfg.task, model=cfg.model, data=cfg.data, out=cfg.out))
        trained = {**defaults, **(json.loads(meta_file.read_text()).get("trained_with") or {})}
        trained, wanted = json.loads(json.dumps([trained, _recorded(cfg)]))  # as JSON stores it: tuples become lists
        ignored = ("resume", "out")  # a continued run, or a run folder moved elsewhere, is the same run
        if {k: v for k, v in trained.items() if k not in ignored} != {k: v for k, v in wanted.items()
                                                                       if k not in ignored}:
            raise FileExistsError(f"{out} holds a run with other settings; choose another --out or delete it")
        return out / "model"
    resume = last_complete_checkpoint(out / "checkpoints") is not None
    return run(dataclasses.replace(cfg, resume=resume)).model_dir


def run(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` with LayerDrop on ``cfg.data``; evaluate; export to ``cfg.out/model``."""
    _check(cfg)
    start = time.time()
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    resume_from = last_complete_checkpoint(ckpt_dir) if cfg.resume else None
    if not cfg.resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*")):
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass --resume to continue that run, "
                              "or choose another --out")

    splits = datasets.load(cfg.data, seed=cfg.seed, label_column="label" if cfg.task == "classification" else None)
    train_split, valid_split, test_split = splits.train, splits.valid, splits.test
    if cfg.train_rows:
        train_split = train_split.subset(range(min(cfg.train_rows, len(train_split))))
    if cfg.eval_rows:
        valid_split = valid_split.subset(range(min(cfg.eval_rows, len(valid_split))))
        test_split = test_split.subset(range(min(cfg.eval_rows, len(test_split))))
    if cfg.task == "classification" and train_split.labels is None:
        raise ValueError(f"{cfg.data} has no labels; classification needs a label column")
    num_labels = len(train_split.label_names) if train_split.label_names else None

    model, tokenizer = _load_model(cfg, num_labels, train_split.texts)
    learner = None
    if cfg.rate > 0:
        extra = {"granularity": cfg.granularity} if cfg.granularity != "layer" else {}
        apply(model, cfg.rate, per_layer=cfg.per_layer, seed=cfg.seed, pattern=cfg.pattern, **extra)
        if cfg.data_driven:
            learner = learn_rates(model, seed=cfg.seed)

    if cfg.task == "classification":
        train_rows, _ = encode_classification(tokenizer, train_split, cfg, "tokenizing train")
        evals = {name: encode_classification(tokenizer, split, cfg, f"tokenizing {name}")
                 for name, split in (("valid", valid_split), ("test", test_split)) if cfg.evaluate}
        collator: Any = DataCollatorWithPadding(tokenizer)
    else:
        train_rows = encode_lm(tokenizer, train_split.texts, cfg.max_length, "tokenizing train", cfg.progress)
        evals = {name: (encode_lm(tokenizer, split.texts, cfg.max_length, f"tokenizing {name}", cfg.progress), [])
                 for name, split in (("valid", valid_split), ("test", test_split)) if cfg.evaluate}
        # MLM masking draws from the global RNG, which Trainer saves and restores on resume.
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=cfg.task == "mlm", mlm_probability=0.15)

    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 64),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=cfg.warmup,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0,
        label_smoothing_factor=cfg.label_smoothing,
        bf16=cfg.bf16,
        # Trainer wants use_cpu explicit for bf16 on CPUs, and for DDP across CPU processes (torchrun sets WORLD_SIZE).
        use_cpu=not torch.cuda.is_available() and (cfg.bf16 or int(os.environ.get("WORLD_SIZE", "1")) > 1),
        seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        report_to="none",
        disable_tqdm=not cfg.progress,
        remove_unused_columns=False,
        restore_callback_states_from_checkpoint=False,  # restored below, keeping the callback first
        dataloader_num_workers=0,
        ddp_find_unused_parameters=True if cfg.rate > 0 else None,  # under DDP, skipped layers get no gradient
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if cfg.self_distill and cfg.rate <= 0:
        raise ValueError("--self-distill trains LayerDrop sub-networks: it needs --rate > 0")
    trainer = LayerDropTrainer(model=model, args=args, train_dataset=_Rows(train_rows), data_collator=collator,
                               callbacks=[_MarkComplete()], self_distill=cfg.self_distill,
                               distill_weight=cfg.distill_weight, distill_temperature=cfg.distill_temperature,
                               head_lr=cfg.head_lr, rate_learner=learner, rate_lr=cfg.rate_lr)
    if cfg.rate > 0:
        callback = attach(trainer, schedule=cfg.schedule, warmup_steps=cfg.rate_warmup_steps, gamma=cfg.pld_gamma)
        if resume_from:
            callback.restore(resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    metrics: dict[str, float] = {}
    for name, (rows, doc_of) in evals.items():
        if cfg.task == "classification":
            pred = trainer.predict(_Rows(rows), metric_key_prefix=name)
            split = valid_split if name == "valid" else test_split
            metrics[f"{name}_accuracy"] = pooled_accuracy(torch.as_tensor(pred.predictions), split.labels,
                                                           doc_of, cfg.long_doc)
        else:
            loss = trainer.evaluate(_Rows(rows), metric_key_prefix=name)[f"{name}_loss"]
            metrics[f"{name}_loss"] = loss
            metrics[f"{name}_perplexity"] = math.exp(min(loss, 50.0))

    model_dir = out / "model"
    if not trainer.is_world_process_zero():  # launched on several ranks: one of them writes the files
        return TrainResult(out=out, model_dir=model_dir, metrics=metrics, steps=trainer.state.global_step,
                           seconds=time.time() - start, resumed_from=resume_from, main_process=False)
    with atomic_dir(model_dir) as tmp:
        meta = {"trained_with": _recorded(cfg), "metrics": metrics}
        if learner is not None:  # into the config too, so the data-driven strategy finds them
            meta["learned_rates"] = list(record_learned_rates(model))
        if train_split.label_names:
            meta["label_names"] = list(train_split.label_names)
        if isinstance(model, Classifier):
            save_classifier(model, tmp, extra=meta)
        else:
            model.save_pretrained(tmp)
            write_json(tmp / META_FILE, {"task": cfg.task, **meta})
        tokenizer.save_pretrained(tmp)
    write_json(out / "metrics.json", metrics)
    return TrainResult(out=out, model_dir=model_dir, metrics=metrics, steps=trainer.state.global_step,
                       seconds=time.time() - start, resumed_from=resume_from)
