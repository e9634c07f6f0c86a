"""``LayerDropTrainer``: Hugging Face ``Trainer`` with LayerDrop's training options (self-distillation,
distillation from a teacher, training for named depths, a head learning rate, data-driven rates), each
loss exact under gradient accumulation.

Components only: the ``layerdrop train`` recipe that uses it is :mod:`layerdrop.recipes.train`.
See ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer_pt_utils import LengthGroupedSampler

from layerdrop.config.args import EACH_STEP
from layerdrop.core.apply import applied, only_layers
from layerdrop.core.learned import RateLearner
from layerdrop.errors import InputError
from layerdrop.evaluation.qa import without_targets

from .losses import cosine_loss, hidden_loss, output_kd_loss, stand_for_pairs

__all__ = ["TEACHER_LOGITS", "LayerDropTrainer"]

Kind = Literal["items", "tokens", "rows"]
"""What a loss term averages over: the task's items, the real tokens, or the rows."""
KINDS: tuple[Kind, ...] = ("items", "tokens", "rows")

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
        depths: Training for named depths (one elastic run): depth -> the layers it keeps. Each step
            the full network runs, and the sub-network of each depth :meth:`depths_at` names for the
            step; each sub-network learns ``task_weight`` x the task + ``distill_weight`` x
            :func:`output_kd_loss` at ``distill_temperature`` + ``hidden_weight`` x :func:`hidden_loss`
            toward the teacher: ``teacher`` if given (which then teaches the full network the same
            way), else the full network of the same step (in-place distillation; it learns the task).
        each_step: With ``depths``: ``"all"`` of them each step, or ``"sandwich"``: the smallest and
            ``sandwich`` others drawn at random, the draw seeded by the step.
        sandwich: With ``each_step="sandwich"``: how many other depths are drawn each step.
    """

    def __init__(self, *args: Any, self_distill: bool = False, distill_weight: float = 1.0,
                 distill_temperature: float = 1.0, head_lr: float | None = None,
                 rate_learner: RateLearner | None = None, rate_lr: float = 5e-3, teacher: nn.Module | None = None,
                 task_weight: float = 1.0, cos_weight: float = 0.0, hidden_weight: float = 0.0,
                 hidden_layers: Sequence[tuple[int, int]] = (), depths: Mapping[int, Sequence[int]] | None = None,
                 each_step: Literal["all", "sandwich"] = "all", sandwich: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if teacher is not None:
            _check_teacher(teacher, self.args.device, self_distill)
        if teacher is not None or depths:
            if distill_temperature <= 0:
                raise InputError(f"the distillation temperature must be above 0, got {distill_temperature}")
            if max(distill_weight, task_weight, cos_weight, hidden_weight) <= 0:
                raise InputError("every loss weight is 0 (task, distill, cos, hidden): the student would learn nothing")
        if depths:
            _check_depths(depths, each_step, sandwich, self_distill, cos_weight)
        elif teacher is not None:
            if hidden_weight > 0 and not hidden_layers:
                raise InputError("hidden_weight needs hidden_layers: the (student, teacher) hidden-state pairs "
                                 "to match (layerdrop.training.losses.hidden_pairs(kept) for a cut student)")
        elif cos_weight or hidden_weight:
            raise InputError("cos_weight and hidden_weight match a teacher's hidden states: pass teacher=")
        self.depths = {int(d): tuple(kept) for d, kept in (depths or {}).items()}
        self.each_step = each_step
        self.sandwich = sandwich
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
        self._step_counts: dict[Kind, torch.Tensor] | None = None
        """The current step's count of each kind of item over its micro-batches."""

    loss_is_scaled_for_ga = True
    """Every path's loss is scaled for gradient accumulation here (:meth:`_share`), never by the model."""

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        sampler = super()._get_eval_sampler(eval_dataset)
        if isinstance(sampler, LengthGroupedSampler):  # HF groups evaluation rows too, so predictions come back out
            return SequentialSampler(eval_dataset)     # of the dataset's order that their labels and windows keep
        return sampler

    def compute_loss(  # type: ignore[no-untyped-def]  # HF Trainer's signature
            self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs)
        if self.depths:
            terms, outputs, signal = self._depth_terms(model, inputs)
        elif self.teacher is not None:
            terms, outputs, signal = self._teacher_terms(model, inputs)
        elif self.self_distill:
            terms, outputs, signal = self._self_distill_terms(model, inputs)
        else:  # HF's own loss (label smoothing included), the batch's mean: no num_items_in_batch
            task, outputs = super().compute_loss(model, dict(inputs), True)
            terms, signal = [(1.0, task, "items")], task
        counted = num_items_in_batch is not None
        loss = sum(weight * term * self._share(inputs, kind, counted) for weight, term, kind in terms)
        if self.rate_learner is not None:  # a per-forward surrogate: scaled like a forward, by 1 / k
            loss = loss + self.rate_learner.policy_loss(signal) / self._micro_batches()
        return (loss, outputs) if return_outputs else loss

    def _micro_batches(self) -> int:
        return getattr(self, "current_gradient_accumulation_steps", 1)  # set by the training loop

    def _share(self, inputs: dict[str, Any], kind: Kind, counted: bool) -> torch.Tensor | float:
        """This micro-batch's share of the step for a loss term averaged over its ``kind`` of items, so
        that ``k`` micro-batches of ``b`` rows give the loss and gradients of one batch of ``k·b`` rows:
        its count of those items over the step's (:meth:`_get_num_items_in_batch`); ``1 / k`` when the
        step was not counted (a loss computed outside the training loop)."""
        if not counted or self._step_counts is None:
            return 1.0 / self._micro_batches()
        share = self._count(inputs, kind) / self._step_counts[kind]
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            share = share * self.accelerator.num_processes  # the count is the sum over ranks; DDP averages
        return share

    def _count(self, batch: dict[str, Any], kind: Kind) -> torch.Tensor:
        """How many items of ``kind`` ``batch`` holds: ``items`` are what the task loss averages over (a
        causal LM's predicted tokens, ``labels[:, 1:]``; a classifier's rows; QA's rows), ``tokens`` the
        real tokens the per-token distillation losses average over, ``rows`` the rows."""
        ids = batch["input_ids"]
        if kind == "rows" or (kind == "items" and "labels" not in batch):
            return torch.tensor(ids.shape[0], device=ids.device)
        if kind == "tokens":
            mask = batch.get("attention_mask")
            return mask.sum() if mask is not None else torch.tensor(ids.numel(), device=ids.device)
        labels = batch["labels"]
        return (labels[..., 1:] if self._shifts_labels() else labels).ne(-100).sum()

    def _shifts_labels(self) -> bool:
        """Whether the model is a causal LM, whose loss predicts token t+1 from t (``labels[:, 1:]``)."""
        name = self.accelerator.unwrap_model(self.model)._get_name()
        return getattr(self, "_loss_shifts_labels", False) or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Count the step's items of every kind over its micro-batches (kept for :meth:`_share`), and
        return its task items: HF's ``Trainer`` would count a causal LM's unshifted labels unless the
        model names its loss type, and only for models whose ``forward`` takes ``**kwargs``."""
        if not batch_samples:
            return None
        counts = torch.stack([torch.stack([self._count(b, kind).to(device) for kind in KINDS])
                              for b in batch_samples]).sum(0)  # (3,)
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)  # (ranks, 3) -> (3,)
        self._step_counts = dict(zip(KINDS, counts, strict=True))
        return counts[0]

    def _task(self, outputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
        """The task loss: the model's, or with label smoothing HF's smoother (shifted for a causal LM)."""
        smoother = self.label_smoother  # not None when it took the labels
        if labels is None or smoother is None:
            return outputs.loss
        return smoother(outputs, labels, shift_labels=self._shifts_labels())

    def _self_distill_terms(self, model: nn.Module, inputs: dict[str, Any]
                            ) -> tuple[list[tuple[float, torch.Tensor, Kind]], Any, torch.Tensor]:
        """The full network learns the task; the sub-network LayerDrop samples learns its predictions
        (per token for a language model, its real tokens only)."""
        module, state = applied(model)
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        with only_layers(module, range(len(state.settings.rates))):
            full = model(**inputs)  # the whole network, on the task
        sub = model(**{k: v for k, v in inputs.items() if k != "labels"})  # a sampled sub-network
        distill = output_kd_loss(sub, full, self.distill_temperature, inputs.get("attention_mask"))
        terms = [(1.0, self._task(full, labels), "items"),
                 (self.distill_weight, distill, _kd_kind(full))]
        return terms, full, distill  # the rates learn from the sub-network's gap, free of data noise

    def depths_at(self, step: int) -> tuple[int, ...]:
        """The named depths that train at optimizer step ``step``, deepest first: all of them, or the
        sandwich's smallest and ``sandwich`` others drawn by a generator seeded with the run's seed and
        the step, so every micro-batch of a step, and a resumed run, draws the same ones."""
        depths = sorted(self.depths, reverse=True)
        if self.each_step == "all" or len(depths) <= self.sandwich + 1:
            return tuple(depths)
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + step)
        others = depths[:-1]
        drawn = torch.randperm(len(others), generator=generator)[:self.sandwich].tolist()
        return (*sorted((others[i] for i in drawn), reverse=True), depths[-1])

    def _depth_terms(self, model: nn.Module, inputs: dict[str, Any]
                     ) -> tuple[list[tuple[float, torch.Tensor, Kind]], Any, torch.Tensor]:
        """The full network and this step's named depths, each learning from the teacher: ``teacher``, else
        the full network in the same step (whose own loss is then the task)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels") if self.label_smoother is not None else None
        extra = {"output_hidden_states": True} if self.hidden_weight > 0 else {}
        module = self.accelerator.unwrap_model(model)
        mask = inputs.get("attention_mask")
        full = model(**inputs, **extra)  # every layer
        terms: list[tuple[float, torch.Tensor, Kind]]
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(**without_targets(inputs), **extra)
            terms = self._learn(full, teacher, labels, mask, self._stand_for(full, teacher, None))
        else:  # in-place: the full network learns the task and teaches the sub-networks
            teacher = full
            terms = [(1.0, self._task(full, labels), "items")]
        for depth in self.depths_at(self.state.global_step):
            kept = self.depths[depth]
            with only_layers(module, kept):
                sub = model(**inputs, **extra)
            terms += self._learn(sub, teacher, labels, mask, self._stand_for(sub, teacher, kept))
        return terms, full, terms[0][1]

    def _learn(self, student: Any, teacher: Any, labels: torch.Tensor | None, mask: torch.Tensor | None,
               pairs: Sequence[tuple[int, int]]) -> list[tuple[float, torch.Tensor, Kind]]:
        """A network's weighted terms toward ``teacher``: the task, the soft targets, DistilBERT's cosine loss on
        the last hidden states, and :func:`hidden_loss` over the (student, teacher) ``hidden_states`` ``pairs``."""
        terms: list[tuple[float, torch.Tensor, Kind]] = []
        if self.task_weight:
            terms.append((self.task_weight, self._task(student, labels), "items"))
        if self.distill_weight:
            terms.append((self.distill_weight, output_kd_loss(student, teacher, self.distill_temperature, mask),
                          _kd_kind(student)))
        if self.cos_weight:
            terms.append((self.cos_weight, cosine_loss(student.hidden_states[-1], teacher.hidden_states[-1], mask),
                          "tokens"))
        if self.hidden_weight:
            terms.append((self.hidden_weight, hidden_loss(student.hidden_states, teacher.hidden_states, pairs, mask),
                          "tokens"))
        return terms

    def _stand_for(self, student: Any, teacher: Any, kept: Sequence[int] | None) -> tuple[tuple[int, int], ...]:
        """With ``hidden_weight``, the hidden-state pairs of a network running the layers ``kept`` (``None``: all)
        against the teacher's layers they stand for (:func:`stand_for_pairs`); none without it."""
        if not self.hidden_weight:
            return ()
        num_layers = len(student.hidden_states) - 1
        return stand_for_pairs(kept if kept is not None else range(num_layers), num_layers,
                               len(teacher.hidden_states) - 1)

    def _teacher_terms(self, model: nn.Module, inputs: dict[str, Any]
                       ) -> tuple[list[tuple[float, torch.Tensor, Kind]], Any, torch.Tensor]:
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
        terms = self._learn(student, teacher, labels, inputs.get("attention_mask"), self.hidden_layers)
        task = terms[0][1] if self.task_weight else self._task(student, labels)  # the rate learner's signal
        return terms, student, task

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


def _check_depths(depths: Mapping[int, Sequence[int]], each_step: str, sandwich: int, self_distill: bool,
                  cos_weight: float) -> None:
    """Refuse named-depth settings that cannot train."""
    if self_distill:
        raise InputError("self_distill samples LayerDrop sub-networks, depths trains named ones: choose one")
    if cos_weight:
        raise InputError("with depths, match hidden states with hidden_weight (cos_weight is distillation's)")
    if each_step not in EACH_STEP:
        raise InputError(f"each_step={each_step!r}: choose one of {', '.join(map(repr, EACH_STEP))}")
    if each_step == "sandwich" and sandwich < 0:
        raise InputError(f"sandwich={sandwich}: how many other depths a step draws, 0 or more")
    if any(not kept for kept in depths.values()):
        raise InputError(f"depths={dict(depths)}: give every named depth its layers, at least one (depth -> kept)")


def _kd_kind(outputs: Any) -> Kind:
    """What :func:`~layerdrop.training.losses.output_kd_loss` averages over for these outputs: the real
    tokens of per-token logits ``(B, T, V)``, else the rows (a classifier's logits, QA's start and end)."""
    logits = getattr(outputs, "logits", None)
    return "tokens" if logits is not None and logits.dim() == 3 else "rows"
