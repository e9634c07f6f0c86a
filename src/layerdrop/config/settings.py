"""LayerDrop's settings: one frozen dataclass and the names it allows. Imports only the standard library.

Kept apart from :mod:`layerdrop.core` so that the command line and the training config can
check settings without importing torch. Change settings with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from layerdrop.errors import InputError

__all__ = ["CONFIG_KEY", "DEFAULT_RATE", "GRANULARITIES", "PATTERNS", "LayerDropSettings", "check_pattern"]

CONFIG_KEY = "layerdrop_settings"
"""Name of the ``model.config`` attribute that records the settings."""

DEFAULT_RATE = 0.2
"""The rate used when none is given or recorded (the paper's usual choice)."""

GRANULARITIES = ("layer", "sublayer", "head")
"""What LayerDrop can drop: whole layers, attention / feed-forward sublayers, or attention heads."""

PATTERNS = ("random", "every-other")
"""Which layers a training forward keeps: each independently, or as many, placed as pruning places them."""


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` unless ``pattern`` is one of :data:`PATTERNS`."""
    if pattern not in PATTERNS:
        raise InputError(f"unknown pattern={pattern!r}: not one of {', '.join(map(repr, PATTERNS))}")


@dataclass(frozen=True)
class LayerDropSettings:
    """How a model drops layers. Change with ``dataclasses.replace``."""

    rates: tuple[float, ...]
    """Drop probability of each layer, in [0, 1), one per layer."""

    seed: int = 0
    """Seed of the dedicated mask generator. Equal seeds give equal masks on every process."""

    min_layers: int = 1
    """Fewest layers a training forward runs. If a draw keeps fewer, the dropped layers
    that came closest to being kept are run too. 0 allows dropping every layer."""

    rescale: bool = False
    """Stochastic-depth scaling: in training, scale each kept layer's update
    ``output - input`` by ``1 / (1 - rate)``. Off by default; the paper does not rescale."""

    layers: str | None = None
    """Attribute path of the block list, or ``None`` to find it from the architecture table."""

    granularity: str = "layer"
    """What is dropped, each with its layer's rate. ``"layer"``: whole layers (the paper's
    LayerDrop). ``"sublayer"``: each layer's attention and feed-forward sublayers,
    independently; a dropped one is never called. ``"head"``: each attention head is zeroed
    independently; everything still runs, so no compute is saved. The finer two need an
    architecture-table row that describes them (not a ``layers=`` path)."""

    pattern: str = "random"
    """Which layers a training forward keeps. ``"random"``: each layer independently with its
    rate (the paper). ``"every-other"``: as many layers as that draw keeps, but placed where
    :func:`layerdrop.every_other` places them, so training samples exactly the sub-networks
    that pruning to each depth keeps. Whole layers only."""

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise InputError(
                f"granularity={self.granularity!r} is not one of {', '.join(map(repr, GRANULARITIES))}"
            )
        check_pattern(self.pattern)
        if self.pattern != "random" and self.granularity != "layer":
            raise InputError(f"pattern={self.pattern!r} places whole layers; it needs granularity='layer', "
                             f"not {self.granularity!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, as written into ``model.config``."""
        return {**dataclasses.asdict(self), "rates": list(self.rates)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerDropSettings:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown LayerDrop setting(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{**d, "rates": tuple(d["rates"])})
