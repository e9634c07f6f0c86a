"""layerdrop: train a transformer once with LayerDrop, prune it to any depth without retraining.

Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", ICLR 2020 (arXiv:1909.11556).

>>> import layerdrop
>>> layerdrop.apply(model, rate=0.2)        # doctest: +SKIP
>>> small = layerdrop.prune(model, depth=3)  # doctest: +SKIP

Names load on first use (PEP 562), so ``import layerdrop`` does not import torch and
``layerdrop --help`` starts fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "apply": "core",
    "remove": "core",
    "only_layers": "core",
    "prune": "prune",
    "compile_layers": "regional",
    "every_other": "depths",
    "LayerDropSettings": "settings",
    "ARCHITECTURES": "arch",
    "Arch": "arch",
    "find_layers": "arch",
    "RateLearner": "learned",
    "attach_rate_learner": "learned",
    "recorded_learned_rates": "learned",
    "record_learned_rates": "learned",
}
"""The user's verbs: name -> submodule that defines it."""

_SUBMODULES = ("arch", "core", "depths", "distributed", "learned", "mask", "rates", "settings")
"""Submodules listed in ``__all__`` (every submodule can be reached as ``layerdrop.<name>``;
``layerdrop.prune`` is the function, its module is ``sys.modules["layerdrop.prune"]``)."""

_PLUMBING = {
    "arrange_like_pruning": "mask",
    "sample_keep_mask": "mask",
    "scale_rates": "core",
    "state_of": "core",
    "get_rng_state": "core",
    "set_rng_state": "core",
    "exponential_rates": "rates",
    "layer_rates": "rates",
    "linear_rates": "rates",
    "uniform_rates": "rates",
    "LearnedRates": "learned",  # deprecated: RateLearner
    "learn_rates": "learned",  # deprecated: attach_rate_learner
    "learned_rates": "learned",  # deprecated: recorded_learned_rates
}
"""Names that earlier releases exported here: still found, but not in ``__all__``; import them from their module."""

__all__ = sorted([*_PUBLIC, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name) or _PLUMBING.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        if name not in ("LearnedRates", "learn_rates", "learned_rates"):  # deprecated ones warn at each use
            globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_PLUMBING})


class _Package(types.ModuleType):
    """Keeps ``layerdrop.prune`` the function when the import system sets the submodule of that name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "prune" and isinstance(value, types.ModuleType):
            value = value.prune
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
