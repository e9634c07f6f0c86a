"""Hugging Face ``Trainer`` components for LayerDrop: the callback, the trainer, the losses.

Use the callback with your own ``Trainer``::

    layerdrop.apply(model, rate=0.5)
    trainer = Trainer(model=model, args=TrainingArguments(..., restore_callback_states_from_checkpoint=True))
    layerdrop.trainer.attach(trainer, schedule="progressive")   # first in line, so TensorBoard sees its logs

Components only: the ``layerdrop train`` recipe that uses them is :mod:`layerdrop.train`.
See ``docs/training.md``.
"""

from __future__ import annotations

import base64
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from .core import LayerDropState, applied, get_rng_state, only_layers, scale_rates, set_rng_state
from .distributed import DEFAULT_CHECK_EVERY, check_trainer_setup, configure_trainer, watch, world_size
from .files import write_bytes, write_json
from .learned import RateLearner
from .qa import without_targets
from .rates import schedule_factor

__all__ = [
    "CHECKPOINT_DONE",
    "LEARNED_FILE",
    "TEACHER_LOGITS",
    "LayerDropCallback",
    "LayerDropTrainer",
    "MarkCheckpointComplete",
    "attach",
    "cosine_loss",
    "drop_resume_state",
    "hidden_loss",
    "hidden_pairs",
    "kd_loss",
    "last_complete_checkpoint",
    "output_kd_loss",
    "self_distill_loss",
]

LEARNED_FILE = "learned_rates.safetensors"
"""The data-driven scorer's state, saved into each checkpoint (it is not part of the model)."""

TEACHER_LOGITS = "teacher_logits"
"""A training row's key for its teacher's logits computed beforehand: :class:`LayerDropTrainer` then
uses them instead of running its teacher."""

CHECKPOINT_DONE = "layerdrop-complete.json"
"""Written last into a checkpoint folder: only checkpoints that have it are resumed from."""


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
        return applied(self._model)[1]

    def _set_scale(self, step: int) -> None:
        module, _ = applied(self._model)  # type: ignore[arg-type]
        scale_rates(module, schedule_factor(self.schedule, step, warmup_steps=self.warmup_steps, gamma=self.gamma))

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        self._model = model
        module, ld = applied(model)
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
        module, _ = applied(self._model) if self._model is not None else (None, None)
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


