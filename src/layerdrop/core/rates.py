"""Per-layer drop rates: pure functions, no state.

A *rate* is the probability that a layer is skipped for a training batch.
LayerDrop (Fan et al., 2020) uses one rate for every layer. Two depth-dependent
profiles are also common:

* ``linear``: stochastic depth (Huang et al., 2016). Layer ``l`` (0-based) of
  ``L`` drops with ``rate * (l + 1) / L``, so the last layer has ``rate``.
* ``exponential``: LayerSkip (Elhoushi et al., 2024). Layer ``l`` drops with
  ``rate * (exp(l * ln 2 / (L - 1)) - 1)``: 0 for the first layer, ``rate`` for
  the last, growing exponentially in between.

Schedules change the rates over training by a factor in [0, 1]: constant,
a linear warm-up, and progressive layer dropping (Zhang & He, 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from layerdrop.errors import InputError

__all__ = [
    "PER_LAYER",
    "SCHEDULES",
    "constant_schedule",
    "exponential_rates",
    "layer_rates",
    "linear_rates",
    "progressive_schedule",
    "schedule_factor",
    "uniform_rates",
    "validate_rates",
    "warmup_schedule",
]


def uniform_rates(rate: float, num_layers: int) -> tuple[float, ...]:
    """The same rate for every layer (the paper's setting)."""
    return (float(rate),) * num_layers


def linear_rates(rate: float, num_layers: int) -> tuple[float, ...]:
    """Stochastic depth: rates grow linearly with depth up to ``rate`` at the last layer."""
    return tuple(rate * (i + 1) / num_layers for i in range(num_layers))


def exponential_rates(rate: float, num_layers: int) -> tuple[float, ...]:
    """LayerSkip: 0 at the first layer, ``rate`` at the last, exponential in between."""
    if num_layers == 1:
        return (float(rate),)
    return tuple(rate * (math.exp(i * math.log(2) / (num_layers - 1)) - 1) for i in range(num_layers))


PER_LAYER: dict[str, Callable[[float, int], tuple[float, ...]]] = {
    "uniform": uniform_rates,
    "linear": linear_rates,
    "exponential": exponential_rates,
}
"""Named rate profiles, ``name -> f(rate, num_layers)``."""


def validate_rates(rates: Sequence[float], num_layers: int) -> tuple[float, ...]:
    """Return ``rates`` as a tuple of floats, or raise ``ValueError`` saying what is allowed."""
    rates = tuple(rates)
    if len(rates) != num_layers:
        raise InputError(
            f"got {len(rates)} rates for a model with {num_layers} layers: pass exactly one rate per layer"
        )
    for i, r in enumerate(rates):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise InputError(
                f"rate of layer {i} is {r!r}: every rate must be a number in [0, 1) "
                "(0 = never drop, values close to 1 = almost always drop)"
            )
    return tuple(float(r) for r in rates)


def layer_rates(
    num_layers: int,
    rate: float | None = None,
    *,
    per_layer: str = "uniform",
    rates: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Resolve the user's rate arguments into one validated rate per layer.

    Pass either ``rate`` (with a ``per_layer`` profile) or an explicit ``rates`` list.
    """
    if rates is not None:
        if rate is not None:
            raise InputError("pass either rate=... or rates=[...], not both")
        return validate_rates(rates, num_layers)
    if rate is None:
        raise InputError("pass rate=... (e.g. 0.2) or rates=[...] with one rate per layer")
    if per_layer not in PER_LAYER:
        raise InputError(f"unknown per_layer profile {per_layer!r}; choose one of {sorted(PER_LAYER)}")
    validate_rates([rate], 1)
    return validate_rates(PER_LAYER[per_layer](float(rate), num_layers), num_layers)


# Schedules: a factor in [0, 1] on the configured rates, as a function of the optimizer step.


def constant_schedule(step: int) -> float:
    """The configured rates from the first step."""
    return 1.0


def warmup_schedule(step: int, warmup_steps: int) -> float:
    """Rates grow linearly from 0 to the configured ones over ``warmup_steps`` steps."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def progressive_schedule(step: int, gamma: float = 0.001) -> float:
    """Progressive layer dropping (Zhang & He, 2020): factor ``1 - exp(-gamma * step)``.

    Their keep probability is ``theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar``,
    so the drop rate ``1 - theta(t)`` equals ``(1 - theta_bar) * (1 - exp(-gamma * t))``:
    this factor times a configured rate of ``1 - theta_bar``. Their defaults are
    ``theta_bar = 0.5`` (rate 0.5) and ``gamma = 0.001``; their depth profile is
    ``per_layer="linear"``.
    """
    return 1.0 - math.exp(-gamma * step)


SCHEDULES: tuple[str, ...] = ("constant", "warmup", "progressive")
"""Names accepted by :func:`schedule_factor`."""


def schedule_factor(name: str, step: int, *, warmup_steps: int = 0, gamma: float = 0.001) -> float:
    """The factor of schedule ``name`` at optimizer step ``step``."""
    if name == "constant":
        return constant_schedule(step)
    if name == "warmup":
        return warmup_schedule(step, warmup_steps)
    if name == "progressive":
        return progressive_schedule(step, gamma)
    raise InputError(f"unknown rate schedule {name!r}; choose one of {list(SCHEDULES)}")
