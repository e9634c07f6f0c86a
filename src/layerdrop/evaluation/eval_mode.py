"""The one check before a model is scored or timed: it must already be in eval mode.

Scoring switches nothing on the caller's model, not even for a moment (two threads may share it,
and a model left in training mode would drop layers while it is measured), so a function that
measures a model (quality, latency) asks for eval mode rather than calling ``model.eval()``. A
function that only chooses layers (the importance metrics, generation at a depth) works on an
eval-mode copy instead when it is given a model in training mode.
"""

from __future__ import annotations

from torch import nn

from layerdrop.errors import InputError

__all__ = ["require_eval"]


def require_eval(model: nn.Module, who: str) -> None:
    """Raise ``ValueError`` naming ``who`` if any module of ``model`` is in training mode."""
    if any(module.training for module in model.modules()):
        raise InputError(f"{who} runs a model in eval mode: pass model.eval() (it does not switch a caller's model)")
