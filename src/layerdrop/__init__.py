"""layerdrop: train a transformer once with LayerDrop, prune it to any depth without retraining.

Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured
Dropout", ICLR 2020 (arXiv:1909.11556).

>>> import layerdrop
>>> layerdrop.apply(model, rate=0.2)        # doctest: +SKIP
>>> small = layerdrop.prune(model, depth=3)  # doctest: +SKIP
"""

from . import distributed  # layerdrop.distributed: DDP and FSDP (imports only torch)
from .arch import ARCHITECTURES, Arch, find_layers
from .core import (
    LayerDropSettings,
    apply,
    arrange_like_pruning,
    get_rng_state,
    only_layers,
    remove,
    sample_keep_mask,
    scale_rates,
    set_rng_state,
    state_of,
)
from .learned import LearnedRates, learn_rates, learned_rates
from .depths import every_other
from .prune import prune
from .rates import exponential_rates, layer_rates, linear_rates, uniform_rates

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "Arch",
    "LayerDropSettings",
    "LearnedRates",
    "apply",
    "arrange_like_pruning",
    "distributed",
    "every_other",
    "exponential_rates",
    "find_layers",
    "get_rng_state",
    "layer_rates",
    "learn_rates",
    "learned_rates",
    "linear_rates",
    "only_layers",
    "prune",
    "remove",
    "sample_keep_mask",
    "scale_rates",
    "set_rng_state",
    "state_of",
    "uniform_rates",
]
