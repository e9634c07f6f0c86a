"""Search on a validation score: which layers to keep, found by removing layers one at a time
(greedy backward elimination, or a beam), each subset scored with only its layers running
(:func:`layerdrop.only_layers`, the model never changed), through a cache and within a budget."""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from layerdrop.core.apply import only_layers
from layerdrop.core.depths import check_depth
from layerdrop.errors import InputError

from .choice import Choice, Score, num_layers_of

__all__ = ["METHODS", "search", "search_all_depths"]

METHODS = ("greedy", "beam")
"""Search methods of :func:`search`."""


class _Scorer:
    """Scores subsets inside :func:`only_layers`, through a cache, within a budget."""

    def __init__(self, model: nn.Module, score: Score, *, budget: int | None, higher_is_better: bool,
                 cache: dict[tuple[int, ...], float] | None, layers: str | None) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise InputError(f"budget must be a non-negative number of score evaluations or None, got {budget!r}")
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
    for _ in tqdm(range(num_layers - 1, depth - 1, -1), desc="beam search", disable=not progress):
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
    scored = [v for v in without if v is not None]
    if len(scored) < len(without) or num_layers < 2:
        return None
    return tuple(-scorer.key(v) for v in scored)


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
    num_layers = num_layers_of(model, layers)
    check_depth(depth, num_layers)
    if method not in METHODS:
        raise InputError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise InputError(f"beam_width must be a positive integer, got {beam_width!r}")
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
    For :func:`layerdrop.evaluation.measure.depth_sweep`, pass
    ``choose=lambda L, d: choices[d].kept``.
    """
    num_layers = num_layers_of(model, layers)
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
