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
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "apply": "core.apply",
    "remove": "core.apply",
    "only_layers": "core.apply",
    "state_of": "core.apply",
    "get_rng_state": "core.apply",
    "set_rng_state": "core.apply",
    "prune": "cut.prune",
    "view": "cut.prune",
    "compile_layers": "core.compile",
    "every_other": "core.depths",
    "LayerDropSettings": "config.settings",
    "ARCHITECTURES": "core.arch",
    "Arch": "core.arch",
    "find_layers": "core.arch",
    "RateLearner": "core.learned",
    "attach_rate_learner": "core.learned",
    "recorded_learned_rates": "core.learned",
    "record_learned_rates": "core.learned",
}
"""The user's verbs: name -> the module that defines it."""

_FOLDERS = ("config", "core", "cut", "data", "evaluation", "exits", "models", "recipes", "serving", "training")
"""The subpackages, each reached as ``layerdrop.<folder>`` on first use (the README's "Code layout")."""

__all__ = sorted([*_PUBLIC, *_FOLDERS])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value
    if name in _FOLDERS:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
