"""The Hugging Face ``Trainer`` callback of a LayerDrop model: the rate schedule, logging, resumable masks.

Use it with your own ``Trainer``::

    layerdrop.apply(model, rate=0.5)
    trainer = Trainer(model=model, args=TrainingArguments(..., restore_callback_states_from_checkpoint=True))
    layerdrop.training.callback.attach(trainer, schedule="progressive")   # first in line, so TensorBoard sees its logs

See ``docs/training.md``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from layerdrop.core.apply import LayerDropState, applied, get_rng_state, scale_rates, set_rng_state
from layerdrop.core.distributed import DEFAULT_CHECK_EVERY, check_trainer_setup, configure_trainer, watch, world_size
from layerdrop.core.rates import schedule_factor
from layerdrop.errors import InputError, MissingInput
from layerdrop.files import write_bytes

__all__ = ["LEARNED_FILE", "LayerDropCallback", "attach"]

LEARNED_FILE = "learned_rates.safetensors"
"""The data-driven scorer's state, saved into each checkpoint (it is not part of the model)."""


def _encode_rng(rng: dict[str, Any]) -> dict[str, Any]:
    return {**rng, "generator": base64.b64encode(rng["generator"].numpy().tobytes()).decode("ascii")}


def _decode_rng(rng: dict[str, Any]) -> dict[str, Any]:
    raw = bytearray(base64.b64decode(rng["generator"]))
    return {**rng, "generator": torch.frombuffer(raw, dtype=torch.uint8).clone()}


class LayerDropCallback(TrainerCallback, ExportableState):
    """Rate schedule, logging and resumable masks for a LayerDrop model under HF ``Trainer``.

    Args:
        schedule: ``"constant"``, ``"warmup"`` (linear over ``warmup_steps``) or
            ``"progressive"`` (Zhang & He 2020, with ``gamma``); see :mod:`layerdrop.core.rates`.
        warmup_steps: Optimizer steps of the linear rate warm-up.
        gamma: Decay of progressive layer dropping (their default 0.001).
        check_every: Under DDP or FSDP, check that all ranks draw the same masks at the first
            training forward and every this many; see :func:`layerdrop.core.distributed.watch`.

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
            raise MissingInput(f"{checkpoint} is not a Trainer checkpoint: it has no trainer_state.json")
        saved = json.loads(path.read_text()).get("stateful_callbacks", {}).get(type(self).__name__)
        if not saved:
            raise InputError(f"{checkpoint} holds no {type(self).__name__} state: was it trained with one?")
        self.rng = (saved[0] if isinstance(saved, list) else saved)["attributes"]["rng"]
        learned = Path(checkpoint) / LEARNED_FILE
        self.learned = safetensors.torch.load_file(learned) if learned.is_file() else None

    def _state(self) -> LayerDropState:
        if self._model is None:
            raise RuntimeError("LayerDropCallback is used before training began")
        return applied(self._model)[1]

    def _set_scale(self, step: int) -> None:
        assert self._model is not None  # on_train_begin set it, and Trainer calls it before any step
        module, _ = applied(self._model)
        scale_rates(module, schedule_factor(self.schedule, step, warmup_steps=self.warmup_steps, gamma=self.gamma))

    def on_train_begin(  # type: ignore[no-untyped-def]  # HF hook's signature
            self, args, state, control, model=None, **kwargs):
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

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        self._set_scale(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        learner = self._state().learner
        if learner is not None:  # Trainer zeroes only the model's gradients
            learner.zero_grad(set_to_none=True)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
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

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
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
    :func:`layerdrop.core.distributed.configure_trainer`), which matters when it runs on several ranks.
    """
    callback = LayerDropCallback(**kwargs)
    configure_trainer(trainer)  # DDP must tolerate skipped layers
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
