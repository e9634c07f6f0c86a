"""The calibrated exits a model carries: recorded in its config, read by every command and the server.

``layerdrop exits`` writes one record into the model's ``config.json`` (beside the served depths of
``layerdrop train --depths``): the rule, its threshold, the exits it was calibrated over and what the
calibration promised. The module imports no torch.

>>> from types import SimpleNamespace
>>> config = SimpleNamespace()
>>> record_exits(config, Exits("max-prob", (3, 4, 6), ((0.25, None), (0.5, 0.99), (1.0, 0.9)), 0.5, 0.9,
...                            "rotten-tomatoes", 1066))
>>> exits = recorded_exits(config)
>>> exits.threshold(), exits.threshold(0.7), exits.threshold(2.0), exits.threshold(0.3)  # 0.25 kept no threshold
(0.99, 0.99, 0.9, inf)
>>> exits.threshold(0.1)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
layerdrop.errors.InputError: max_drop 0.1 is below every drop the exits were calibrated for (0.25, 0.5, 1): ...
>>> check_served(exits, (6, 3))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
layerdrop.errors.InputError: the exits were calibrated at depths 3, 4, 6 but the model serves 3, 6: serve ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop.core.depths import EXITS_KEY
from layerdrop.errors import InputError
from layerdrop.files import write_json

__all__ = ["EXITS_KEY", "Exits", "check_served", "exits_json", "record_exits", "record_in_folder", "recorded_exits"]


@dataclass(frozen=True)
class Exits:
    """Calibrated early exit: a rule, its threshold for each tolerated drop, and what calibration promised."""

    rule: str
    """A name of :data:`layerdrop.exits.rules.RULES`."""
    depths: tuple[int, ...]
    """The exits, shallowest first; the last is the full depth."""
    thresholds: tuple[tuple[float, float | None], ...]
    """``(max_drop, threshold)`` pairs, smallest drop first: a row leaves at the first exit whose sureness
    reaches the threshold of the drop a request tolerates (accuracy points against full depth). ``None``: no
    threshold kept that drop on the calibration rows, so every row runs full depth."""
    max_drop: float
    """The drop used when a request names none."""
    confidence: float
    """Probability, over the calibration rows, that each threshold loses at most its drop."""
    data: str
    """The dataset whose validation rows calibrated it."""
    rows: int
    """How many."""

    def threshold(self, max_drop: float | None = None) -> float:
        """The threshold for ``max_drop`` points (default :attr:`max_drop`): that of the largest calibrated drop
        not above it (``inf`` where that drop kept none: no row leaves early)."""
        drop = self.max_drop if max_drop is None else max_drop
        fitting = [math.inf if t is None else t for d, t in self.thresholds if d <= drop + 1e-9]
        if not fitting:
            calibrated = ", ".join(f"{d:g}" for d, _ in self.thresholds)
            raise InputError(f"max_drop {drop:g} is below every drop the exits were calibrated for ({calibrated}): "
                             f"calibrate it (layerdrop exits MODEL --data {self.data} --max-drop {drop:g})")
        return fitting[-1]


def record_exits(config: Any, exits: Exits) -> None:
    """Store ``exits`` on ``config`` (:func:`exits_json`, saved with the model)."""
    setattr(config, EXITS_KEY, exits_json(exits))


def record_in_folder(folder: str | os.PathLike[str], exits: Exits | None) -> bool:
    """Put ``exits`` into the saved model's ``config.json`` in ``folder`` (atomically) as :func:`exits_json` writes
    it; ``None`` takes an older record out. Returns whether there was an older record."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    older = config.pop(EXITS_KEY, None) is not None
    if exits is not None:
        config[EXITS_KEY] = exits_json(exits)
    if older or exits is not None:
        write_json(path, config)
    return older


def exits_json(exits: Exits) -> dict[str, Any]:
    """The record of ``exits`` as ``config.json`` holds it under :data:`EXITS_KEY`."""
    return {**dataclasses.asdict(exits), "depths": list(exits.depths),
            "thresholds": [list(pair) for pair in exits.thresholds]}


def recorded_exits(config: Any) -> Exits | None:
    """The exits ``config`` records, or ``None``."""
    record = getattr(config, EXITS_KEY, None)
    if not record:
        return None
    return Exits(**{**record, "depths": tuple(record["depths"]),
                    "thresholds": tuple((float(d), None if t is None else float(t)) for d, t in record["thresholds"])})


def check_served(exits: Exits, served: Sequence[int]) -> None:
    """Raise unless every exit of ``exits`` is among the ``served`` depths."""
    missing = sorted(set(exits.depths) - set(served))
    if missing:
        have = ", ".join(map(str, sorted(served)))
        raise InputError(f"the exits were calibrated at depths {', '.join(map(str, exits.depths))} but the model "
                         f"serves {have}: serve those depths (--depths {','.join(map(str, exits.depths[::-1]))}) or "
                         f"calibrate again (layerdrop exits MODEL --data DATA --depths "
                         f"{','.join(map(str, sorted(served, reverse=True)))})")
