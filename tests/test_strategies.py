"""Strategies that choose which layers to keep: search, importance metrics, baselines, dispatch."""

from __future__ import annotations

import json
import math
from itertools import combinations

import pytest
import torch
from torch import nn

import layerdrop
from conftest import NUM_LAYERS, logits, make, tokens
from layerdrop.cut.strategies import (
    MIN_CALIBRATION_TOKENS,
    STRATEGIES,
    Choice,
    angular_distance_choice,
    block_influence,
    block_influence_choice,
    choose,
    every_other_choice,
    search,
    search_all_depths,
    top_layers_choice,
)


def running(model: nn.Module) -> tuple[int, ...]:
    """The layers that run in the current :func:`layerdrop.only_layers` context."""
    return tuple(i for i, kept in enumerate(layerdrop.state_of(model).fixed) if kept)


class Counted:
    """A score of the running subset from a table, counting its calls."""

    def __init__(self, table) -> None:
        self.table = table
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, model: nn.Module) -> float:
        subset = running(model)
        self.calls.append(subset)
        return float(self.table(subset))


BAD = {1, 2}


def bad_count(subset: tuple[int, ...]) -> float:
    """Best when none of the bad layers is kept; more layers kept is slightly better."""
    return -len(BAD & set(subset)) + 0.01 * len(subset)


def greedy_trap(subset: tuple[int, ...]) -> float:
    """Removing layer 0 first looks best, but the best pair keeps it: (0, 1)."""
    if len(subset) == 4:
        return 0.0
    if len(subset) == 3:
        return 10.0 if 0 not in subset else 5.0
    return 20.0 if subset == (0, 1) else 0.0


def identity_layers(model: nn.Module, indices: set[int]) -> nn.Module:
    """Zero the output projections of ``indices`` in a Llama: those layers add nothing to the residual."""
    with torch.no_grad():
        for i in indices:
            layer = model.model.layers[i]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def calibration(batches: int = 2, length: int = 7, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": tokens(2, length, seed + b), "attention_mask": torch.ones(2, length, dtype=torch.long)}
            for b in range(batches)]


# --- search -----------------------------------------------------------------------------


def test_greedy_search_finds_the_known_best_subset() -> None:
    model = make("llama")
    score = Counted(bad_count)
    choice = search(model, score, 2)
    assert choice == Choice((0, 3), "search", choice.record, choice.scores)
    assert choice.record["score"] == pytest.approx(bad_count((0, 3)))
    assert layerdrop.state_of(model) is None


def test_search_scores_are_lower_for_the_layers_whose_removal_helps() -> None:
    choice = search(make("llama"), Counted(bad_count), 3)
    assert choice.scores is not None and len(choice.scores) == NUM_LAYERS
    assert max(choice.scores[i] for i in BAD) < min(choice.scores[i] for i in (0, 3))


def test_beam_search_is_at_least_as_good_as_greedy_and_escapes_a_greedy_trap() -> None:
    model = make("llama")
    greedy = search(model, Counted(greedy_trap), 2)
    beam = search(model, Counted(greedy_trap), 2, method="beam", beam_width=4)
    assert beam.record["score"] >= greedy.record["score"]
    assert beam.kept == (0, 1) and greedy.kept != (0, 1)


def test_lower_is_better_scores_are_minimised() -> None:
    choice = search(make("llama"), Counted(lambda s: -bad_count(s)), 2, higher_is_better=False)
    assert choice.kept == (0, 3)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_search_makes_no_more_score_calls_than_the_budget(method: str) -> None:
    score = Counted(bad_count)
    choice = search(make("llama"), score, 1, budget=3, method=method)
    assert len(score.calls) == 3 == choice.record["evaluations"]
    assert choice.record["budget_exhausted"] is True
    assert choice.depth == 1


def test_search_with_a_shared_cache_does_not_rescore_subsets() -> None:
    model = make("llama")
    cache: dict[tuple[int, ...], float] = {}
    first = Counted(bad_count)
    search(model, first, 2, cache=cache)
    assert len(first.calls) == len(set(first.calls)) == len(cache)
    again = Counted(bad_count)
    choice = search(model, again, 2, cache=cache)
    assert again.calls == [] and choice.kept == (0, 3)
    assert all(entry["cached"] for entry in choice.record["evaluated"])
    deeper = Counted(bad_count)
    search(model, deeper, 1, cache=cache)
    assert len(deeper.calls) == 2  # only the last step's subsets are new


