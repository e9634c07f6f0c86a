"""When an input may leave early: the exit rules, one table, one signature.

Early exit scores a classifier after each served depth and lets a row stop at the first exit whose
rule fires. Every rule maps the class probabilities a row has produced so far, one row of
``(E, C)`` per exit run (the last is the current one), to a *sureness* score; a row leaves when its
score reaches the calibrated threshold. Higher is always surer, so one calibration
(:mod:`layerdrop.exits.bound`) serves every rule. Each rule's :attr:`ExitRule.grid` lists the
thresholds calibration may try, strictest first: fixed before any data is seen, as the fixed-sequence
test needs.

- ``max-prob``: the top class probability (the plain confidence exit; CALM's "softmax response").
- ``entropy``: minus the entropy of the probabilities, in units of ``log C`` (DeeBERT, Xin et al. 2020).
- ``patience``: how many exits in a row, ending at this one, predict this exit's class (PABEE,
  Zhou et al. 2020).

>>> import torch
>>> probs = torch.tensor([[[0.6, 0.4], [0.9, 0.1]], [[0.2, 0.8], [0.7, 0.3]]])  # (B=2, E=2, C=2)
>>> [round(float(v), 2) for v in RULES["max-prob"].score(probs)]
[0.9, 0.7]
>>> [round(float(v), 2) for v in RULES["entropy"].score(probs)]
[-0.47, -0.88]
>>> RULES["patience"].score(probs).tolist()
[2.0, 1.0]
>>> RULES["patience"].grid
(6.0, 5.0, 4.0, 3.0, 2.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from layerdrop.errors import InputError

__all__ = ["RULES", "ExitRule", "entropy_score", "lookup", "max_prob_score", "patience_score"]


def max_prob_score(probs: torch.Tensor) -> torch.Tensor:
    """The current exit's top class probability: ``(B, E, C) -> (B,)``."""
    return probs[:, -1].amax(-1)


def entropy_score(probs: torch.Tensor) -> torch.Tensor:
    """Minus the current exit's entropy over ``log C``, in [-1, 0]: ``(B, E, C) -> (B,)``; 0 is one-hot."""
    p = probs[:, -1]  # (B, C)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B,)
    return -entropy / math.log(max(p.shape[-1], 2))


def patience_score(probs: torch.Tensor) -> torch.Tensor:
    """How many exits in a row, ending at the current one, predict the current exit's class: ``(B, E, C) -> (B,)``."""
    predicted = probs.argmax(-1)  # (B, E)
    same = predicted == predicted[:, -1:]  # (B, E)
    # trailing run of True: the exits after the last disagreement
    disagree = (~same).float() * torch.arange(1, same.shape[1] + 1, device=probs.device)  # (B, E)
    return (same.shape[1] - disagree.amax(-1)).float()


def _log_grid(smallest: float, largest: float, steps: int = 200) -> tuple[float, ...]:
    """``steps`` values from ``smallest`` to ``largest``, evenly spaced in log.

    >>> [round(v, 3) for v in _log_grid(0.01, 1.0, 3)]
    [0.01, 0.1, 1.0]
    """
    lo, hi = math.log10(smallest), math.log10(largest)
    return tuple(10 ** (lo + i * (hi - lo) / (steps - 1)) for i in range(steps))


@dataclass(frozen=True)
class ExitRule:
    """One way to decide that a row is sure enough to leave."""

    name: str
    """Its name in the table, on the command line and in the record."""
    score: Callable[[torch.Tensor], torch.Tensor]
    """Probabilities so far ``(B, E, C)`` (exits in the order run) -> sureness ``(B,)``; a row leaves when it
    reaches the threshold."""
    grid: tuple[float, ...]
    """The thresholds calibration tries, strictest first."""
    source: str
    """Where the rule comes from."""


RULES: dict[str, ExitRule] = {
    "max-prob": ExitRule("max-prob", max_prob_score, tuple(1 - g for g in _log_grid(1e-6, 0.5)),
                         "top class probability (CALM's softmax response)"),
    "entropy": ExitRule("entropy", entropy_score, tuple(-g for g in _log_grid(1e-6, 1.0)),
                        "entropy of the prediction over log C (DeeBERT)"),
    "patience": ExitRule("patience", patience_score, (6.0, 5.0, 4.0, 3.0, 2.0, 1.0),
                         "exits in a row that agree (PABEE)"),
}
"""The exit rules by name."""


def lookup(name: str) -> ExitRule:
    """The rule called ``name``; an unknown name is an error that lists the table."""
    if name not in RULES:
        raise InputError(f"unknown exit rule {name!r}; choose one of {', '.join(RULES)}")
    return RULES[name]
