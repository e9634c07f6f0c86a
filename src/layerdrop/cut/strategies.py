"""Choosing which layers to keep at a given depth: one table, one lookup.

Every strategy returns a :class:`Choice`: the kept layers, the strategy's name and a
JSON-ready record of how it chose. :data:`STRATEGIES` names them; :func:`choose` looks one
up and calls it. The rules live here; search on a validation score in :mod:`layerdrop.cut.search`,
the importance metrics it scores layers with in :mod:`layerdrop.cut.importance`
(``docs/strategies.md`` describes each strategy).

>>> from torch import nn
>>> model = nn.Module()
>>> model.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(6))
>>> choose("every-other", model, 3, layers="blocks").kept, choose("top", model, 3, layers="blocks").kept
((0, 3, 5), (0, 1, 2))
>>> {name: row.needs for name, row in STRATEGIES.items() if row.needs_data}
{'search': 'score', 'block-influence': 'batches', 'angular': 'batches'}
>>> choose("trained", model, 3, layers="blocks").kept, own_strategy(model)  # nothing recorded: every-other
((0, 3, 5), 'every-other')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import nn

from layerdrop.core.depths import bottom, check_depth, every_other, layers_at, recorded_depths
from layerdrop.core.learned import recorded_learned_rates
from layerdrop.errors import InputError

from .choice import Batch, Choice, Score, num_layers_of
from .importance import MIN_CALIBRATION_TOKENS, angular_distances, block_influence, check_calibration
from .search import search, search_all_depths

__all__ = [
    "MIN_CALIBRATION_TOKENS",
    "STRATEGIES",
    "Choice",
    "Strategy",
    "angular_distance_choice",
    "angular_distances",
    "block_influence",
    "block_influence_choice",
    "choose",
    "data_driven_choice",
    "every_other_choice",
    "lookup",
    "own_strategy",
    "search",
    "search_all_depths",
    "top_layers_choice",
]


# --- rules without data ---------------------------------------------------------------


def every_other_choice(num_layers: int, depth: int) -> Choice:
    """The paper's rule, :func:`layerdrop.every_other`: evenly spread, first and last layers kept."""
    kept = every_other(num_layers, depth)
    return Choice(kept, "every-other", {"rule": "keep round(j * (L - 1) / (depth - 1)), j = 0..depth-1",
                                        "num_layers": num_layers, "depth": depth})


def data_driven_choice(rates: Sequence[float], depth: int) -> Choice:
    """The paper's data-driven pruning: keep the ``depth`` layers with the lowest learned rates.

    ``rates`` come from training with learned rates (:func:`layerdrop.recorded_learned_rates`);
    ties keep the lower layer. The set is fixed: it does not depend on the input.
    """
    check_depth(depth, len(rates))
    order = sorted(range(len(rates)), key=lambda i: (rates[i], i))
    kept = tuple(sorted(order[:depth]))
    return Choice(kept, "data-driven", {"rule": "keep the depth layers with the lowest learned drop rates",
                                        "learned_rates": list(rates), "depth": depth},
                  scores=tuple(1.0 - r for r in rates))


def top_layers_choice(num_layers: int, depth: int) -> Choice:
    """Sajjad et al. 2020 baseline: drop the top ``L - depth`` layers, keep ``0..depth-1``."""
    return Choice(bottom(num_layers, depth), "top", {"rule": "drop the top L - depth layers",
                                               "num_layers": num_layers, "depth": depth})


# --- choices from the importance metrics ----------------------------------------------


def block_influence_choice(model: nn.Module, batches: Iterable[Batch], depth: int, *,
                           layers: str | None = None) -> Choice:
    """Keep the ``depth`` layers of highest Block Influence (ShortGPT); ties keep the lower layer."""
    num_layers = num_layers_of(model, layers)
    check_depth(depth, num_layers)
    bi = block_influence(model, batches, layers=layers)
    kept = tuple(sorted(sorted(range(num_layers), key=lambda i: (-bi[i], i))[:depth]))
    return Choice(kept, "block-influence", {"rule": "keep the depth layers of highest block influence",
                                            "block_influence": list(bi)}, bi)


def angular_distance_choice(model: nn.Module, batches: Iterable[Batch], depth: int, *,
                            layers: str | None = None) -> Choice:
    """Gromov et al. 2024: drop the contiguous block of ``n = L - depth`` layers whose input
    and output are closest in angle; ties drop the lower block."""
    num_layers = num_layers_of(model, layers)
    check_depth(depth, num_layers)
    n = num_layers - depth
    if n == 0:
        check_calibration(batches)
        return Choice(tuple(range(num_layers)), "angular", {"rule": "nothing to drop", "n": 0, "distances": []})
    distances = angular_distances(model, batches, n, layers=layers)
    start = min(range(len(distances)), key=lambda s: (distances[s], s))
    kept = tuple(i for i in range(num_layers) if not start <= i < start + n)
    return Choice(kept, "angular", {"rule": "drop the contiguous block of L - depth layers of least "
                                            "angular distance", "n": n, "start": start,
                                    "distances": list(distances)})


