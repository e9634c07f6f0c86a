"""A record of the masks a LayerDrop run drew: which layers ran at every training forward.

LayerDrop (Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", ICLR 2020, arXiv:1909.11556) draws one keep-mask per training forward.
:func:`record_masks` puts a forward hook on the module LayerDrop was applied to that copies
each newly drawn mask, and only reads: the generator and the masks are those of a run without it
(tested). :class:`MaskLogCallback` keeps a ``Trainer`` run's file in step with its checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import TrainerCallback

from layerdrop.errors import InputError
from layerdrop.files import write_bytes

from .apply import applied

__all__ = ["MASK_FILE", "MaskLog", "MaskLogCallback", "MaskRecorder", "load_mask_log", "record_masks",
           "save_mask_log"]

MASK_FILE = "masks.safetensors"
"""Where ``layerdrop train --record-masks`` writes the run's masks, in its output folder."""


@dataclass(frozen=True)
class MaskLog:
    """The masks of ``N`` training forwards of a model with ``L`` layers."""

    keep: torch.Tensor
    """``(N, L)`` bool: whether each layer ran (any part of it) at each forward."""
    parts: torch.Tensor | None
    """``(N, L, P)`` bool at granularity ``sublayer`` (which sublayers ran) or ``head`` (which heads
    were kept); ``None`` at granularity ``layer``."""
    draw: torch.Tensor
    """``(N,)`` int64: each forward's number among the run's draws (0, 1, ...)."""
    step: torch.Tensor
    """``(N,)`` int64: the optimizer step it belongs to (-1 outside a ``Trainer``)."""
    granularity: str = "layer"
    """The run's ``LayerDropSettings.granularity``: what ``parts`` holds."""
    pattern: str = "random"
    """The run's ``LayerDropSettings.pattern``."""

    @property
    def layers_run(self) -> torch.Tensor:
        """``(N,)`` int64: how many layers ran at each forward."""
        return self.keep.sum(1)


def _empty(layers: int, parts: int | None, granularity: str, pattern: str) -> MaskLog:
    return MaskLog(keep=torch.zeros(0, layers, dtype=torch.bool),
                   parts=None if parts is None else torch.zeros(0, layers, parts, dtype=torch.bool),
                   draw=torch.zeros(0, dtype=torch.int64), step=torch.zeros(0, dtype=torch.int64),
                   granularity=granularity, pattern=pattern)


def _layout(log: MaskLog) -> tuple[Any, ...]:
    """What rows of ``log`` must share to be continued: granularity, layers and parts per layer."""
    return log.granularity, tuple(log.keep.shape[1:]), None if log.parts is None else tuple(log.parts.shape[1:])


class MaskRecorder:
    """Forward hook that copies each newly drawn mask; ``log()`` is what it has so far.

    ``start`` is a log to continue (a resumed run's file): its rows from the first draw this
    recorder sees onwards are replaced, so forwards run again after a resume appear once.
    """

    def __init__(self, module: nn.Module, start: MaskLog | None = None) -> None:
        _, state = applied(module)
        settings = state.settings
        self._state = state
        self._parts = state.parts if settings.granularity != "layer" else None
        self._rows: list[tuple[int, int, tuple[bool, ...], Any]] = []
        fresh = _empty(len(settings.rates), self._parts, settings.granularity, settings.pattern)
        if start is not None and _layout(start) != _layout(fresh):
            raise InputError(f"the masks to continue were drawn at granularity {start.granularity!r} over "
                             f"{start.keep.shape[1]} layers; this model draws {settings.granularity!r} over "
                             f"{len(settings.rates)}: record into another file")
        self._start = start or fresh
        self._seen = state.draws
        self.step = -1
        """The optimizer step to file the next forwards under (set by :class:`MaskLogCallback`)."""
        self.handle: RemovableHandle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        state = self._state
        if state.draws == self._seen:  # eval, a fixed sub-network, or a nested call: nothing drawn
            return
        self._seen = state.draws
        mask = state.mask
        parts = mask.sublayers if mask.sublayers is not None else mask.heads
        self._rows.append((state.draws - 1, self.step, mask.keep, parts))

    def log(self) -> MaskLog:
        """The start log (up to this recorder's first draw) and every mask recorded since."""
        start = self._start
        if self._rows:
            first = self._rows[0][0]
            kept = start.draw < first
            start = MaskLog(start.keep[kept], None if start.parts is None else start.parts[kept], start.draw[kept],
                            start.step[kept], start.granularity, start.pattern)
        if not self._rows:
            return start
        keep = torch.tensor([r[2] for r in self._rows], dtype=torch.bool)  # (n, L)
        parts = None if self._parts is None else torch.tensor([r[3] for r in self._rows], dtype=torch.bool)
        if parts is not None:
            assert start.parts is not None  # the start log has this model's layout: __init__ checked it
            parts = torch.cat([start.parts, parts])
        return MaskLog(keep=torch.cat([start.keep, keep]), parts=parts,
                       draw=torch.cat([start.draw, torch.tensor([r[0] for r in self._rows], dtype=torch.int64)]),
                       step=torch.cat([start.step, torch.tensor([r[1] for r in self._rows], dtype=torch.int64)]),
                       granularity=start.granularity, pattern=start.pattern)

    def remove(self) -> None:
        """Take the hook off; :meth:`log` still works."""
        self.handle.remove()


