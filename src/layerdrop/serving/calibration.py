"""What a server learns from its answers, and how it forgets: the budget margin, the overhead outside
the forward, and each depth's profile returning to the one measured at start-up.

:mod:`layerdrop.serving.latency` predicts one depth's forward; a served request also costs what lies
outside it (HTTP, JSON, the event loop) and may run past its prediction when the machine is loaded.
:class:`Calibration` records both from the answers, each stamped with the time it came. Three rules
keep a burst of unusual requests from setting every later budget:

- a few outliers never set the margin (:func:`layerdrop.serving.latency.margin` ignores the largest ratios);
- answers older than :data:`RATIO_TTL_S` no longer count, so the margin returns to 1 when none are fresh;
- the overhead and each observed profile relax toward their start-up values once no answer came for
  :data:`RELAX_AFTER_S`, halving the distance every :data:`HALF_LIFE_S`.

Pure functions on frozen values, like ``latency.py``: the engine keeps the current calibration and
replaces it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .latency import Profile, margin

__all__ = ["AHEAD_HISTORY", "AHEAD_MAX", "HALF_LIFE_S", "RATIO_TTL_S", "RELAX_AFTER_S", "Calibration",
           "budget_margin", "observe_answer", "observe_overhead", "overhead_ms", "relaxed"]

AHEAD_MAX = 3
"""Requests found ahead from which on answers are learned as one history (see :func:`budget_margin`)."""
AHEAD_HISTORY = 8
"""Fresh answers with as many requests ahead needed before their own margin is used rather than all answers'."""
HISTORY = 64
"""Answers kept per number of requests ahead."""
RATIO_TTL_S = 30.0
"""Seconds an answer's measured/predicted ratio counts toward the margin."""
RELAX_AFTER_S = 5.0
"""Seconds without answers after which learned values start returning to their start-up values."""
HALF_LIFE_S = 10.0
"""Seconds in which a learned value, once relaxing, halves its distance to its start-up value."""
OVERHEAD_WEIGHT = 0.2
"""Weight of one answer in the overhead's moving average."""


@dataclass(frozen=True)
class Calibration:
    """The server's learned state, as of the answers it has seen."""

    overhead_ms: float = 0.0
    """What a request costs besides the queue, its tokenizing and its forward: a moving average."""
    overhead_at: float = float("-inf")
    """When the overhead was last observed (seconds on the engine's clock)."""
    ratios: tuple[tuple[int, float, float], ...] = ()
    """``(ahead, ratio, at)`` of recent answers: requests found ahead (:data:`AHEAD_MAX` or more counted
    together), measured over predicted milliseconds, and when."""


def _relax(learned: float, start: float, age_s: float) -> float:
    """``learned`` moved toward ``start`` after ``age_s`` seconds without news."""
    quiet = max(0.0, age_s - RELAX_AFTER_S)
    return start + (learned - start) * 0.5 ** (quiet / HALF_LIFE_S)


def observe_overhead(cal: Calibration, ms: float, now: float) -> Calibration:
    """``cal`` with one answer's overhead (its time outside the queue, tokenizing and forward) averaged in.

    >>> cal = observe_overhead(Calibration(), 10.0, now=0.0)
    >>> cal.overhead_ms, observe_overhead(cal, 20.0, now=1.0).overhead_ms
    (2.0, 5.6)
    """
    current = overhead_ms(cal, now)
    return dataclasses.replace(cal, overhead_ms=current + OVERHEAD_WEIGHT * (max(ms, 0.0) - current), overhead_at=now)


def overhead_ms(cal: Calibration, now: float) -> float:
    """The overhead to add to a prediction now: the learned one, relaxing toward 0 (the start-up
    value) once no answer came for :data:`RELAX_AFTER_S`.

    >>> cal = Calibration(overhead_ms=8.0, overhead_at=0.0)
    >>> overhead_ms(cal, now=3.0), overhead_ms(cal, now=15.0), overhead_ms(cal, now=25.0)
    (8.0, 4.0, 2.0)
    """
    return _relax(cal.overhead_ms, 0.0, now - cal.overhead_at)


def observe_answer(cal: Calibration, predicted_ms: float, measured_ms: float, ahead: int, now: float
                   ) -> Calibration:
    """``cal`` with one answer's measured/predicted ratio recorded under the requests it found ahead.

    >>> cal = observe_answer(Calibration(), 10.0, 25.0, ahead=7, now=0.0)
    >>> cal.ratios
    ((3, 2.5, 0.0),)
    """
    if predicted_ms <= 0 or measured_ms <= 0:
        return cal
    bucket = min(ahead, AHEAD_MAX)
    kept = [r for r in cal.ratios if now - r[2] <= RATIO_TTL_S]
    same = [r for r in kept if r[0] == bucket]
    if len(same) >= HISTORY:
        kept.remove(same[0])  # the oldest of its bucket
    return dataclasses.replace(cal, ratios=(*kept, (bucket, measured_ms / predicted_ms, now)))


def fresh_ratios(cal: Calibration, now: float) -> dict[int, list[float]]:
    """The ratios still counted, by requests found ahead."""
    out: dict[int, list[float]] = {}
    for ahead, ratio, at in cal.ratios:
        if now - at <= RATIO_TTL_S:
            out.setdefault(ahead, []).append(ratio)
    return out


def budget_margin(cal: Calibration, ahead: int, now: float) -> float:
    """How far past its prediction a request that finds ``ahead`` requests waiting or running may run:
    the :func:`~layerdrop.serving.latency.margin` of the fresh ratios of answers that found as many
    ahead, or of all fresh answers while those are fewer than :data:`AHEAD_HISTORY`.

    Under load a request's time grows beyond what its prediction counts (the clients and the event
    loop share the cores with the worker), so requests behind others need a larger margin than a
    lone one, which would otherwise pay for them.

    >>> cal = Calibration(ratios=tuple((0, r, 0.0) for r in [1.0] * 10 + [1.5] * 10))
    >>> budget_margin(cal, 0, now=1.0), budget_margin(cal, 0, now=31.0)  # fresh, then too old to count
    (1.5, 1.0)
    """
    by_ahead = fresh_ratios(cal, now)
    same = by_ahead.get(min(ahead, AHEAD_MAX), [])
    return margin(same if len(same) >= AHEAD_HISTORY else [r for ratios in by_ahead.values() for r in ratios])


def relaxed(learned: Profile, start: Profile, age_s: float) -> Profile:
    """A depth's ``learned`` profile after ``age_s`` seconds without an answer at that depth: back
    toward its ``start``-up profile (:data:`RELAX_AFTER_S`, :data:`HALF_LIFE_S`).

    >>> start, learned = Profile(6, 10.0, 1.0), Profile(6, 30.0, 3.0)
    >>> relaxed(learned, start, 2.0) == learned, relaxed(learned, start, 15.0).predict(10)
    (True, 40.0)
    """
    return Profile(learned.depth, _relax(learned.fixed_ms, start.fixed_ms, age_s),
                   _relax(learned.per_token_ms, start.per_token_ms, age_s),
                   _relax(learned.per_new_token_ms, start.per_new_token_ms, age_s))
