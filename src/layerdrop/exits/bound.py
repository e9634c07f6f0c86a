"""A guarantee on what early exit loses, calibrated on held-out rows: Learn then Test.

Early exit may change a row's answer. Call it *harmful* when full depth answers the row right and
the exit answers it wrong; the accuracy early exit loses is at most the share of harmful rows (the
rows it fixes only make up for some). For a threshold λ of an exit rule, the hypothesis
"more than δ of inputs are harmful at λ" is tested on n calibration rows with the exact binomial
tail: seeing k harmful rows has p-value ``P(Binomial(n, δ) <= k)``. The thresholds are tested in
a fixed order, strictest first, each at level α = 1 - confidence, stopping at the first that is not
rejected (fixed-sequence testing, which needs no correction for testing many); the loosest rejected
threshold is chosen. Then, with probability at least ``confidence`` over the calibration rows, the
expected accuracy lost on new rows from the same distribution is at most δ (Angelopoulos et al.
2021, "Learn then Test"; Schuster et al. 2022, CALM). The module imports no torch.

>>> round(binomial_cdf(2, 1000, 0.005), 4)  # 2 harmful rows of 1,000 against a 0.5-point bound
0.124
>>> calibrate([0, 0, 1, 3, 9], rows=1000, max_drop=0.005, confidence=0.9)  # 1 harmful: p = 0.04
2
>>> calibrate([4, 6], rows=1000, max_drop=0.005, confidence=0.9) is None  # even the strictest fails
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from layerdrop.errors import InputError

__all__ = ["binomial_cdf", "calibrate", "check_confidence", "check_max_drop", "p_value", "rows_needed"]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def p_value(harmful: int, rows: int, max_drop: float) -> float:
    """How likely ``harmful`` or fewer harmful rows of ``rows`` are if exactly ``max_drop`` of inputs were
    harmful: small means the exit loses less than ``max_drop``."""
    return binomial_cdf(harmful, rows, max_drop)


def calibrate(harmful: Sequence[int], *, rows: int, max_drop: float, confidence: float) -> int | None:
    """The index of the loosest threshold that fixed-sequence testing accepts, given the harmful rows at each
    threshold (strictest first) among ``rows`` calibration rows; ``None`` when even the strictest is not
    shown to lose at most ``max_drop``."""
    check_max_drop(max_drop * 100)
    check_confidence(confidence)
    if rows < 1:
        raise InputError("calibration needs at least one row")
    chosen = None
    for i, k in enumerate(harmful):
        if p_value(k, rows, max_drop) > 1 - confidence:
            break
        chosen = i
    return chosen


def check_max_drop(points: float, name: str = "max_drop") -> None:
    """A tolerated drop must be in (0, 100) points; ``name`` is what the user called it."""
    if not 0 < points < 100:
        raise InputError(f"{name} is in points of accuracy (of F1 for question answering) and must be in (0, 100), "
                         f"got {points!r}")


def rows_needed(max_drop: float, confidence: float) -> int:
    """The fewest calibration rows on which any threshold can pass: with no harmful row at all, the p-value
    ``(1 - max_drop) ** n`` must fall to ``1 - confidence``.

    >>> rows_needed(0.005, 0.9), rows_needed(0.005, 1 - 0.1 / 3), rows_needed(0.0025, 1 - 0.1 / 3)
    (460, 679, 1359)
    """
    return math.ceil(math.log(1 - confidence) / math.log1p(-max_drop))


def check_confidence(confidence: float) -> None:
    """A confidence must be in (0, 1)."""
    if not 0 < confidence < 1:
        raise InputError(f"--confidence must be in (0, 1), e.g. 0.9, got {confidence!r}")
