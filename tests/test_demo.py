"""The demo pipeline end to end, at toy size (the real sizes are timed in the README)."""

import dataclasses
import json

import pytest
from transformers import AutoModel, AutoModelForCausalLM

from layerdrop.recipes.demo import DemoConfig, run_demo

pytestmark = pytest.mark.real


def test_demo_writes_report_plots_and_loadable_checkpoints(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = DemoConfig(out=str(tmp_path / "demo"), rt_rows=32, rt_epochs=1, rt_eval_rows=32, lm_steps=3,
                     lm_eval_rows=40, progress=False, references=True)
    lines = []
    result = run_demo(cfg, log=lines.append)
    assert lines[0].startswith("(a)") and lines[1].startswith("(b)")
    report = result.report.read_text()
    for table in result.tables.values():
        assert table in report
    assert report.count("\n| 6 |") == 4 and report.count("\n| 1 |") == 4  # every depth: quality and cost, both parts
    assert "## The quality bar" in report and report.count("bar: ") == 5 + 6
    verdict = "\n".join(result.verdict)
    assert verdict in report and verdict.count(": met.") + verdict.count(": not met.") == 6
    assert "In short: " in result.verdict[-1]
    assert "Training under bfloat16 autocast" in report or "Training in float32" in report
    costs = report.split("## Depth on demand")[1].split("## What the demo must show")[0]
    assert costs.count("\n| 6 | 0, 1, 2, 3, 4, 5 |") == 2 and "1.00×" in costs  # both parts, full depth = 1×
    results = json.loads((result.out / "results.json").read_text())
    timed = list(results["classification"].values())[:2]  # no LayerDrop, then LayerDrop
    assert all(r["latency_ms"] > 0 for series in timed for r in series) and all(len(s) == 6 for s in timed)
    assert all(m > 0 for m in results["train_minutes"].values()) and results["peak_memory_gb"] > 0
    for png in ("classification.png", "language_model.png", "classification_latency.png",
                "language_model_latency.png"):
        assert (result.out / png).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((result.out / "results.json").read_text())
    depth3 = next(r for r in list(results["classification"].values())[1] if r["depth"] == 3)
    assert f"{100 * depth3['score']:.1f} %" in result.tables["classification"].splitlines()[5]
    elastic = json.loads((result.out / "rt-elastic-6-3-2" / "model" / "layerdrop.json").read_text())
    assert elastic["trained_with"]["depths"] == "6,3,2" and elastic["trained_with"]["strategy"] == "every-other"
    assert "depth_heads_fit" not in elastic  # one head serves every depth
    encoder = AutoModel.from_pretrained(result.out / "checkpoints" / "minilm-rt-layerdrop-depth3")
    assert encoder.config.num_hidden_layers == 3
    lm = AutoModelForCausalLM.from_pretrained(result.out / "checkpoints" / "gpt2-kjv-layerdrop-half")
    assert lm.config.num_hidden_layers == 3


def test_demo_references_are_pruned_before_training_and_a_rerun_reuses_finished_runs(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "demo"), rt_rows=16, rt_epochs=1, rt_eval_rows=16, lm_steps=2,
                     lm_eval_rows=20, progress=False, references=True)
    first = run_demo(cfg)
    results = json.loads((first.out / "results.json").read_text())
    reference = {r["depth"]: r for r in results["classification"]["pruned first, then fine-tuned"]}
    assert sorted(reference) == [3, 4] and reference[3]["kept"] == [0, 3, 5]
    trained = json.loads((first.out / "rt-reference-depth3" / "model" / "layerdrop.json").read_text())
    assert trained["trained_with"]["model"] == str(first.out / "minilm-l6-depth3")
    assert AutoModel.from_pretrained(first.out / "minilm-l6-depth3").config.num_hidden_layers == 3

    stamp = (first.out / "rt-plain" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_demo(cfg)
    assert again.tables == first.tables
    assert (first.out / "rt-plain" / "model" / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    minutes = json.loads((first.out / "timing.json").read_text())["invocations"]
    assert len(minutes) == 2 and all(m > 0 for m in minutes)
    assert "over 2 invocations" in again.report.read_text()  # the run's time is not the last call's

    with pytest.raises(FileExistsError, match="other settings"):  # refused before any training or timing
        run_demo(dataclasses.replace(cfg, lm_steps=3))
    assert json.loads((first.out / "timing.json").read_text())["invocations"] == minutes


def test_demo_refuses_an_unknown_pattern_before_training():
    with pytest.raises(ValueError, match="pattern='alternate'"):
        DemoConfig(pattern="alternate")


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("rt_depths", "7,3", "--rt-depths '7,3': 7 is outside 1..6"),
    ("lm_depths", "3,3", "--lm-depths '3,3' names 3 twice"),
    ("rt_depths", "six", "--rt-depths takes comma-separated whole numbers"),
])
def test_demo_refuses_bad_depths_before_training(setting, value, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**{setting: value})