def test_search_record_lists_every_evaluated_subset_and_is_json() -> None:
    score = Counted(bad_count)
    choice = search(make("llama"), score, 2)
    listed = {tuple(entry["kept"]): entry["score"] for entry in choice.record["evaluated"]}
    assert set(listed) == set(score.calls)
    assert len(score.calls) == 4 + 3
    assert all(listed[s] == bad_count(s) for s in listed)
    json.dumps(choice.record)


def test_search_all_depths_gives_one_nested_choice_per_depth() -> None:
    score = Counted(bad_count)
    choices = search_all_depths(make("llama"), score)
    assert sorted(choices) == list(range(1, NUM_LAYERS + 1))
    assert choices[NUM_LAYERS].kept == tuple(range(NUM_LAYERS))
    for depth in range(1, NUM_LAYERS):
        assert choices[depth].depth == depth
        assert set(choices[depth].kept) < set(choices[depth + 1].kept)
    assert choices[2].kept == (0, 3)
    assert len(score.calls) == 1 + 4 + 3 + 2  # the full model, then one path
    assert all(c.record["score"] == bad_count(c.kept) for c in choices.values())


def test_search_scores_the_final_choice_on_test_data_when_asked() -> None:
    tested: list[tuple[int, ...]] = []

    def test_score(model: nn.Module) -> float:
        tested.append(running(model))
        return 0.5

    choice = search(make("llama"), Counted(bad_count), 2, test_score=test_score)
    assert tested == [(0, 3)] and choice.record["test_score"] == 0.5


# --- importance metrics -----------------------------------------------------------------


def test_block_influence_is_lowest_for_an_identity_like_layer_and_the_choice_drops_it() -> None:
    model = identity_layers(make("llama"), {2})
    bi = block_influence(model, calibration())
    assert bi[2] == pytest.approx(0.0, abs=1e-5)
    assert min(range(NUM_LAYERS), key=bi.__getitem__) == 2
    choice = block_influence_choice(model, calibration(), 3)
    assert choice.kept == (0, 1, 3) and choice.scores == bi


def test_block_influence_ignores_padding_positions() -> None:
    model = make("llama")
    ids = tokens(2, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 10:] = 0
    mask[1, 12:] = 0
    other = ids.clone()
    other[0, 10:] = 5
    other[1, 12:] = 7
    a = block_influence(model, [{"input_ids": ids, "attention_mask": mask}])
    b = block_influence(model, [{"input_ids": other, "attention_mask": mask}])
    assert a == pytest.approx(b, abs=1e-6)
    unmasked = block_influence(model, [{"input_ids": other}])
    assert unmasked != pytest.approx(a, abs=1e-6)


def test_angular_choice_drops_an_identity_like_contiguous_block() -> None:
    model = identity_layers(make("llama"), {1, 2})
    choice = angular_distance_choice(model, calibration(), 2)
    assert choice.kept == (0, 3)
    assert choice.record["start"] == 1 and len(choice.record["distances"]) == NUM_LAYERS - 2 + 1
    assert choice.record["distances"][1] == pytest.approx(0.0, abs=1e-3)
    assert all(0.0 <= d <= 1.0 for d in choice.record["distances"])


def test_angular_choice_at_full_depth_keeps_every_layer() -> None:
    assert angular_distance_choice(make("llama"), calibration(), NUM_LAYERS).kept == tuple(range(NUM_LAYERS))


# --- rules without data -----------------------------------------------------------------


def test_top_keeps_the_bottom_layers() -> None:
    assert top_layers_choice(6, 4).kept == (0, 1, 2, 3)
    assert top_layers_choice(6, 6).kept == tuple(range(6))


def test_every_other_choice_wraps_the_paper_rule() -> None:
    choice = every_other_choice(12, 6)
    assert choice.kept == layerdrop.every_other(12, 6) and choice.strategy == "every-other"
    assert "rule" in choice.record


# --- dispatch ---------------------------------------------------------------------------


