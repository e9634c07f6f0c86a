"""Choosing which layers to keep at a given depth.

Every strategy returns a :class:`Choice`: the kept layers, the strategy's name and a
JSON-ready record of how it chose.

- ``"every-other"``: the paper's rule for models trained with LayerDrop (:func:`every_other_choice`).
- ``"search"``: greedy backward elimination (or a beam search) on a validation score
  (:func:`search`, :func:`search_all_depths`). The paper warns that this overfits the
  validation set: pass ``test_score`` to score the final choice on held-out data.
- ``"block-influence"``: ShortGPT (Men et al. 2024), keep the layers that change their
  hidden states most (:func:`block_influence_choice`).
- ``"angular"``: Gromov et al. 2024, drop the contiguous block whose input and output
  hidden states are closest in angle (:func:`angular_distance_choice`).
- ``"top"``: Sajjad et al. 2020, drop the top layers (:func:`top_layers_choice`).
- ``"data-driven"``: the paper's data-driven pruning, keep the layers with the lowest
  rates learned during training (:func:`data_driven_choice`, :mod:`layerdrop.learned`).

The last three are for models trained *without* LayerDrop; the two importance metrics
read calibration batches (dicts of model inputs).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .arch import find_layers
from .core import only_layers
from .depths import check_depth, every_other
from .learned import learned_rates

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
    "search",
    "search_all_depths",
    "top_layers_choice",
]

MIN_CALIBRATION_TOKENS = 16
"""Fewest real (non-padding) tokens the importance metrics accept over all calibration batches."""

METHODS = ("greedy", "beam")
"""Search methods of :func:`search`."""

Score = Callable[[nn.Module], float]
Batch = dict[str, Any]


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

    ``rates`` come from training with learned rates (:func:`layerdrop.learned_rates`);
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


# --- importance metrics from calibration data -----------------------------------------


def _real_tokens(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum())
    for name in ("input_ids", "inputs_embeds"):
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            return int(math.prod(value.shape[:2]))
    raise ValueError(f"a calibration batch needs input_ids, inputs_embeds or attention_mask; "
                     f"got keys {sorted(batch)}")


def _calibration(batches: Iterable[Batch] | None) -> list[Batch]:
    """Validate the calibration batches (read once) and return them as a list."""
    hint = (f"pass batches=[dict(input_ids=..., attention_mask=...), ...] with at least "
            f"{MIN_CALIBRATION_TOKENS} real (non-padding) tokens in all")
    if batches is None:
        raise ValueError(f"this strategy needs calibration batches: {hint}")
    batches = list(batches)
    if not batches:
        raise ValueError(f"the calibration set is empty: {hint}")
    total = sum(_real_tokens(b) for b in batches)
    if total < MIN_CALIBRATION_TOKENS:
        raise ValueError(f"the calibration set has {total} real tokens, fewer than the minimum of "
                         f"{MIN_CALIBRATION_TOKENS}: {hint}")
    return batches


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _input_name(layer: nn.Module) -> str:
    for param in inspect.signature(type(layer).forward).parameters.values():
        if param.name != "self" and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return param.name
    return "hidden_states"


def _hidden_states(model: nn.Module, batches: list[Batch], layers: str | None
                   ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per batch: the hidden states ``h_0..h_L`` (input of each layer, then the last
    layer's output), and per-token weights, 0 at padding.

    Runs eval forwards without gradients; hooks and the training mode are restored after.
    """
    site = find_layers(model, layers)
    num_layers = len(site.layers)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(index: int, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            inputs[index] = (args[0] if args else kwargs[name]).detach()
            outputs[index] = _first(output).detach()
        return record

    handles = [layer.register_forward_hook(hook(i, _input_name(layer)), with_kwargs=True)
               for i, layer in enumerate(site.layers)]
    modes = {module: module.training for module in model.modules()}
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs.clear()
                outputs.clear()
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                model(**moved)
                if len(inputs) < num_layers:
                    missing = sorted(set(range(num_layers)) - set(inputs))
                    raise ValueError(f"layers {missing} did not run in the calibration forward")
                states = [inputs[i] for i in range(num_layers)] + [outputs[num_layers - 1]]
                weights = torch.ones(states[0].shape[:-1], device=states[0].device)  # (B, T)
                mask = moved.get("attention_mask")
                if isinstance(mask, torch.Tensor) and mask.shape == weights.shape:
                    weights = mask.to(weights)
                yield states, weights
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.train(mode)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1.0, 1.0)  # (B, T)


def block_influence(model: nn.Module, batches: Iterable[Batch], *, layers: str | None = None
                    ) -> tuple[float, ...]:
    """ShortGPT's Block Influence of each layer (Men et al. 2024), in [0, 2].

    ``BI_i = 1 - mean over real tokens of cos(h_in_i, h_out_i)``: a layer that barely
    changes its hidden states scores near 0. Padding (``attention_mask == 0``) is ignored.
    """
    batches = _calibration(batches)
    num_layers = _num_layers(model, layers)
    totals = torch.zeros(num_layers, dtype=torch.float64)
    count = 0.0
    for states, weights in _hidden_states(model, batches, layers):
        for i in range(num_layers):
            totals[i] += float(((1.0 - _cosine(states[i], states[i + 1])) * weights).sum())
        count += float(weights.sum())
    return tuple((totals / count).tolist())


