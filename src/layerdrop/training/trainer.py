"""``LayerDropTrainer``: Hugging Face ``Trainer`` with LayerDrop's training options (self-distillation,
distillation from a teacher, a head learning rate, data-driven rates), each loss exact under
gradient accumulation.

Components only: the ``layerdrop train`` recipe that uses it is :mod:`layerdrop.recipes.train`.
See ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from layerdrop.core.apply import applied, only_layers
from layerdrop.core.learned import RateLearner
from layerdrop.errors import InputError
from layerdrop.evaluation.qa import without_targets

from .losses import cosine_loss, hidden_loss, output_kd_loss

__all__ = ["TEACHER_LOGITS", "LayerDropTrainer"]

TEACHER_LOGITS = "teacher_logits"
"""A training row's key for its teacher's logits computed beforehand: :class:`LayerDropTrainer` then
uses them instead of running its teacher."""


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
                raise InputError(f"the distillation temperature must be above 0, got {distill_temperature}")
            if max(distill_weight, task_weight, cos_weight, hidden_weight) <= 0:
                raise InputError("every loss weight is 0 (task, distill, cos, hidden): the student would learn nothing")
            if hidden_weight > 0 and not hidden_layers:
                raise InputError("hidden_weight needs hidden_layers: the (student, teacher) hidden-state pairs "
                                 "to match (layerdrop.training.losses.hidden_pairs(kept) for a cut student)")
        elif cos_weight or hidden_weight:
            raise InputError("cos_weight and hidden_weight match a teacher's hidden states: pass teacher=")
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

    loss_is_scaled_for_ga = True
    """Every path's loss is scaled for gradient accumulation here (:meth:`_accumulated`), never by the model."""

    def compute_loss(  # type: ignore[no-untyped-def]  # HF Trainer's signature
            self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs)
        if self.teacher is not None:
            loss, outputs = self._teacher_loss(model, inputs)
        elif self.self_distill:
            loss, outputs = self._self_distill_loss(model, inputs)
        else:
            loss, outputs = super().compute_loss(model, inputs, True)  # the batch's mean: no num_items_in_batch
            if self.rate_learner is not None:
                loss = loss + self.rate_learner.policy_loss(loss)
        loss = self._accumulated(loss, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _accumulated(self, loss: torch.Tensor, inputs: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
        """This micro-batch's share of the accumulated step's loss, so that ``k`` micro-batches of ``b``
        rows give the loss and gradients of one batch of ``k·b``: ``loss`` is a mean over this batch's
        items (rows, or the tokens a language model predicts), weighted by their share of the step's
        ``num_items_in_batch``; without that count (no ``labels``: QA), by ``1 / k``."""
        if num_items_in_batch is None or "labels" not in inputs:
            return loss / getattr(self, "current_gradient_accumulation_steps", 1)  # set by the training loop
        share = self._items(inputs["labels"]) / num_items_in_batch
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            share = share * self.accelerator.num_processes  # the count is the sum over ranks; DDP averages
        return loss * share

    def _items(self, labels: torch.Tensor) -> torch.Tensor:
        """How many predictions ``labels`` score: a causal LM predicts token t+1 from t, so ``labels[:, 1:]``."""
        name = self.accelerator.unwrap_model(self.model)._get_name()
        shifted = getattr(self, "_loss_shifts_labels", False) or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        return (labels[..., 1:] if shifted else labels).ne(-100).sum()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The step's count of items over its micro-batches, by :meth:`_items`'s rule (HF's ``Trainer``
        counts a causal LM's unshifted labels unless the model names its loss type, and only for models
        whose ``forward`` takes ``**kwargs``)."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        total = sum(self._items(batch["labels"]) for batch in batch_samples)
        assert isinstance(total, torch.Tensor)  # a sum of tensors: batch_samples is not empty
        count = total.to(device)
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def _self_distill_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The full network learns the task; the sub-network LayerDrop samples learns its predictions."""
        module, state = applied(model)
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        with only_layers(module, range(len(state.settings.rates))):
            full = model(**inputs)  # the whole network, on the task
        smoother = self.label_smoother  # not None when it took the labels
        task = smoother(full, labels) if smoother is not None and labels is not None else full.loss
        sub = model(**{k: v for k, v in inputs.items() if k != "labels"})  # a sampled sub-network
        distill = output_kd_loss(sub, full, self.distill_temperature)
        loss = task + self.distill_weight * distill
        if self.rate_learner is not None:  # the sub-network's gap to the full one, free of data noise
            loss = loss + self.rate_learner.policy_loss(distill)
        return loss, full

    def _teacher_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor | float, Any]:
        """The task and the teacher's soft targets (and, optionally, its hidden states)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        cached = inputs.pop(TEACHER_LOGITS, None)
        states = self.cos_weight > 0 or self.hidden_weight > 0
        if cached is not None and states:
            raise InputError("cached teacher logits hold no hidden states: cos_weight and hidden_weight need "
                             "the teacher run each step")
        extra = {"output_hidden_states": True} if states else {}
        if cached is not None:
            teacher: Any = SimpleNamespace(logits=cached)
        else:
            assert self.teacher is not None  # compute_loss comes here only with a teacher
            with torch.no_grad():
                teacher = self.teacher(**without_targets(inputs), **extra)
        student = model(**inputs, **extra)
        smoother = self.label_smoother  # not None when it took the labels
        task = smoother(student, labels) if smoother is not None and labels is not None else student.loss
        mask = inputs.get("attention_mask")
        loss = self.task_weight * task if self.task_weight else 0.0
        if self.distill_weight:
            loss = loss + self.distill_weight * output_kd_loss(student, teacher, self.distill_temperature, mask)
        if self.cos_weight:
            loss = loss + self.cos_weight * cosine_loss(student.hidden_states[-1], teacher.hidden_states[-1], mask)
        if self.hidden_weight:
            loss = loss + self.hidden_weight * hidden_loss(student.hidden_states, teacher.hidden_states,
                                                           self.hidden_layers, mask)
        return loss, student

    def create_optimizer(self, model=None):  # type: ignore[no-untyped-def]  # HF Trainer's signature
        if self.head_lr is None:
            super().create_optimizer(model)
        else:
            self._create_head_lr_optimizer(model)
        if self.rate_learner is not None:
            self.optimizer.add_param_group({"params": list(self.rate_learner.parameters()), "lr": self.rate_lr,
                                            "weight_decay": 0.0})
        return self.optimizer

    def _create_head_lr_optimizer(self, model: nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        assert model is not None  # the Trainer's model: create_optimizer runs once it has one
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
        raise InputError("self_distill learns from the model's own full network, teacher from another model: "
                         "choose one")
    if any(module.training for module in teacher.modules()):
        raise InputError("the teacher must be in eval mode (teacher.eval()); the trainer does not switch a "
                         "caller's model")
    on = {p.device for p in teacher.parameters()}
    if on and on != {torch.device(device)}:
        raise InputError(f"the teacher is on {sorted(map(str, on))}, the trainer on {device}: "
                         f"move it first (teacher.to({str(device)!r}))")