def test_strategies_table_names_every_strategy() -> None:
    assert set(STRATEGIES) == {"every-other", "search", "block-influence", "angular", "top", "data-driven", "trained"}
    assert [name for name, row in STRATEGIES.items() if row.needs_data] == ["search", "block-influence", "angular"]


def test_choose_dispatches_to_each_strategy() -> None:
    model = make("llama")
    assert choose("every-other", model, 2).kept == layerdrop.every_other(NUM_LAYERS, 2)
    assert choose("top", model, 2).kept == (0, 1)
    assert choose("search", model, 2, score=Counted(bad_count)).kept == (0, 3)
    for name in ("block-influence", "angular"):
        choice = choose(name, model, 2, batches=calibration())
        assert choice.strategy == name and choice.depth == 2


def test_choose_rejects_an_unknown_strategy_listing_the_valid_names() -> None:
    with pytest.raises(ValueError, match="every-other, search, block-influence, angular, top"):
        choose("random", make("llama"), 2)


def test_search_without_validation_data_is_an_error() -> None:
    with pytest.raises(ValueError, match="search needs validation data"):
        choose("search", make("llama"), 2)


@pytest.mark.parametrize("name", ["block-influence", "angular"])
def test_importance_strategies_without_batches_are_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="calibration"):
        choose(name, make("llama"), 2)


@pytest.mark.parametrize("batches", [[], [{"input_ids": tokens(1, 5)}]])
def test_a_too_small_calibration_set_states_the_minimum(batches) -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_CALIBRATION_TOKENS} real"):
        choose("block-influence", make("llama"), 2, batches=batches)


@pytest.mark.parametrize("depth", [0, NUM_LAYERS + 1, 1.5])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_depth_out_of_range_is_the_prune_error(name: str, depth) -> None:
    with pytest.raises(ValueError, match=f"depth must be an integer from 1 to {NUM_LAYERS}"):
        choose(name, make("llama"), depth, score=Counted(bad_count), batches=calibration())


# --- every architecture -----------------------------------------------------------------


def test_strategies_run_on_every_architecture_and_leave_the_model_unchanged(arch_name: str) -> None:
    model = make(arch_name)
    ids = tokens()
    model.eval()
    before = logits(model, ids)
    model.train()
    batches = calibration()

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(logits(m, ids).float().pow(2).mean())

    bi = block_influence(model, batches)
    assert len(bi) == NUM_LAYERS and all(0.0 <= v <= 2.0 for v in bi)
    assert block_influence_choice(model, batches, 2).depth == 2
    assert angular_distance_choice(model, batches, 2).depth == 2
    found = search(model, score, 3, budget=4)
    assert found.depth == 3 and found.record["evaluations"] <= 4
    assert all(math.isfinite(e["score"]) for e in found.record["evaluated"])

    assert layerdrop.state_of(model) is None and model.training
    assert all(not m._forward_hooks for m in model.modules() if m is not model)
    model.eval()
    assert torch.equal(logits(model, ids), before)


def test_strategies_work_with_layerdrop_applied_and_leave_it_armed() -> None:
    model = layerdrop.apply(make("gpt2"), rate=0.5)
    state = layerdrop.state_of(model)
    assert block_influence_choice(model, calibration(), 2).depth == 2
    assert search(model, Counted(bad_count), 2).kept == (0, 3)
    assert layerdrop.state_of(model) is state and state.fixed is None and model.training


def test_subsets_evaluated_match_the_search_space_sizes() -> None:
    score = Counted(lambda s: 0.0)
    search(make("llama"), score, 2, method="beam", beam_width=10)
    assert set(score.calls) == {c for k in (3, 2) for c in combinations(range(NUM_LAYERS), k)}


def test_the_module_doctest_holds() -> None:
    import doctest

    import layerdrop.cut.strategies

    assert doctest.testmod(layerdrop.cut.strategies).failed == 0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_row_takes_the_same_arguments(name: str) -> None:
    import inspect

    parameters = inspect.signature(STRATEGIES[name].function).parameters
    assert list(parameters) == ["model", "depth", "score", "batches", "layers", "options"]


def test_a_strategy_ignores_the_data_it_does_not_use() -> None:
    model = make("llama")
    assert choose("top", model, 2, score=Counted(bad_count), batches=calibration()).kept == (0, 1)
