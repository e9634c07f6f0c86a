import pytest
import torch

import layerdrop
from conftest import NUM_LAYERS, make, tokens
from layerdrop.evaluation.measure import DepthResult, accuracy, depth_sweep, latency_ms, parameters_at, perplexity
from layerdrop.evaluation.report import (
    depth_table,
    markdown_table,
    pareto_front,
    plot_layer_importance,
    plot_quality_vs_depth,
    plot_quality_vs_latency,
)


def _cls_rows(n=12):
    ids = tokens(batch=n, length=6, seed=5)
    return [{"input_ids": ids[i], "labels": torch.tensor(i % 3)} for i in range(n)]


def _stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_parameters_at_equals_the_pruned_model(arch_name):
    model = make(arch_name)
    for kept in ([0], [1, 3], [0, 1, 2, 3]):
        pruned = layerdrop.prune(model, keep=kept)
        assert parameters_at(model, kept) == sum(p.numel() for p in pruned.parameters())


def test_depth_sweep_scores_match_pruned_models():
    model = make("bert").eval()
    rows = _cls_rows()
    results = depth_sweep(model, lambda m: accuracy(m, rows, _stack, batch_size=5))
    assert [r.depth for r in results] == list(range(1, NUM_LAYERS + 1))
    for r in results:
        assert r.kept == layerdrop.every_other(NUM_LAYERS, r.depth)
        assert r.score == accuracy(layerdrop.prune(model, keep=list(r.kept)), rows, _stack, batch_size=5)
    assert layerdrop.state_of(model) is None  # the sweep leaves the model as it was


def test_perplexity_is_exp_of_token_weighted_loss():
    model = make("gpt2").eval()
    ids = tokens(batch=4, length=8, seed=2)
    rows = [{"input_ids": ids[i], "labels": ids[i]} for i in range(4)]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert perplexity(model, rows, _stack, batch_size=4) == pytest.approx(torch.exp(loss).item(), rel=1e-5)


def test_sweep_measures_latency_when_given_a_batch():
    model = make("llama").eval()
    results = depth_sweep(model, lambda m: 0.0, depths=[1, 4], latency_batch={"input_ids": tokens()}, latency_reps=2)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in results)


def test_latency_is_a_positive_median():
    assert latency_ms(make("bert").eval(), {"input_ids": tokens()}, reps=3, warmup=0) > 0


def test_pareto_front_keeps_undominated_points():
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9), (2.0, 0.4)]
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([(1.0, 30.0), (2.0, 20.0), (3.0, 25.0)], higher_is_better=False) == [0, 1]


def test_depth_table_has_a_row_per_depth_and_a_column_per_series():
    a = [DepthResult(d, tuple(range(d)), 0.5 + d / 10, 100 * d) for d in (1, 2)]
    b = [DepthResult(2, (0, 1), 0.9, 200)]
    table = depth_table({"LayerDrop": a, "plain": b}, "accuracy")
    lines = table.strip().splitlines()
    assert lines[0] == "| depth | layers kept | LayerDrop (accuracy) | plain (accuracy) |"
    assert lines[2] == "| 2 | 0, 1 | 70.0 % | 90.0 % |" and lines[3] == "| 1 | 0 | 60.0 % | – |"


def test_markdown_table_renders_rows():
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"


def test_plots_are_written_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    series = {"x": [DepthResult(d, (0,), 0.5 + d / 10, 10, latency_ms=float(d)) for d in (1, 2, 3)]}
    for plot, name in ((plot_quality_vs_depth, "d.png"), (plot_quality_vs_latency, "l.png")):
        path = plot(series, "accuracy", tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = plot_layer_importance({"block influence": [0.1, 0.5, 0.2], "learned rate": [3.0, 1.0, 2.0]},
                                 tmp_path / "i.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_is_timed_without_autograd():
    model = make("bert").eval()
    grad_on = []
    model.register_forward_hook(lambda module, args, output: grad_on.append(torch.is_grad_enabled()))
    latency_ms(model, {"input_ids": tokens()}, reps=2, warmup=1)
    assert len(grad_on) == 3 and not any(grad_on)


def test_repetition_measures_count_ngrams_and_say_when_there_are_none():
    import doctest
    import math

    import layerdrop.evaluation.measure
    from layerdrop.evaluation.measure import distinct_n, repeated_ngrams

    assert doctest.testmod(layerdrop.evaluation.measure).failed == 0
    assert distinct_n([[1, 2, 3], [4, 5, 6]], 1) == 1.0 and repeated_ngrams([7] * 5, 1) == 0.8
    assert math.isnan(distinct_n([[1]], 2)) and math.isnan(repeated_ngrams([1, 2], 3))
    with pytest.raises(ValueError, match="at least 1"):
        distinct_n([[1, 2]], 0)