# --- the table and the lookup ---------------------------------------------------------


class Chooser(Protocol):
    """The signature of every row of :data:`STRATEGIES`: the data a strategy needs comes as
    ``score`` (validation) or ``batches`` (calibration); ``options`` go to its function."""

    def __call__(self, model: nn.Module, depth: int, *, score: Score | None = None,
                 batches: Iterable[Batch] | None = None, layers: str | None = None, **options: Any) -> Choice: ...


def _every_other(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
                 layers: str | None = None, **options: Any) -> Choice:
    return every_other_choice(num_layers_of(model, layers), depth, **options)


def _top(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
         layers: str | None = None, **options: Any) -> Choice:
    return top_layers_choice(num_layers_of(model, layers), depth, **options)


def _trained(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
             layers: str | None = None, **options: Any) -> Choice:
    config = getattr(model, "config", None)
    return Choice(layers_at(config, num_layers_of(model, layers), depth), "trained",
                  {"rule": "the layers the model was trained to serve at this depth (layerdrop train --depths), "
                           "else its recorded rule's, else every-other", "recorded": depth in recorded_depths(config)})


def _data_driven(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
                 layers: str | None = None, **options: Any) -> Choice:
    return data_driven_choice(recorded_learned_rates(model), depth, **options)


def _search(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
            layers: str | None = None, **options: Any) -> Choice:
    if score is None:
        raise InputError("search needs validation data: pass score=lambda model: <validation metric>")
    return search(model, score, depth, layers=layers, **options)


def _calibrated(function: Callable[..., Choice], name: str) -> Chooser:
    def chooser(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
                layers: str | None = None, **options: Any) -> Choice:
        if batches is None:
            raise InputError(f"{name} needs calibration data: pass batches=[dict(input_ids=..., "
                             f"attention_mask=...), ...] with at least {MIN_CALIBRATION_TOKENS} real tokens")
        return function(model, batches, depth, layers=layers, **options)
    return chooser


@dataclass(frozen=True)
class Strategy:
    """One row of :data:`STRATEGIES`."""

    function: Chooser
    """Chooses: ``function(model, depth, *, score=None, batches=None, layers=None, **options)``."""

    needs: Literal["score", "batches"] | None
    """What it needs from data: a validation ``score`` (search), calibration ``batches`` (the
    importance metrics), or nothing."""

    description: str
    """One line for help texts."""

    @property
    def needs_data(self) -> bool:
        """Whether it needs a dataset (``--data``): for a score or for calibration batches."""
        return self.needs is not None


STRATEGIES: dict[str, Strategy] = {
    "every-other": Strategy(_every_other, None,
                            "evenly spread layers, first and last kept (the paper's rule, for LayerDrop-trained "
                            "models)"),
    "search": Strategy(_search, "score", "greedy backward elimination (or beam) on a validation score"),
    "block-influence": Strategy(_calibrated(block_influence_choice, "block-influence"), "batches",
                                "keep the layers that change their hidden states most (ShortGPT)"),
    "angular": Strategy(_calibrated(angular_distance_choice, "angular"), "batches",
                        "drop the contiguous block of least angular distance (Gromov et al. 2024)"),
    "top": Strategy(_top, None, "drop the top layers (Sajjad et al. 2020)"),
    "trained": Strategy(_trained, None, "the layers the model was trained to serve at each depth "
                                        "(layerdrop train --depths), else every-other"),
    "data-driven": Strategy(_data_driven, None,
                            "keep the layers with the lowest learned rates (train with --data-driven)"),
}
"""Strategy name -> the function that chooses, what it needs from data, and a description."""


def own_strategy(model: nn.Module) -> str:
    """The strategy a model's cuts use when none is named: ``trained`` for a model trained for named depths
    (``layerdrop train --depths``), else ``every-other``."""
    return "trained" if recorded_depths(getattr(model, "config", None)) else "every-other"


def lookup(name: str) -> Strategy:
    """The row of :data:`STRATEGIES` named ``name``; an unknown name lists the valid ones."""
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def choose(
    strategy: str,
    model: nn.Module,
    depth: int,
    *,
    score: Score | None = None,
    batches: Iterable[Batch] | None = None,
    layers: str | None = None,
    **options: Any,
) -> Choice:
    """Choose ``depth`` layers of ``model`` with the strategy named ``strategy``.

    ``score`` (validation) is for ``"search"``, ``batches`` (calibration inputs) for
    ``"block-influence"`` and ``"angular"``; a strategy ignores the data it does not use.
    ``options`` go to the strategy's function (e.g. ``budget`` for search).
    """
    row = lookup(strategy)
    check_depth(depth, num_layers_of(model, layers))
    return row.function(model, depth, score=score, batches=batches, layers=layers, **options)
