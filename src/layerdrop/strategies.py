"""Choosing which layers to keep at a given depth: one table, one lookup.

Every strategy returns a :class:`Choice`: the kept layers, the strategy's name and a
JSON-ready record of how it chose. :data:`STRATEGIES` names them; :func:`choose` looks one
up and calls it. Search and the rules live here; the importance metrics it scores layers
with are in :mod:`layerdrop.importance` (``docs/strategies.md`` describes each strategy).

>>> from torch import nn
>>> model = nn.Module()
>>> model.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(6))
>>> choose("every-other", model, 3, layers="blocks").kept, choose("top", model, 3, layers="blocks").kept
((0, 3, 5), (0, 1, 2))
>>> [name for name, row in STRATEGIES.items() if row.needs_data]
['search', 'block-influence', 'angular']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn
from tqdm.auto import tqdm

from .arch import find_layers
from .core import only_layers
from .depths import check_depth, every_other
from .importance import MIN_CALIBRATION_TOKENS, angular_distances, block_influence, check_calibration
from .learned import recorded_learned_rates

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
    "search",
    "search_all_depths",
    "top_layers_choice",
]

METHODS = ("greedy", "beam")
"""Search methods of :func:`search`."""

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
    """Name of the strategy, a key of :data:`STRATEGIES`."""

    record: dict[str, Any] = field(default_factory=dict)
    """JSON-ready account of the choice: the rule, per-layer scores, every evaluated subset."""

    scores: tuple[float, ...] | None = None
    """Per-layer importance (higher means more important), for a chart; ``None`` if the
    strategy has none."""

    @property
    def depth(self) -> int:
        """How many layers are kept."""
        return len(self.kept)


def _num_layers(model: nn.Module, layers: str | None) -> int:
    return len(find_layers(model, layers).layers)


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
    check_depth(depth, num_layers)
    return Choice(tuple(range(depth)), "top", {"rule": "drop the top L - depth layers",
                                               "num_layers": num_layers, "depth": depth})


# --- search on a validation score -----------------------------------------------------


class _Scorer:
    """Scores subsets inside :func:`only_layers`, through a cache, within a budget."""

    def __init__(self, model: nn.Module, score: Score, *, budget: int | None, higher_is_better: bool,
                 cache: dict[tuple[int, ...], float] | None, layers: str | None) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative number of score evaluations or None, got {budget!r}")
        self.model, self.score, self.budget, self.layers = model, score, budget, layers
        self.sign = 1.0 if higher_is_better else -1.0
        self.cache = cache if cache is not None else {}
        self.calls = 0
        """Score evaluations made (cache hits excluded)."""
        self.evaluated: list[dict[str, Any]] = []
        """Every subset looked up, in order: ``{"kept", "score", "cached"}``."""

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.calls >= self.budget

    def get(self, subset: tuple[int, ...]) -> float | None:
        """The subset's score, from the cache or evaluated; ``None`` if the budget is spent."""
        if subset in self.cache:
            value, cached = self.cache[subset], True
        elif self.exhausted:
            return None
        else:
            with only_layers(self.model, subset, layers=self.layers):
                value = float(self.score(self.model))
            self.calls += 1
            self.cache[subset] = value
            cached = False
        self.evaluated.append({"kept": list(subset), "score": value, "cached": cached})
        return value

    def key(self, value: float) -> float:
        """Sort key: larger is better."""
        return self.sign * value


def _fallback_removal(current: tuple[int, ...], scorer: _Scorer) -> int:
    """With the budget spent: remove the layer whose absence scored best in any subset seen.

    A layer never absent from a seen subset ranks last; ties remove the higher layer.
    """
    best = {i: -math.inf for i in current}
    for subset, value in scorer.cache.items():
        for i in current:
            if i not in subset:
                best[i] = max(best[i], scorer.key(value))
    return max(current, key=lambda i: (best[i], i))


def _greedy_path(scorer: _Scorer, num_layers: int, depth: int, progress: bool) -> list[dict[str, Any]]:
    """Backward elimination from all layers down to ``depth``; one step per removal."""
    current = tuple(range(num_layers))
    steps = []
    for _ in tqdm(range(num_layers - depth), desc="greedy search", disable=not progress):
        candidates = [(i, tuple(j for j in current if j != i)) for i in current]
        scored = [(i, s, v) for i, s in candidates if (v := scorer.get(s)) is not None]
        if scored:  # all candidates, or those scored before the budget ran out; ties remove the higher layer
            removed, current, value = max(scored, key=lambda t: (scorer.key(t[2]), t[0]))
            steps.append({"removed": removed, "kept": list(current), "score": value,
                          "evaluated": len(scored) == len(candidates)})
        else:
            removed = _fallback_removal(current, scorer)
            current = tuple(j for j in current if j != removed)
            steps.append({"removed": removed, "kept": list(current), "score": scorer.cache.get(current),
                          "evaluated": False})
    return steps


