"""Choosing an exit rule's threshold on held-out rows, and what a threshold does to a set of rows.

Both work on rows scored at every exit (:func:`layerdrop.exits.run.early_exit` with no rule: one full forward for
nested depths), so trying every threshold of every rule costs no forward. A task gives its rows as a
:class:`Scored`: how sure each unit of work (a text, a window of a question) is at every exit, and the quality
of each guaranteed row (a text's accuracy, a question's F1) when every unit leaves where it says.
:class:`Labelled` is classification's, :class:`layerdrop.exits.spans.Spans` question answering's.
:func:`calibrate_rule` applies the guarantee of :mod:`layerdrop.exits.bound` to a rule's grid; :func:`outcome`
measures a threshold.

A row is *harmful* when its quality at the exits is below its quality at full depth. Quality is in [0, 1], so
the quality lost on average is at most the share of harmful rows: the bound on that share bounds accuracy and
F1 alike.

>>> import torch
>>> from layerdrop.exits.rules import RULES
>>> probs = torch.tensor([[[0.99, 0.01], [0.9, 0.1]], [[0.7, 0.3], [0.2, 0.8]]])  # (N=2, E=2, C=2)
>>> o = outcome(Labelled(probs, torch.tensor([0, 1])), RULES["max-prob"], 0.95, layers=(3, 6))
>>> o.accuracy, o.full_accuracy, o.mean_layers, o.shares
(1.0, 1.0, 4.5, {3: 0.5, 6: 0.5})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .bound import calibrate
from .rules import ExitRule
from .run import exit_index, sureness

__all__ = ["Labelled", "Outcome", "Scored", "calibrate_rule", "harmful_counts", "outcome"]


class Scored(Protocol):
    """Rows scored at every exit, as calibration and measurement need them, whatever the task."""

    @property
    def metric(self) -> str:
        """What :meth:`quality` measures (``accuracy``, ``f1``)."""
        ...

    def __len__(self) -> int:
        """The rows the guarantee counts (texts, questions)."""
        ...

    def sureness(self, rule: ExitRule) -> torch.Tensor:
        """Each unit's sureness at every exit under ``rule``: ``(U, E)``."""
        ...

    def quality(self, exit_at: torch.Tensor) -> torch.Tensor:
        """Each guaranteed row's quality in [0, 1] when unit ``u`` leaves at exit ``exit_at[u]``: ``(U,) -> (N,)``."""
        ...


@dataclass(frozen=True)
class Labelled:
    """Classification's rows: one text per row, right (1) or wrong (0)."""

    probs: torch.Tensor
    """``(N, E, C)``: each row's class probabilities at every exit."""
    labels: torch.Tensor
    """``(N,)``: the true classes."""
    metric: str = "accuracy"
    """What :meth:`quality` measures."""

    def __len__(self) -> int:
        return len(self.labels)

    def sureness(self, rule: ExitRule) -> torch.Tensor:
        return sureness(self.probs, rule)

    def quality(self, exit_at: torch.Tensor) -> torch.Tensor:
        predicted = self.probs[torch.arange(len(self.probs)), exit_at].argmax(-1)  # (N,)
        return (predicted == self.labels).float()


def _full(scored: Scored, units: int, exits: int) -> torch.Tensor:
    """Each row's quality at full depth (every unit at the last exit)."""
    return scored.quality(torch.full((units,), exits - 1, dtype=torch.long))


def harmful_counts(scored: Scored, rule: ExitRule) -> list[int]:
    """Rows whose quality at the exits is below full depth's, at each threshold of ``rule.grid``."""
    scores = scored.sureness(rule)  # (U, E): the same at every threshold
    full = _full(scored, *scores.shape)
    return [int((scored.quality(exit_index(scores, t)) < full).sum()) for t in rule.grid]


def calibrate_rule(scored: Scored, rule: ExitRule, *, max_drops: Sequence[float],
                   confidence: float) -> tuple[float | None, ...]:
    """For each of ``max_drops`` (fractions of quality), the loosest threshold of ``rule`` shown to lose at most
    that with ``confidence`` on the calibration rows ``scored``; ``None`` where none is. The harmful rows are
    counted once for all the drops."""
    harmful = harmful_counts(scored, rule)
    chosen = [calibrate(harmful, rows=len(scored), max_drop=drop, confidence=confidence) for drop in max_drops]
    return tuple(None if i is None else rule.grid[i] for i in chosen)


@dataclass(frozen=True)
class Outcome:
    """What a rule at one threshold does to a set of rows."""

    accuracy: float
    """With early exit (the task's metric: F1 for question answering)."""
    full_accuracy: float
    """At full depth."""
    harmful: float
    """Share of rows whose quality is below full depth's."""
    mean_layers: float
    """Layers run per unit (a cascade counts the layers it runs again)."""
    shares: dict[int, float]
    """Exit depth -> share of units leaving there."""

    @property
    def drop(self) -> float:
        """Quality lost against full depth (negative: gained)."""
        return self.full_accuracy - self.accuracy


def outcome(scored: Scored, rule: ExitRule, threshold: float | None, *, layers: Sequence[int],
            depths: Sequence[int] | None = None) -> Outcome:
    """Measure ``rule`` at ``threshold`` (``None``: no row leaves early) on rows scored at every exit;
    ``layers[e]`` is what a unit leaving at exit ``e`` has run, ``depths[e]`` that exit's depth (default
    ``layers``)."""
    scores = scored.sureness(rule)  # (U, E)
    exit_at = exit_index(scores, math.inf if threshold is None else threshold)  # (U,)
    quality, full = scored.quality(exit_at), _full(scored, *scores.shape)  # (N,), (N,)
    run = torch.tensor(list(layers), dtype=torch.float)[exit_at]  # (U,)
    counts = torch.bincount(exit_at, minlength=scores.shape[1])
    named = list(depths or layers)
    return Outcome(accuracy=float(quality.mean()), full_accuracy=float(full.mean()),
                   harmful=float((quality < full).float().mean()), mean_layers=float(run.mean()),
                   shares={named[e]: int(counts[e]) / len(exit_at) for e in range(len(named))})
