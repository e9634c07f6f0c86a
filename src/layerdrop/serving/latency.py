"""Latency per depth, predicted from measurements, and the deepest depth a budget allows.

One LayerDrop model serves every depth (Fan et al. 2020, "Reducing Transformer Depth on Demand
with Structured Dropout"): a request that states a latency budget gets the deepest depth whose
predicted time fits. A :class:`Profile` predicts one depth's milliseconds as a fixed part plus a
part per input token (a classifier's batch, a prompt's prefill) and per generated token; it is
fitted at start-up (:func:`fit`) and follows the times observed afterwards (:func:`observe`);
:func:`margin` says how far past their predictions recent requests ran, so that a budget is
checked against the tail rather than the typical time.
Pure functions on frozen values: the server keeps the current profiles and replaces them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from layerdrop.errors import InputError

__all__ = ["BudgetError", "Profile", "choose_depth", "fit", "margin", "observe"]


@dataclass(frozen=True)
class Profile:
    """Predicted milliseconds of one depth: ``fixed_ms + per_token_ms * tokens + per_new_token_ms * new_tokens``."""

    depth: int
    """Layers run."""
    fixed_ms: float
    """Time that does not grow with the input (calls, the head, sampling set-up)."""
    per_token_ms: float
    """Time per input token (a classifier's batch of texts, or a prompt's prefill)."""
    per_new_token_ms: float = 0.0
    """Time per generated token (0 for a classifier)."""

    def predict(self, tokens: int, new_tokens: int = 0) -> float:
        """Milliseconds to process ``tokens`` input tokens and generate ``new_tokens``."""
        return self.fixed_ms + self.per_token_ms * tokens + self.per_new_token_ms * new_tokens


def fit(depth: int, samples: Sequence[tuple[int, float]], per_new_token_ms: float = 0.0) -> Profile:
    """The least-squares line ``ms = fixed + per_token * tokens`` through ``(tokens, ms)`` samples,
    with neither part negative (a noisy fit never predicts that more tokens take less time).

    >>> p = fit(6, [(16, 12.0), (32, 20.0), (64, 36.0)])
    >>> round(p.fixed_ms, 3), round(p.per_token_ms, 3), round(p.predict(48), 3)
    (4.0, 0.5, 28.0)
    """
    if not samples:
        raise ValueError("fit needs at least one (tokens, ms) sample")
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_ms = sum(ms for _, ms in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    slope = sum((t - mean_t) * (ms - mean_ms) for t, ms in samples) / var if var else 0.0
    slope = max(slope, 0.0)
    fixed = mean_ms - slope * mean_t
    if fixed < 0:  # through the origin instead
        fixed, slope = 0.0, sum(t * ms for t, ms in samples) / max(sum(t * t for t, _ in samples), 1)
    return Profile(depth, fixed, slope, max(per_new_token_ms, 0.0))


def observe(profile: Profile, tokens: int, new_tokens: int, ms: float, weight: float = 0.2) -> Profile:
    """``profile`` moved toward one observed time: every part scaled by an exponential moving
    average (``weight`` on the new observation) of observed over predicted.

    >>> p = Profile(6, 10.0, 1.0)
    >>> round(observe(p, tokens=10, new_tokens=0, ms=40.0).predict(10), 6)  # predicted 20, observed 40: 20 % of the way
    24.0
    """
    predicted = profile.predict(tokens, new_tokens)
    if predicted <= 0 or not math.isfinite(ms) or ms <= 0:
        return profile
    scale = 1.0 - weight + weight * ms / predicted
    return dataclasses.replace(profile, fixed_ms=profile.fixed_ms * scale, per_token_ms=profile.per_token_ms * scale,
                               per_new_token_ms=profile.per_new_token_ms * scale)


class BudgetError(InputError):
    """No served depth fits a latency budget: ``busy`` says whether an empty queue would have."""

    def __init__(self, message: str, *, busy: bool, smallest_ms: float, retry_after_s: int) -> None:
        super().__init__(message)
        self.busy = busy
        self.smallest_ms = smallest_ms
        self.retry_after_s = retry_after_s


def margin(ratios: Sequence[float], quantile: float = 0.95, outliers: int = 2) -> float:
    """How much longer than predicted requests take near the tail: the ``quantile`` of recent
    measured/predicted ratios, never below 1 (an empty history trusts the predictions), with at
    least the ``outliers`` largest ratios left out, so that a few unusual answers do not set every
    later budget.

    A prediction is a typical time; a budget is a limit. Checking ``prediction * margin`` against the
    budget makes about ``quantile`` of admitted requests meet it, whatever the load does to the tail.

    >>> margin([])
    1.0
    >>> margin([0.9, 1.0, 1.1, 1.2, 1.5] * 4)
    1.5
    >>> margin([0.5, 0.6])
    1.0
    >>> margin([1.0] * 30 + [20.0, 30.0]), margin([4.4])  # two outliers in 32, or one answer: not the margin
    (1.0, 1.0)
    """
    if len(ratios) <= outliers:  # as many answers as outliers left out: nothing to go by yet
        return 1.0
    ordered = sorted(ratios)
    index = min(math.ceil(quantile * len(ordered)) - 1, len(ordered) - 1 - outliers)
    return max(1.0, ordered[index])


def choose_depth(profiles: Mapping[int, Profile], budget_ms: float, *, wait_ms: float, tokens: int,
                 new_tokens: int = 0, overhead_ms: float = 0.0, margin: float = 1.0,
                 idle_margin: float | None = None) -> tuple[int, float]:
    """The deepest depth whose predicted time (the queue's wait, its own time and the request's
    ``overhead_ms``), times ``margin``, fits ``budget_ms``, with that prediction (without the
    margin); :class:`BudgetError` when none fits: busy (retry) if the fastest depth would fit an
    empty queue with ``idle_margin`` (the margin of a request that finds it empty; default
    ``margin``), not busy (no retry helps) otherwise.

    >>> profiles = {6: Profile(6, 10.0, 1.0), 3: Profile(3, 5.0, 0.5)}
    >>> choose_depth(profiles, 40.0, wait_ms=0.0, tokens=20)
    (6, 30.0)
    >>> choose_depth(profiles, 40.0, wait_ms=20.0, tokens=20)
    (3, 35.0)
    >>> choose_depth(profiles, 40.0, wait_ms=0.0, tokens=20, margin=1.5)  # 30 ms x 1.5 is over 40
    (3, 15.0)
    """
    if not profiles:
        raise ValueError("no depth is profiled yet")
    own = {d: p.predict(tokens, new_tokens) + overhead_ms for d, p in profiles.items()}
    for depth in sorted(own, reverse=True):
        if (wait_ms + own[depth]) * margin <= budget_ms:
            return depth, wait_ms + own[depth]
    smallest = min(own.values())
    idle = margin if idle_margin is None else idle_margin
    if smallest * idle > budget_ms:
        least = math.ceil(smallest * idle)
        fastest = min(own, key=own.__getitem__)
        raise BudgetError(f"no depth can answer within {budget_ms:g} ms: the fastest ({fastest} layers) "
                          f"is predicted to take {smallest:.0f} ms for this input"
                          + (f", {least} ms with the margin recent requests needed" if idle > 1 else "")
                          + f"; ask for at least {least} ms", busy=False, smallest_ms=smallest, retry_after_s=0)
    retry_after = max(1, math.ceil((wait_ms + smallest - budget_ms / margin) / 1000))
    raise BudgetError(f"the queue's predicted wait ({wait_ms:.0f} ms) leaves no depth within {budget_ms:g} ms; "
                      f"retry in {retry_after} s", busy=True, smallest_ms=smallest, retry_after_s=retry_after)
