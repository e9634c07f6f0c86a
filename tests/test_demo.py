"""The demo pipeline end to end, at toy size (the real sizes are timed in the README)."""

import json

import pytest
from transformers import AutoModel, AutoModelForCausalLM

from layerdrop.demo import DemoConfig, run_demo

pytestmark = pytest.mark.real


def test_demo_writes_report_plots_and_loadable_checkpoints(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = DemoConfig(out=str(tmp_path / "demo"), rt_rows=32, rt_epochs=1, rt_eval_rows=32, lm_steps=3,
                     lm_eval_rows=40, progress=False)
    lines = []
    result = run_demo(cfg, log=lines.append)
    assert lines[0].startswith("(a)") and lines[1].startswith("(b)")
    report = result.report.read_text()
    for table in result.tables.values():
        assert table in report
    assert report.count("\n| 6 |") == 2 and report.count("\n| 1 |") == 2  # every depth, both parts
    for png in ("classification.png", "language_model.png"):
        assert (result.out / png).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((result.out / "results.json").read_text())
    depth3 = next(r for r in results["classification"]["LayerDrop 0.5"] if r["depth"] == 3)
    assert f"{100 * depth3['score']:.1f} %" in result.tables["classification"].splitlines()[5]
    encoder = AutoModel.from_pretrained(result.out / "checkpoints" / "minilm-rt-layerdrop-depth3")
    assert encoder.config.num_hidden_layers == 3
    lm = AutoModelForCausalLM.from_pretrained(result.out / "checkpoints" / "gpt2-kjv-layerdrop-half")
    assert lm.config.num_hidden_layers == 3
