"""`layerdrop sweep` and strategy-driven `layerdrop prune`, end to end on tiny saved models."""

import csv
import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from conftest import save_tiny_classifier
from layerdrop.cli import main
from layerdrop.models.loading import resolve
from layerdrop.recipes.prune_saved import prune_saved
from layerdrop.recipes.sweep import SweepConfig, run_sweep

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tok):
    return save_tiny_classifier(tmp_path_factory.mktemp("clf"), tok)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "r.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            w.writerow([f"{'good' if i % 2 else 'bad'} film number {i} with some more words", i % 2])
    return str(path)


def _cfg(model, data, out, **kw):
    return SweepConfig(model=model, data=data, out=str(out), rows=12, batch_size=6, max_length=16,
                       latency_reps=1, calibration_rows=12, search_budget=30, progress=False, **kw)


def test_classifier_sweep_writes_every_strategy_at_every_depth(tmp_path, classifier_dir, reviews):
    strategies = "every-other,search,block-influence,angular,top"
    result = run_sweep(_cfg(classifier_dir, reviews, tmp_path, strategies=strategies))
    assert result.metric == "accuracy"
    assert {s: [r.depth for r in v] for s, v in result.points.items()} == {
        s: [4, 3, 2, 1] for s in strategies.split(",")}
    rows = list(csv.reader((tmp_path / "sweep.csv").open()))
    assert rows[0][:4] == ["strategy", "depth", "kept", "accuracy"] and rows[0][5].startswith("latency_ms_batch")
    assert len(rows) == 1 + 5 * 4
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["records"]["search"][0]["record"]["method"] == "greedy"
    assert "★" in (tmp_path / "sweep.md").read_text()
    for png in ("quality_vs_depth.png", "quality_vs_latency.png", "layer_importance.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    top = {r.depth: r.kept for r in result.points["top"]}
    assert top[2] == (0, 1)
    assert all(r.parameters > 0 and r.latency_ms > 0 for v in result.points.values() for r in v)


def test_sweep_scores_the_split_it_is_asked_for(tmp_path, classifier_dir, reviews):
    from layerdrop.evaluation.measure import validation_scorers
    from layerdrop.models.loading import load_classifier

    model = load_classifier(classifier_dir).eval()
    scorers = validation_scorers(model, AutoTokenizer.from_pretrained(classifier_dir), reviews, rows=12, batch_size=6,
                                 max_length=16)
    expected = {"validation": scorers.valid(model), "test": scorers.test(model)}
    assert expected["validation"] != expected["test"]  # else the check below could not fail
    for split, value in expected.items():
        result = run_sweep(_cfg(classifier_dir, reviews, tmp_path / split, split=split))
        assert result.points["every-other"][0].score == pytest.approx(value)
        assert f"({split} split)" in (tmp_path / split / "sweep.md").read_text()
    with pytest.raises(ValueError, match="choose validation or test"):
        run_sweep(_cfg(classifier_dir, reviews, tmp_path / "x", split="dev"))


def test_lm_sweep_reports_perplexity(tmp_path, tiny_lm_dir, reviews):
    result = run_sweep(_cfg(tiny_lm_dir, reviews, tmp_path, strategies="every-other"))
    assert result.metric == "perplexity" and all(r.score > 1 for r in result.points["every-other"])


def test_sweep_runs_every_depth_at_every_precision_on_one_pareto_front(tmp_path, classifier_dir, reviews):
    result = run_sweep(_cfg(classifier_dir, reviews, tmp_path, dtype="float32,bfloat16,int8"))
    assert list(result.points) == ["every-other", "every-other bfloat16", "every-other int8"]
    base = result.points["every-other"]
    for name, precision in (("every-other bfloat16", "bfloat16"), ("every-other int8", "int8")):
        assert [(r.depth, r.kept, r.precision) for r in result.points[name]] == [
            (r.depth, r.kept, precision) for r in base]  # the same layers, chosen once
        assert all(abs(r.score - b.score) <= 0.25 for r, b in zip(result.points[name], base, strict=True))
    table = (tmp_path / "sweep.md").read_text()
    assert "| precision |" in table and "| int8 |" in table and "★" in table
    rows = list(csv.reader((tmp_path / "sweep.csv").open()))
    assert rows[0][-1] == "precision" and {r[-1] for r in rows[1:]} == {"float32", "bfloat16", "int8"}
    with pytest.raises(ValueError, match="choose from float32, bfloat16, int8"):
        run_sweep(_cfg(classifier_dir, reviews, tmp_path / "x", dtype="float32,fp8"))


def test_sweep_latency_times_every_point_in_turn():
    from conftest import make, tokens
    from layerdrop import find_layers
    from layerdrop.evaluation.measure import interleaved_latency_ms

    calls = []
    models = [make("llama").eval(), make("llama").eval()]
    for name, model in zip("ab", models, strict=True):
        for i, block in enumerate(find_layers(model).layers):
            # runs if the block does
            block.mlp.register_forward_hook(lambda *_, name=name, i=i: calls.append((name, i)))
    points = [(models[0], [0, 2]), (models[1], [1]), (models[0], [3])]
    ms = interleaved_latency_ms(points, {"input_ids": tokens()}, reps=2)
    assert len(ms) == 3 and all(t > 0 for t in ms)
    one_round = [("a", 0), ("a", 2), ("b", 1), ("a", 3)]
    assert calls == one_round * 3  # a warm-up round, then 2 timed ones, each point in turn, only its layers


def test_int8_quantizes_gpt2s_conv1d_layers_in_a_copy(tiny_lm_dir):
    from transformers.pytorch_utils import Conv1D

    from layerdrop.cut.precision import at_precision
    from layerdrop.models.loading import load_saved

    model = load_saved(tiny_lm_dir).eval()
    ids = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        quantized = at_precision(model, "int8")
        got = quantized(input_ids=ids).logits
        again = model(input_ids=ids).logits
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    blocks = list(quantized.transformer.h.modules())
    assert sum(isinstance(m, DynamicQuantizedLinear) for m in blocks) == 4 * len(quantized.transformer.h)
    assert not any(isinstance(m, Conv1D) for m in quantized.modules())
    assert any(isinstance(m, Conv1D) for m in model.modules())  # the original is untouched
    torch.testing.assert_close(again, want)
    assert (got - want).abs().max() < 0.1 * want.abs().max()  # int8: close, not equal
    assert at_precision(model, "float32") is model


def test_unknown_strategy_lists_the_valid_ones(tmp_path, classifier_dir, reviews):
    with pytest.raises(ValueError, match="block-influence"):
        run_sweep(_cfg(classifier_dir, reviews, tmp_path, strategies="every-other,magic"))


def test_prune_by_search_records_the_choice_and_its_quality(tmp_path, classifier_dir, reviews):
    record = prune_saved(classifier_dir, str(tmp_path / "s"), depth=2, strategy="search", data=reviews, rows=12)
    meta = json.loads((tmp_path / "s" / "layerdrop.json").read_text())["pruning"]
    assert meta["strategy"] == "search" and len(meta["kept_layers"]) == 2
    assert "validation_accuracy" in meta and "test_score" in meta["strategy_record"]
    assert record["kept_layers"] == meta["kept_layers"]
    assert AutoModel.from_pretrained(tmp_path / "s").config.num_hidden_layers == 2


def test_prune_top_without_data(tmp_path, classifier_dir):
    record = prune_saved(classifier_dir, str(tmp_path / "t"), depth=3, strategy="top")
    assert record["kept_layers"] == [0, 1, 2] and record["strategy"] == "top"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--depth", "2", "--strategy", "search"], "needs data"),
        (["--depth", "2", "--strategy", "cosine"], "unknown strategy"),
        (["--depth", "0", "--strategy", "top"], "depth must be an integer from 1 to 4"),
        ([], "pass --depth"),
    ],
)
def test_prune_cli_explains_bad_strategy_input(argv, message, tmp_path, classifier_dir, capsys):
    assert main(["prune", classifier_dir, "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_sweep_cli_prints_the_table(tmp_path, classifier_dir, reviews, capsys):
    code = main(["sweep", classifier_dir, "--data", reviews, "--out", str(tmp_path), "--rows", "12",
                 "--latency-reps", "1", "--no-progress"])
    assert code == 0 and "| `every-other` | 1 |" in capsys.readouterr().out


@pytest.fixture(scope="module")
def learned_dir(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("learned")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=4, n_head=2, eos_token_id=tok.sep_token_id)
    config.layerdrop_learned_rates = [0.1, 0.7, 0.3, 0.5]
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_data_driven_sweep_keeps_the_lowest_learned_rates_and_charts_them(tmp_path, learned_dir, reviews):
    result = run_sweep(_cfg(learned_dir, reviews, tmp_path, strategies="every-other,data-driven"))
    kept = {r.depth: r.kept for r in result.points["data-driven"]}
    assert kept == {4: (0, 1, 2, 3), 3: (0, 2, 3), 2: (0, 2), 1: (0,)}
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["records"]["data-driven"][0]["scores"] == pytest.approx([0.9, 0.3, 0.7, 0.5])
    assert (tmp_path / "layer_importance.png").read_bytes()[:4] == b"\x89PNG"


def test_prune_data_driven_without_data_reads_the_recorded_rates(tmp_path, learned_dir, tiny_lm_dir):
    record = prune_saved(learned_dir, str(tmp_path / "d"), depth=2, strategy="data-driven")
    assert record["kept_layers"] == [0, 2] and record["strategy"] == "data-driven"
    assert AutoModel.from_pretrained(tmp_path / "d").config.layerdrop_learned_rates == [0.1, 0.3]
    with pytest.raises(ValueError, match="--data-driven"):
        prune_saved(tiny_lm_dir, str(tmp_path / "e"), depth=2, strategy="data-driven")


@pytest.mark.parametrize("strategy", ["every-other", "block-influence", "angular"])
def test_prune_cli_chooses_with_every_strategy_and_records_it(tmp_path, classifier_dir, reviews, capsys, strategy):
    out = tmp_path / strategy
    assert main(["prune", classifier_dir, "--depth", "2", "--strategy", strategy, "--data", reviews,
                 "--rows", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "layerdrop.json").read_text())["pruning"]
    assert f"({strategy})" in printed and "accuracy" in printed
    assert meta["strategy"] == strategy and len(meta["kept_layers"]) == 2
    assert 0 <= meta["validation_accuracy"] <= 1 and meta["strategy_record"]
    assert AutoModel.from_pretrained(out).config.num_hidden_layers == 2


def test_explicit_layers_beat_a_depth(tmp_path, classifier_dir):
    record = prune_saved(classifier_dir, tmp_path / "k", depth=3, keep=[1, 2])
    assert record["kept_layers"] == [1, 2] and record["strategy"] == "keep"


def test_validation_scorers_score_a_classifier_and_give_unlabelled_calibration(classifier_dir, reviews, tok):
    from layerdrop.evaluation.measure import validation_scorers
    from layerdrop.models.loading import load_saved

    model = load_saved(classifier_dir).eval()
    scorers = validation_scorers(model, tok, reviews, rows=12, batch_size=2, max_length=16, calibration_rows=3)
    assert scorers.metric == "accuracy" and scorers.higher_is_better
    assert 0 <= scorers.valid(model) <= 1 and 0 <= scorers.test(model) <= 1
    assert [len(b["input_ids"]) for b in scorers.calibration] == [2, 1]
    assert all("labels" not in b for b in scorers.calibration)
