"""What a layer-choice strategy returns: a :class:`Choice` of kept layers with the record of how it
chose, and the shapes of what strategies take (a validation score, calibration batches)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from layerdrop.core.arch import find_layers

__all__ = ["Batch", "Choice", "Score", "num_layers_of"]


Score = Callable[[nn.Module], float]
"""``score(model) -> float``: a validation metric of the model as it runs now."""
Batch = dict[str, Any]
"""Model inputs, e.g. ``{"input_ids": ..., "attention_mask": ...}``."""


@dataclass(frozen=True)
class Choice:
    """Which layers a strategy keeps, and how it chose them."""

    kept: tuple[int, ...]
    """The layers kept, sorted, 0-based."""

    strategy: str
    """Name of the strategy, a key of :data:`layerdrop.cut.strategies.STRATEGIES`."""

    record: dict[str, Any] = field(default_factory=dict)
    """JSON-ready account of the choice: the rule, per-layer scores, every evaluated subset."""

    scores: tuple[float, ...] | None = None
    """Per-layer importance (higher means more important), for a chart; ``None`` if the
    strategy has none."""

    @property
    def depth(self) -> int:
        """How many layers are kept."""
        return len(self.kept)


def num_layers_of(model: nn.Module, layers: str | None) -> int:
    return len(find_layers(model, layers).layers)