def _beam(scorer: _Scorer, num_layers: int, depth: int, width: int, progress: bool) -> tuple[int, ...]:
    """Beam search over the same removals; with the budget spent, finishes the best beam greedily."""
    beam = [tuple(range(num_layers))]
    for size in tqdm(range(num_layers - 1, depth - 1, -1), desc="beam search", disable=not progress):
        children = sorted({tuple(j for j in parent if j != i) for parent in beam for i in parent})
        scored = [(s, v) for s in children if (v := scorer.get(s)) is not None]
        if not scored:
            break
        scored.sort(key=lambda t: scorer.key(t[1]), reverse=True)
        beam = [s for s, _ in scored[:width]]
    current = beam[0]
    while len(current) > depth:
        removed = _fallback_removal(current, scorer)
        current = tuple(j for j in current if j != removed)
    return current


def _finish(model: nn.Module, kept: tuple[int, ...], record: dict[str, Any],
            test_score: Score | None, layers: str | None) -> None:
    if test_score is not None:
        with only_layers(model, kept, layers=layers):
            record["test_score"] = float(test_score(model))


def _first_step_scores(scorer: _Scorer, num_layers: int) -> tuple[float, ...] | None:
    """Per-layer importance: how much worse the model scores without each layer alone."""
    full = tuple(range(num_layers))
    without = [scorer.cache.get(tuple(j for j in full if j != i)) for i in range(num_layers)]
    if any(v is None for v in without) or num_layers < 2:
        return None
    return tuple(-scorer.key(v) for v in without)


def search(
    model: nn.Module,
    score: Score,
    depth: int,
    *,
    budget: int | None = None,
    method: str = "greedy",
    beam_width: int = 4,
    higher_is_better: bool = True,
    cache: dict[tuple[int, ...], float] | None = None,
    test_score: Score | None = None,
    layers: str | None = None,
    progress: bool = False,
) -> Choice:
    """Search the ``depth`` layers to keep by removing layers one at a time from all ``L``.

    Args:
        model: The model; it is run through :func:`layerdrop.only_layers`, never changed.
        score: ``score(model) -> float`` on validation data, called with only a subset running.
        depth: How many layers to keep.
        budget: Most score evaluations (cache hits are free); ``None`` for no limit. When it
            runs out, the step in progress takes the best candidate scored so far, and each
            later removal drops the layer whose absence scored best in any subset seen
            (a layer never absent ranks last; ties drop the higher layer).
        method: ``"greedy"``: remove the layer whose removal hurts least, repeatedly.
            ``"beam"``: keep the ``beam_width`` best subsets at each size.
        higher_is_better: ``False`` for scores such as perplexity.
        cache: Subset -> score, read and filled; pass the same dict to reuse across calls.
        test_score: Optional held-out score, called on the final choice only, into
            ``record["test_score"]``: search overfits the validation set (Fan et al. 2020).
        layers: Path of the block list, for architectures outside the table.
        progress: Show a tqdm bar.

    The record lists every subset looked up (``"evaluated"``), the evaluation count, and
    for greedy the removal path. ``scores`` is each layer's importance: minus the
    (sign-adjusted) score without it alone, when all those were evaluated.
    """
    num_layers = _num_layers(model, layers)
    check_depth(depth, num_layers)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be a positive integer, got {beam_width!r}")
    scorer = _Scorer(model, score, budget=budget, higher_is_better=higher_is_better, cache=cache, layers=layers)
    record: dict[str, Any] = {"method": method, "budget": budget, "higher_is_better": higher_is_better}
    if method == "greedy":
        steps = _greedy_path(scorer, num_layers, depth, progress)
        kept = tuple(steps[-1]["kept"]) if steps else tuple(range(num_layers))
        record["path"] = steps
    else:
        kept = _beam(scorer, num_layers, depth, beam_width, progress)
        record["beam_width"] = beam_width
    record.update(score=scorer.cache.get(kept), evaluations=scorer.calls,
                  budget_exhausted=scorer.exhausted, evaluated=scorer.evaluated)
    _finish(model, kept, record, test_score, layers)
    return Choice(kept, "search", record, _first_step_scores(scorer, num_layers))