@pytest.mark.parametrize("setting", [{"rt_rate": 0.2}, {"lm_rate": 0.3}, {"self_distill": False},
                                     {"pattern": "random"}])
def test_demo_refuses_random_dropping_settings_it_would_ignore(setting):
    with pytest.raises(ValueError, match="--no-elastic"):
        DemoConfig(**setting)
    assert not DemoConfig(elastic=False, **setting).elastic


@pytest.mark.parametrize("part", ["rt", "lm"])
def test_demo_trains_one_elastic_run_by_default_and_random_dropping_without_it(part, tmp_path):
    from layerdrop.recipes import demo

    config = demo._rt_config if part == "rt" else (lambda c, s, o, _, ld: demo._lm_config(c, s, o, ld))
    elastic = DemoConfig(rt_depths="2, 6", lm_depths="4,6")
    trained = config(elastic, demo._sizes(elastic), tmp_path, "minilm-l6", True)
    assert trained.served.depths == ("6,2" if part == "rt" else "6,4")  # one record however they were written
    assert trained.served.strategy == "every-other" and not trained.layerdrop.self_distill
    assert trained.served.depth_heads is (False if part == "rt" else None)  # the classifier: one shared head
    plain = config(elastic, demo._sizes(elastic), tmp_path, "minilm-l6", False)
    assert plain.served.depths is None and plain.layerdrop.rate == 0.0  # not the 0.2 default

    earlier = DemoConfig(elastic=False, rt_rate=0.3, lm_rate=0.4)
    dropped = config(earlier, demo._sizes(earlier), tmp_path, "minilm-l6", True)
    assert dropped.served.depths is None and dropped.layerdrop.rate == (0.3 if part == "rt" else 0.4)
    assert dropped.layerdrop.self_distill and dropped.layerdrop.pattern == "every-other"
    assert demo._slug(elastic, part, True).endswith("-elastic-6-2" if part == "rt" else "-elastic-6-4")
    assert demo._slug(earlier, part, True).endswith("-every-other")


@pytest.mark.parametrize("asked", [True, False, None])
def test_demo_trains_in_bf16_where_asked_and_by_default_where_native(asked, tmp_path, monkeypatch):
    from layerdrop.recipes import demo

    monkeypatch.setattr(demo, "_native_bf16", lambda: True)
    cfg = DemoConfig(bf16=asked)
    sizes = demo._sizes(cfg)
    expected = True if asked is None else asked
    assert demo._rt_config(cfg, sizes, tmp_path, "minilm-l6", True).optim.bf16 is expected
    assert demo._lm_config(cfg, sizes, tmp_path, False).optim.bf16 is expected
    assert demo._precision(cfg).startswith("Training under bfloat16" if expected else "Training in float32")
    monkeypatch.setattr(demo, "_native_bf16", lambda: False)
    assert demo._lm_config(cfg, sizes, tmp_path, True).optim.bf16 is (asked is True)
    assert "does not compute bfloat16 natively" in demo._precision(cfg) or asked is not None
