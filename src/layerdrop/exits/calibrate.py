"""Choosing an exit rule's threshold on held-out rows, and what a threshold does to a set of rows.

Both work on the probabilities every exit gives each row (:func:`layerdrop.exits.run.early_exit` with no
rule: one full forward for nested depths), so trying every threshold of every rule costs no forward:
:func:`layerdrop.exits.run.simulate` says where each row would leave. :func:`calibrate_rule` applies the
guarantee of :mod:`layerdrop.exits.bound` to a rule's grid; :func:`outcome` measures a threshold.

>>> import torch
>>> from layerdrop.exits.rules import RULES
>>> probs = torch.tensor([[[0.99, 0.01], [0.9, 0.1]], [[0.7, 0.3], [0.2, 0.8]]])  # (N=2, E=2, C=2)
>>> o = outcome(probs, torch.tensor([0, 1]), RULES["max-prob"], 0.95, layers=(3, 6))
>>> o.accuracy, o.full_accuracy, o.mean_layers, o.shares
(1.0, 1.0, 4.5, {3: 0.5, 6: 0.5})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .bound import calibrate
from .rules import ExitRule
from .run import exit_index, sureness

__all__ = ["Outcome", "calibrate_rule", "harmful_counts", "outcome"]


def _answers(probs: torch.Tensor, scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's exit index and predicted class at ``threshold``, from its sureness at every exit ``(N, E)``."""
    exit_at = exit_index(scores, threshold)  # (N,)
    return exit_at, probs[torch.arange(len(probs)), exit_at].argmax(-1)


def harmful_counts(probs: torch.Tensor, labels: torch.Tensor, rule: ExitRule) -> list[int]:
    """Rows full depth answers right and the exit wrong, at each threshold of ``rule.grid``."""
    full_right = probs[:, -1].argmax(-1) == labels  # (N,)
    scores = sureness(probs, rule)  # (N, E): the same at every threshold
    return [int((full_right & (_answers(probs, scores, t)[1] != labels)).sum()) for t in rule.grid]


def calibrate_rule(probs: torch.Tensor, labels: torch.Tensor, rule: ExitRule, *, max_drops: Sequence[float],
                   confidence: float) -> tuple[float | None, ...]:
    """For each of ``max_drops`` (fractions of accuracy), the loosest threshold of ``rule`` shown to lose at most
    that with ``confidence``, from calibration rows' probabilities at every exit ``(N, E, C)``; ``None`` where
    none is. The harmful rows are counted once for all the drops."""
    harmful = harmful_counts(probs, labels, rule)
    chosen = [calibrate(harmful, rows=len(labels), max_drop=drop, confidence=confidence) for drop in max_drops]
    return tuple(None if i is None else rule.grid[i] for i in chosen)


@dataclass(frozen=True)
class Outcome:
    """What a rule at one threshold does to a set of rows."""

    accuracy: float
    """With early exit."""
    full_accuracy: float
    """At full depth."""
    harmful: float
    """Share of rows full depth answers right and the exit wrong."""
    mean_layers: float
    """Layers run per row (a cascade counts the layers it runs again)."""
    shares: dict[int, float]
    """Exit depth -> share of rows leaving there."""

    @property
    def drop(self) -> float:
        """Accuracy lost against full depth (negative: gained)."""
        return self.full_accuracy - self.accuracy


def outcome(probs: torch.Tensor, labels: torch.Tensor, rule: ExitRule, threshold: float | None, *,
            layers: Sequence[int], depths: Sequence[int] | None = None) -> Outcome:
    """Measure ``rule`` at ``threshold`` (``None``: no row leaves early) on rows' probabilities at every exit;
    ``layers[e]`` is what a row leaving at exit ``e`` has run, ``depths[e]`` that exit's depth (default
    ``layers``)."""
    exit_at, predicted = _answers(probs, sureness(probs, rule), math.inf if threshold is None else threshold)
    full = probs[:, -1].argmax(-1)
    run = torch.tensor(list(layers), dtype=torch.float)[exit_at]  # (N,)
    counts = torch.bincount(exit_at, minlength=probs.shape[1])
    named = list(depths or layers)
    n = len(labels)
    return Outcome(accuracy=float((predicted == labels).float().mean()),
                   full_accuracy=float((full == labels).float().mean()),
                   harmful=float(((full == labels) & (predicted != labels)).float().mean()),
                   mean_layers=float(run.mean()),
                   shares={named[e]: int(counts[e]) / n for e in range(len(named))})