def record_masks(model: nn.Module, start: MaskLog | None = None) -> MaskRecorder:
    """Record every mask ``model`` (with LayerDrop applied) draws from now on, until ``remove()``:
    puts a forward hook on the module LayerDrop was applied to, and changes nothing else.

    >>> recorder = record_masks(model)          # doctest: +SKIP
    >>> model.train(); model(**batch)           # doctest: +SKIP
    >>> recorder.log().keep                     # doctest: +SKIP
    tensor([[ True, False,  True,  True, False,  True]])
    """
    module, _ = applied(model)
    return MaskRecorder(module, start)


def save_mask_log(path: str | Path, log: MaskLog) -> Path:
    """Write ``log`` to ``path`` atomically: bool masks as uint8, with the granularity and pattern."""
    tensors = {"keep": log.keep.to(torch.uint8), "draw": log.draw, "step": log.step}
    if log.parts is not None:
        tensors["parts"] = log.parts.to(torch.uint8)
    meta = {"granularity": log.granularity, "pattern": log.pattern}
    return write_bytes(path, safetensors.torch.save(tensors, metadata={"layerdrop": json.dumps(meta)}))


def load_mask_log(path: str | Path) -> MaskLog:
    """Read a file written by :func:`save_mask_log`."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("layerdrop", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "keep" not in tensors:
        raise InputError(f"{path} is not a LayerDrop mask log: it has no 'keep' tensor")
    parts = tensors.get("parts")
    return MaskLog(keep=tensors["keep"].bool(), parts=None if parts is None else parts.bool(), draw=tensors["draw"],
                   step=tensors["step"], granularity=meta.get("granularity", "layer"),
                   pattern=meta.get("pattern", "random"))


class MaskLogCallback(TrainerCallback):
    """Records a ``Trainer`` run's masks into ``path``, written with each checkpoint and at the end.

    With ``resume``, a file already at ``path`` is continued: its forwards from the checkpoint's
    draw count onwards are dropped when the first new mask is drawn, as the run draws them again.
    Without, it is replaced at the first save.
    """

    def __init__(self, path: str | Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        self.recorder: MaskRecorder | None = None

    def on_train_begin(  # type: ignore[no-untyped-def]  # HF hook's signature
            self, args, state, control, model=None, **kwargs):
        start = load_mask_log(self.path) if self.resume and self.path.is_file() else None
        self.recorder = record_masks(model, start)

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        if self.recorder is not None:
            self.recorder.step = state.global_step

    def _write(self, args: Any) -> None:
        if self.recorder is not None and args.should_save:
            save_mask_log(self.path, self.recorder.log())

    def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        self._write(args)

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]  # HF hook's signature
        self._write(args)
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None
