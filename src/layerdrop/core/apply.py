"""LayerDrop: structured dropout of whole transformer layers (Fan, Grave & Joulin, ICLR 2020, arXiv:1909.11556).

In training, each layer is skipped for the whole batch with its own probability; a skipped
layer is never called and passes its input on unchanged, so its compute is saved. In eval
every layer runs. :func:`apply` arms a model in place, :func:`remove` disarms it and
:func:`only_layers` runs a fixed sub-network. How and why: ``docs/training.md``; the finer
granularities (sublayers, heads): ``docs/granularity.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from layerdrop.config.settings import (
    CONFIG_KEY,
    DEFAULT_RATE,
    GRANULARITIES,
    PATTERNS,
    LayerDropSettings,
    check_pattern,
)
from layerdrop.errors import InputError

from .arch import find_layers
from .depths import recorded_depths
from .gates import LayerDropState, granularity_parts, install, state_of, uninstall
from .mask import arrange_like_pruning, sample_keep_mask, sample_part_mask
from .rates import layer_rates, validate_rates

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_RATE",
    "GRANULARITIES",
    "PATTERNS",
    "LayerDropSettings",
    "LayerDropState",
    "applied",
    "apply",
    "arrange_like_pruning",
    "check_keep",
    "check_pattern",
    "find_state",
    "get_rng_state",
    "install",
    "only_layers",
    "remove",
    "sample_keep_mask",
    "sample_part_mask",
    "scale_rates",
    "set_rng_state",
    "state_of",
    "trained_with_layerdrop",
    "uninstall",
]


def find_state(model: nn.Module) -> tuple[nn.Module, LayerDropState] | None:
    """The (sub)module LayerDrop was applied to and its state, looking inside wrappers
    (DDP, FSDP, a classifier around an encoder); ``None`` if there is none."""
    for module in model.modules():
        state = state_of(module)
        if state is not None:
            return module, state
    return None


def applied(model: nn.Module) -> tuple[nn.Module, LayerDropState]:
    """Like :func:`find_state`, but raise ``ValueError`` saying what to do when LayerDrop is not applied."""
    found = find_state(model)
    if found is None:
        raise ValueError("LayerDrop is not applied to this model; call layerdrop.apply(model, rate=...) first "
                         "(on every rank, with the same seed, when training on several processes)")
    return found


def _recorded(model: nn.Module) -> dict[str, Any] | None:
    return getattr(getattr(model, "config", None), CONFIG_KEY, None)


def trained_with_layerdrop(model: nn.Module) -> bool:
    """Whether ``model``'s config records training at named depths (``layerdrop train --depths``), or LayerDrop
    of whole layers with some rate above 0: training writes the record, ``save_pretrained`` and pruning keep
    it. A model without one was never trained to run with layers missing, and cut without retraining it
    usually loses much of its quality."""
    if recorded_depths(getattr(model, "config", None)):  # trained at named depths (layerdrop train --depths)
        return True
    recorded = _recorded(model)
    if not recorded:
        return False
    return recorded.get("granularity", "layer") == "layer" and any(rate > 0 for rate in recorded.get("rates", ()))


def apply(
    model: nn.Module,
    rate: float | None = None,
    *,
    rates: Sequence[float] | None = None,
    per_layer: str | None = None,
    seed: int | None = None,
    min_layers: int | None = None,
    rescale: bool | None = None,
    layers: str | None = None,
    granularity: str | None = None,
    pattern: str | None = None,
) -> nn.Module:
    """Make ``model`` depth-elastic in place, and return it.

    The settings are those recorded in ``model.config.layerdrop_settings`` (re-arming a saved
    model), or the defaults, with exactly the arguments given replaced: an explicit argument
    always beats a recorded one. Applying again replaces the previous settings, and the
    generator restarts from the seed.

    Args:
        model: A Hugging Face model of a supported architecture, or any module
            whose blocks are given by ``layers``.
        rate: Drop rate, shaped over depth by ``per_layer`` (default 0.2).
        rates: One explicit rate per layer instead of ``rate``.
        per_layer: ``"uniform"`` (the paper, default), ``"linear"`` (stochastic depth) or
            ``"exponential"`` (LayerSkip); see :mod:`layerdrop.core.rates`. It shapes ``rate``, so
            over a record it needs ``rate`` too.
        seed, min_layers, rescale, layers, granularity, pattern: The
            :class:`LayerDropSettings` fields of those names.
    """
    given: dict[str, Any] = {name: value for name, value in (("seed", seed), ("min_layers", min_layers),
                                                             ("rescale", rescale), ("layers", layers),
                                                             ("granularity", granularity), ("pattern", pattern))
                             if value is not None}
    recorded = _recorded(model)
    base = LayerDropSettings.from_dict(recorded) if recorded else None
    site = find_layers(model, given.get("layers", base.layers if base else None))
    num_layers = len(site.layers)
    if rate is not None or rates is not None:
        given["rates"] = layer_rates(num_layers, rate, per_layer=per_layer or "uniform", rates=rates)
    elif base is None:
        given["rates"] = layer_rates(num_layers, DEFAULT_RATE, per_layer=per_layer or "uniform")
    elif per_layer is not None:
        raise InputError(f"per_layer={per_layer!r} shapes a rate: pass rate= as well (the recorded settings "
                         "hold one rate per layer, not a rate to reshape)")
    settings = dataclasses.replace(base or LayerDropSettings(rates=given["rates"]), **given)
    validate_rates(settings.rates, num_layers)
    if not 0 <= settings.min_layers <= num_layers:
        raise InputError(f"min_layers={settings.min_layers} must be between 0 and the number of layers ({num_layers})")
    granularity_parts(model, site, settings.granularity)  # fail before the old gates come off
    uninstall(model)
    install(model, settings)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, settings.to_dict())
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo :func:`apply`: remove gates, hook, state and the config record. Returns ``model``."""
    uninstall(model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    return model


def check_keep(keep: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Validate layer indices to keep; return them sorted. Raises ``ValueError``."""
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise InputError(f"keep must be a list of layer indices, got {keep!r}")
    if len(keep) == 0:
        raise InputError(f"keep is empty: keep at least one of the {num_layers} layers (0..{num_layers - 1})")
    for i in keep:
        if isinstance(i, bool) or not isinstance(i, int):
            raise InputError(f"layer index {i!r} is not an integer; pass indices like [0, 2, 5]")
        if not 0 <= i < num_layers:
            raise InputError(f"layer index {i} is out of range: this model has layers 0..{num_layers - 1}")
    dupes = sorted({i for i in keep if list(keep).count(i) > 1})
    if dupes:
        raise InputError(f"layer indices {dupes} appear more than once in keep={list(keep)}")
    return tuple(sorted(keep))


@contextlib.contextmanager
def only_layers(model: nn.Module, keep: Sequence[int], *, layers: str | None = None) -> Iterator[nn.Module]:
    """Run ``model`` with only the layers ``keep``, in train and eval mode, sharing its weights.

    Nothing is copied. Works whether or not LayerDrop is applied; on exit the
    model is as it was.
    """
    state = state_of(model)
    temporary = state is None
    if state is None:
        path = layers
        num_layers = len(find_layers(model, path).layers)
        state = install(model, LayerDropSettings(rates=(0.0,) * num_layers, layers=path))
    kept = set(check_keep(keep, len(state.settings.rates)))
    previous = state.fixed
    state.fixed = tuple(i in kept for i in range(len(state.settings.rates)))
    try:
        yield model
    finally:
        state.fixed = previous
        if temporary:
            uninstall(model)


def scale_rates(model: nn.Module, factor: float) -> None:
    """Run with ``factor`` times the configured rates, e.g. during a warm-up schedule.

    The configured rates (and the config record) stay as they are; the generator
    is not reset. ``factor`` must be in [0, 1].
    """
    if not 0.0 <= factor <= 1.0:
        raise InputError(f"rate scale factor must be in [0, 1], got {factor!r}")
    applied(model)[1].scale = float(factor)


def get_rng_state(model: nn.Module) -> dict[str, Any]:
    """The mask generator's state, to save with a training checkpoint."""
    _, state = applied(model)
    return {"generator": state.generator.get_state(), "draws": state.draws, "layers_run": state.layers_run}


def set_rng_state(model: nn.Module, rng_state: dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`, so a resumed run draws the same masks."""
    _, state = applied(model)
    state.generator.set_state(rng_state["generator"])
    state.draws = int(rng_state["draws"])
    state.layers_run = int(rng_state.get("layers_run", 0))