def _real(mask: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` ``(B, T, ...)`` at the positions where ``mask`` ``(B, T)`` is true, ``(N, ...)``; all of them without a mask."""
    return tensors if mask is None else tuple(t[mask.bool()] for t in tensors)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Knowledge distillation: KL(teacher || student) on softened predictions, times ``T**2``.

    Logits are ``(..., C)``; the KL is averaged over the predictions (those where ``mask``, of the
    logits' leading shape, is true: a language model's real tokens) and the teacher gets no
    gradient. The teacher may be the full network (self-distillation) or another model.
    """
    student_logits, teacher_logits = _real(mask, student_logits, teacher_logits)
    s = (student_logits / temperature).flatten(0, -2).log_softmax(-1)  # (N, C)
    t = (teacher_logits.detach() / temperature).flatten(0, -2).log_softmax(-1)  # (N, C)
    return nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def output_kd_loss(student: Any, teacher: Any, temperature: float = 1.0,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`kd_loss` between two model outputs: on ``logits``, or for question answering the
    mean of the start and end logits' losses (as its task loss averages the two). ``mask`` ``(B, T)``
    selects the tokens of per-token logits ``(B, T, V)``; it is ignored for one prediction per row."""
    if getattr(student, "logits", None) is not None:
        per_token = mask is not None and student.logits.dim() == 3
        return kd_loss(student.logits, teacher.logits, temperature, mask if per_token else None)
    return (kd_loss(student.start_logits, teacher.start_logits, temperature)
            + kd_loss(student.end_logits, teacher.end_logits, temperature)) / 2


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistilBERT's cosine loss: ``1 - cos`` between the student's and the teacher's hidden states
    ``(B, T, H)``, averaged over the tokens where ``mask`` ``(B, T)`` is true."""
    student, teacher = _real(mask, student, teacher)  # (N, H)
    return (1 - nn.functional.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]],
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Intermediate-layer matching (BERT-PKD): the mean squared distance between L2-normalised
    hidden states, averaged over ``pairs`` of (student, teacher) indices into the two models'
    ``hidden_states`` and over the tokens where ``mask`` is true."""
    losses = []
    for i, j in pairs:
        s, t = _real(mask, student[i], teacher[j].detach())  # (N, H)
        diff = nn.functional.normalize(s, dim=-1) - nn.functional.normalize(t, dim=-1)
        losses.append(diff.pow(2).sum(-1).mean())
    return torch.stack(losses).mean()


def hidden_pairs(kept: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Which ``hidden_states`` :func:`hidden_loss` pairs for a student made of the teacher's layers
    ``kept``: the output of the student's layer ``i`` and of the teacher's layer ``kept[i]``, for
    every student layer but the last (whose output a final norm may follow; the cosine loss covers it).

    >>> hidden_pairs((0, 2, 4, 7, 9, 11))
    ((1, 1), (2, 3), (3, 5), (4, 8), (5, 10))
    """
    return tuple((i + 1, k + 1) for i, k in enumerate(kept[:-1]))


def self_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Deprecated alias of :func:`kd_loss`."""
    warnings.warn("self_distill_loss is deprecated; use layerdrop.trainer.kd_loss",
                  DeprecationWarning, stacklevel=2)
    return kd_loss(student, teacher, temperature)


class LayerDropTrainer(Trainer):
    """``Trainer`` with LayerDrop's options: self-distillation, distillation from a teacher, and a
    separate head learning rate.

    Args:
        self_distill: Per step, the full network (every layer) learns the task and the
            sub-network LayerDrop samples learns to match the full network's predictions.
            Costs one extra forward and backward of the sub-network per step.
        distill_weight: Weight of the KL term (of the teacher's, with ``teacher``).
        distill_temperature: Softmax temperature of the soft targets.
        teacher: A frozen model in eval mode, on the trainer's device, with the model's inputs and
            outputs (e.g. the uncut model of a cut student): each training step the model learns
            ``task_weight`` x its task loss + ``distill_weight`` x :func:`output_kd_loss` to the
            teacher's predictions (DistilBERT's soft targets), plus the optional hidden-state terms.
            The teacher runs without gradients and is never changed. A batch that carries
            :data:`TEACHER_LOGITS` (computed beforehand) uses them instead of running the teacher.
        task_weight: Weight of the task loss with ``teacher``.
        cos_weight: Weight of :func:`cosine_loss` between the last hidden states (DistilBERT's).
        hidden_weight: Weight of :func:`hidden_loss` over ``hidden_layers`` (BERT-PKD's).
        hidden_layers: The (student, teacher) ``hidden_states`` index pairs of ``hidden_weight``;
            :func:`hidden_pairs` gives them for a student cut from its teacher.
        head_lr: Learning rate of the task head: a :class:`Classifier`'s ``head``, or what a
            ``*For...`` model holds outside its base model (``classifier``, ``score``, ``qa_outputs``).
        rate_learner: The scorer of data-driven rates (:func:`layerdrop.attach_rate_learner`); it is
            not part of the model, so it gets its own optimizer parameter group.
        rate_lr: Learning rate of ``rate_learner``.
    """

    def __init__(self, *args: Any, self_distill: bool = False, distill_weight: float = 1.0,
                 distill_temperature: float = 1.0, head_lr: float | None = None,
                 rate_learner: RateLearner | None = None, rate_lr: float = 5e-3, teacher: nn.Module | None = None,
                 task_weight: float = 1.0, cos_weight: float = 0.0, hidden_weight: float = 0.0,
                 hidden_layers: Sequence[tuple[int, int]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if teacher is not None:
            _check_teacher(teacher, self.args.device, self_distill)
            if distill_temperature <= 0:
                raise ValueError(f"the distillation temperature must be above 0, got {distill_temperature}")
            if max(distill_weight, task_weight, cos_weight, hidden_weight) <= 0:
                raise ValueError("every loss weight is 0 (task, distill, cos, hidden): the student would learn nothing")
            if hidden_weight > 0 and not hidden_layers:
                raise ValueError("hidden_weight needs hidden_layers: the (student, teacher) hidden-state pairs "
                                 "to match (layerdrop.trainer.hidden_pairs(kept) for a cut student)")
        elif cos_weight or hidden_weight:
            raise ValueError("cos_weight and hidden_weight match a teacher's hidden states: pass teacher=")
        self.teacher = teacher
        self.task_weight = task_weight
        self.cos_weight = cos_weight
        self.hidden_weight = hidden_weight
        self.hidden_layers = tuple(hidden_layers)
        self.self_distill = self_distill
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.head_lr = head_lr
        self.rate_learner = rate_learner
        self.rate_lr = rate_lr

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        if self.teacher is not None and model.training:
            return self._teacher_loss(model, inputs, return_outputs)
        if not (self.self_distill and model.training):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.rate_learner is None or not model.training:
                return result
            loss = result[0] if return_outputs else result
            loss = loss + self.rate_learner.policy_loss(loss)
            return (loss, result[1]) if return_outputs else loss
        module, state = applied(model)
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        with only_layers(module, range(len(state.settings.rates))):
            full = model(**inputs)  # the whole network, on the task
        task = self.label_smoother(full, labels) if labels is not None else full.loss
        sub = model(**{k: v for k, v in inputs.items() if k != "labels"})  # a sampled sub-network
        distill = output_kd_loss(sub, full, self.distill_temperature)
        loss = task + self.distill_weight * distill
        if self.rate_learner is not None:  # the sub-network's gap to the full one, free of data noise
            loss = loss + self.rate_learner.policy_loss(distill)
        return (loss, full) if return_outputs else loss

    def _teacher_loss(self, model, inputs, return_outputs):  # type: ignore[no-untyped-def]
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        cached = inputs.pop(TEACHER_LOGITS, None)
        states = self.cos_weight > 0 or self.hidden_weight > 0
        if cached is not None and states:
            raise ValueError("cached teacher logits hold no hidden states: cos_weight and hidden_weight need "
                             "the teacher run each step")
        extra = {"output_hidden_states": True} if states else {}
        if cached is not None:
            teacher: Any = SimpleNamespace(logits=cached)
        else:
            with torch.no_grad():
                teacher = self.teacher(**without_targets(inputs), **extra)
        student = model(**inputs, **extra)
        task = self.label_smoother(student, labels) if labels is not None else student.loss
        mask = inputs.get("attention_mask")
        loss = self.task_weight * task if self.task_weight else 0.0
        if self.distill_weight:
            loss = loss + self.distill_weight * output_kd_loss(student, teacher, self.distill_temperature, mask)
        if self.cos_weight:
            loss = loss + self.cos_weight * cosine_loss(student.hidden_states[-1], teacher.hidden_states[-1], mask)
        if self.hidden_weight:
            loss = loss + self.hidden_weight * hidden_loss(student.hidden_states, teacher.hidden_states,
                                                           self.hidden_layers, mask)
        return (loss, student) if return_outputs else loss

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
        base = getattr(model, "base_model_prefix", "")
        base = f"{base}." if base and hasattr(model, base) else None  # a *For... model's body

        def in_head_of(name: str) -> bool:
            return not name.startswith(base) if base else name.startswith("head.")

        groups = []
        for in_head in (False, True):
            for decayed in (True, False):
                params = [p for n, p in model.named_parameters()
                          if p.requires_grad and in_head_of(n) == in_head and (n in decay) == decayed]
                if params:
                    groups.append({"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
                                   "lr": self.head_lr if in_head else self.args.learning_rate})
        self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=(self.args.adam_beta1,
                                           self.args.adam_beta2), eps=self.args.adam_epsilon)


def _check_teacher(teacher: nn.Module, device: torch.device, self_distill: bool) -> None:
    """Refuse a teacher that would be changed or could not run beside the student."""
    if self_distill:
        raise ValueError("self_distill learns from the model's own full network, teacher from another model: "
                         "choose one")
    if any(module.training for module in teacher.modules()):
        raise ValueError("the teacher must be in eval mode (teacher.eval()); the trainer does not switch a "
                         "caller's model")
    on = {p.device for p in teacher.parameters()}
    if on and on != {torch.device(device)}:
        raise ValueError(f"the teacher is on {sorted(map(str, on))}, the trainer on {device}: "
                         f"move it first (teacher.to({str(device)!r}))")


class MarkCheckpointComplete(TrainerCallback):
    """After ``Trainer`` has written a checkpoint, mark it complete (atomically)."""

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json(folder / CHECKPOINT_DONE, {"global_step": state.global_step})


def drop_resume_state(folder: str | Path) -> int:
    """Free the disk a finished run's checkpoints take: each ``checkpoint-N`` under ``folder`` keeps
    only its log (``trainer_state.json``) and is no longer complete, so nothing resumes from it.
    The run's exported model is elsewhere (``model/``). Returns the bytes freed."""
    freed = 0
    for checkpoint in Path(folder).glob("checkpoint-*"):
        (checkpoint / CHECKPOINT_DONE).unlink(missing_ok=True)  # first: a half-emptied checkpoint is never resumed
        for path in sorted(checkpoint.rglob("*"), reverse=True):  # files before the folders that hold them
            if path.name == "trainer_state.json" and path.parent == checkpoint:
                continue
            if path.is_dir():
                path.rmdir()
            else:
                freed += path.stat().st_size
                path.unlink()
    return freed


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` under ``folder`` that was completely written."""
    found = []
    for p in Path(folder).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / CHECKPOINT_DONE).is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None