def block_influence_choice(model: nn.Module, batches: Iterable[Batch], depth: int, *,
                           layers: str | None = None) -> Choice:
    """Keep the ``depth`` layers of highest Block Influence (ShortGPT); ties keep the lower layer."""
    num_layers = _num_layers(model, layers)
    check_depth(depth, num_layers)
    bi = block_influence(model, batches, layers=layers)
    kept = tuple(sorted(sorted(range(num_layers), key=lambda i: (-bi[i], i))[:depth]))
    return Choice(kept, "block-influence", {"rule": "keep the depth layers of highest block influence",
                                            "block_influence": list(bi)}, bi)


def angular_distances(model: nn.Module, batches: Iterable[Batch], n: int, *,
                      layers: str | None = None) -> tuple[float, ...]:
    """Mean angular distance ``arccos(cos(h_l, h_{l+n})) / pi`` over real tokens, for each
    start ``l = 0..L-n``: between the input of layer ``l`` and the output of layer ``l+n-1``."""
    batches = _calibration(batches)
    num_layers = _num_layers(model, layers)
    if not 1 <= n <= num_layers:
        raise ValueError(f"block length n must be from 1 to {num_layers}, got {n!r}")
    totals = torch.zeros(num_layers - n + 1, dtype=torch.float64)
    count = 0.0
    for states, weights in _hidden_states(model, batches, layers):
        for start in range(num_layers - n + 1):
            angle = torch.arccos(_cosine(states[start], states[start + n])) / math.pi  # (B, T)
            totals[start] += float((angle * weights).sum())
        count += float(weights.sum())
    return tuple((totals / count).tolist())


def angular_distance_choice(model: nn.Module, batches: Iterable[Batch], depth: int, *,
                            layers: str | None = None) -> Choice:
    """Gromov et al. 2024: drop the contiguous block of ``n = L - depth`` layers whose input
    and output are closest in angle; ties drop the lower block."""
    num_layers = _num_layers(model, layers)
    check_depth(depth, num_layers)
    n = num_layers - depth
    if n == 0:
        _calibration(batches)
        return Choice(tuple(range(num_layers)), "angular", {"rule": "nothing to drop", "n": 0, "distances": []})
    distances = angular_distances(model, batches, n, layers=layers)
    start = min(range(len(distances)), key=lambda s: (distances[s], s))
    kept = tuple(i for i in range(num_layers) if not start <= i < start + n)
    return Choice(kept, "angular", {"rule": "drop the contiguous block of L - depth layers of least "
                                            "angular distance", "n": n, "start": start,
                                    "distances": list(distances)})


# --- the table and the dispatcher -----------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """One row of :data:`STRATEGIES`."""

    function: Callable[..., Choice]
    """The function that chooses."""

    needs_data: bool
    """Whether it needs data: a validation ``score`` for search, calibration ``batches`` for
    the importance metrics."""

    description: str
    """One line for help texts."""


STRATEGIES: dict[str, Strategy] = {
    "every-other": Strategy(every_other_choice, False,
                            "evenly spread layers, first and last kept (the paper's rule, for LayerDrop-trained "
                            "models)"),
    "search": Strategy(search, True, "greedy backward elimination (or beam) on a validation score"),
    "block-influence": Strategy(block_influence_choice, True,
                                "keep the layers that change their hidden states most (ShortGPT)"),
    "angular": Strategy(angular_distance_choice, True,
                        "drop the contiguous block of least angular distance (Gromov et al. 2024)"),
    "top": Strategy(top_layers_choice, False, "drop the top layers (Sajjad et al. 2020)"),
    "data-driven": Strategy(data_driven_choice, False,
                            "keep the layers with the lowest learned rates (train with --data-driven)"),
}
"""Strategy name -> function, whether it needs data, and a description."""


def choose(
    strategy: str,
    model: nn.Module,
    depth: int,
    *,
    score: Score | None = None,
    batches: Iterable[Batch] | None = None,
    layers: str | None = None,
    **kw: Any,
) -> Choice:
    """Choose ``depth`` layers of ``model`` with the strategy named ``strategy``.

    ``score`` (validation) is for ``"search"``, ``batches`` (calibration inputs) for
    ``"block-influence"`` and ``"angular"``; other keywords go to the strategy's function.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    num_layers = _num_layers(model, layers)
    check_depth(depth, num_layers)
    if strategy == "every-other":
        return every_other_choice(num_layers, depth, **kw)
    if strategy == "top":
        return top_layers_choice(num_layers, depth, **kw)
    if strategy == "data-driven":
        return data_driven_choice(learned_rates(model), depth)
    if strategy == "search":
        if score is None:
            raise ValueError("search needs validation data: pass score=lambda model: <validation metric>")
        return search(model, score, depth, layers=layers, **kw)
    if batches is None:
        raise ValueError(f"{strategy} needs calibration data: pass batches=[dict(input_ids=..., "
                         f"attention_mask=...), ...] with at least {MIN_CALIBRATION_TOKENS} real tokens")
    return STRATEGIES[strategy].function(model, batches, depth, layers=layers, **kw)