def search_all_depths(
    model: nn.Module,
    score: Score,
    *,
    budget: int | None = None,
    higher_is_better: bool = True,
    cache: dict[tuple[int, ...], float] | None = None,
    test_score: Score | None = None,
    layers: str | None = None,
    progress: bool = False,
) -> dict[int, Choice]:
    """One greedy elimination path from ``L`` layers down to 1: a nested choice per depth.

    Costs about ``L^2 / 2`` evaluations in all, the same as :func:`search` to depth 1.
    Returns ``{depth: Choice}`` for every depth ``1..L``; the full model is scored too.
    For :func:`layerdrop.evaluate.depth_sweep`, pass
    ``choose=lambda L, d: choices[d].kept``.
    """
    num_layers = _num_layers(model, layers)
    scorer = _Scorer(model, score, budget=budget, higher_is_better=higher_is_better, cache=cache, layers=layers)
    full = tuple(range(num_layers))
    scorer.get(full)
    steps = _greedy_path(scorer, num_layers, 1, progress)
    scores = _first_step_scores(scorer, num_layers)
    base = {"method": "greedy", "budget": budget, "higher_is_better": higher_is_better,
            "path": steps, "evaluations": scorer.calls, "budget_exhausted": scorer.exhausted,
            "evaluated": scorer.evaluated}
    choices = {}
    for kept in [full, *(tuple(step["kept"]) for step in steps)]:
        record = {**base, "score": scorer.cache.get(kept)}
        _finish(model, kept, record, test_score, layers)
        choices[len(kept)] = Choice(kept, "search", record, scores)
    return dict(sorted(choices.items()))


# --- choices from the importance metrics ----------------------------------------------


def block_influence_choice(model: nn.Module, batches: Iterable[Batch], depth: int, *,
                           layers: str | None = None) -> Choice:
    """Keep the ``depth`` layers of highest Block Influence (ShortGPT); ties keep the lower layer."""
    num_layers = _num_layers(model, layers)
    check_depth(depth, num_layers)
    bi = block_influence(model, batches, layers=layers)
    kept = tuple(sorted(sorted(range(num_layers), key=lambda i: (-bi[i], i))[:depth]))
    return Choice(kept, "block-influence", {"rule": "keep the depth layers of highest block influence",
                                            "block_influence": list(bi)}, bi)


def angular_distance_choice(model: nn.Module, batches: Iterable[Batch], depth: int, *,
                            layers: str | None = None) -> Choice:
    """Gromov et al. 2024: drop the contiguous block of ``n = L - depth`` layers whose input
    and output are closest in angle; ties drop the lower block."""
    num_layers = _num_layers(model, layers)
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
    return every_other_choice(_num_layers(model, layers), depth, **options)


def _top(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
         layers: str | None = None, **options: Any) -> Choice:
    return top_layers_choice(_num_layers(model, layers), depth, **options)


def _data_driven(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
                 layers: str | None = None, **options: Any) -> Choice:
    return data_driven_choice(recorded_learned_rates(model), depth, **options)


def _search(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
            layers: str | None = None, **options: Any) -> Choice:
    if score is None:
        raise ValueError("search needs validation data: pass score=lambda model: <validation metric>")
    return search(model, score, depth, layers=layers, **options)


def _calibrated(function: Callable[..., Choice], name: str) -> Chooser:
    def chooser(model: nn.Module, depth: int, *, score: Score | None = None, batches: Iterable[Batch] | None = None,
                layers: str | None = None, **options: Any) -> Choice:
        if batches is None:
            raise ValueError(f"{name} needs calibration data: pass batches=[dict(input_ids=..., "
                             f"attention_mask=...), ...] with at least {MIN_CALIBRATION_TOKENS} real tokens")
        return function(model, batches, depth, layers=layers, **options)
    return chooser


@dataclass(frozen=True)
class Strategy:
    """One row of :data:`STRATEGIES`."""

    function: Chooser
    """Chooses: ``function(model, depth, *, score=None, batches=None, layers=None, **options)``."""

    needs_data: bool
    """Whether it needs data: a validation ``score`` for search, calibration ``batches`` for
    the importance metrics."""

    description: str
    """One line for help texts."""


STRATEGIES: dict[str, Strategy] = {
    "every-other": Strategy(_every_other, False,
                            "evenly spread layers, first and last kept (the paper's rule, for LayerDrop-trained "
                            "models)"),
    "search": Strategy(_search, True, "greedy backward elimination (or beam) on a validation score"),
    "block-influence": Strategy(_calibrated(block_influence_choice, "block-influence"), True,
                                "keep the layers that change their hidden states most (ShortGPT)"),
    "angular": Strategy(_calibrated(angular_distance_choice, "angular"), True,
                        "drop the contiguous block of least angular distance (Gromov et al. 2024)"),
    "top": Strategy(_top, False, "drop the top layers (Sajjad et al. 2020)"),
    "data-driven": Strategy(_data_driven, False,
                            "keep the layers with the lowest learned rates (train with --data-driven)"),
}
"""Strategy name -> the function that chooses, whether it needs data, and a description."""


def lookup(name: str) -> Strategy:
    """The row of :data:`STRATEGIES` named ``name``; an unknown name lists the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
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
    check_depth(depth, _num_layers(model, layers))
    return row.function(model, depth, score=score, batches=batches, layers=layers, **options)
