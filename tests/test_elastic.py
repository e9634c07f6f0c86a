"""The depth-elastic recipe (layerdrop elastic), on a tiny GPT-2 and a small text file."""

import csv
import json

import pytest
from transformers import AutoModelForCausalLM

from layerdrop.cli import main
from layerdrop.recipes.elastic import ElasticConfig, run_elastic


@pytest.fixture(scope="module")
def verses(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "verses.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for i in range(80):
            w.writerow([f"and it came to pass in the day {i} that the people went up to the city and rested"])
    return str(path)


def _cfg(model, data, out, **kw):
    base = dict(model=model, data=data, out=str(out), depths="4,2,9", steps=4, batch_size=4, max_length=16,
                eval_rows=8, lr=1e-3, progress=False)
    return ElasticConfig(**{**base, **kw})


def test_elastic_scores_before_and_after_and_exports_a_plain_model(tmp_path, tiny_lm_dir, verses):
    lines = []
    result = run_elastic(_cfg(tiny_lm_dir, verses, tmp_path), log=lines.append)
    assert [r.depth for r in result.before] == [r.depth for r in result.after] == [4, 2]  # 9 > 4 layers: left out
    assert result.before[1].kept == (0, 3)
    assert result.after[0].score < result.before[0].score  # 4 steps at lr 1e-3 on repeated text
    assert "| 4 |" in result.table and "| 2 |" in result.table and result.table in result.report.read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["before"][0]["score"] == pytest.approx(result.before[0].score)
    assert AutoModelForCausalLM.from_pretrained(result.model_dir).config.num_hidden_layers == 4
    assert lines[0].startswith("scoring") and "LayerDrop 0.5" in lines[1]


@pytest.mark.parametrize(("depths", "message"), [("x", "whole numbers"), ("0,2", "outside"), ("9", "exceeds")])
def test_bad_depths_are_explained(tmp_path, tiny_lm_dir, verses, depths, message):
    with pytest.raises(ValueError, match=message):
        run_elastic(_cfg(tiny_lm_dir, verses, tmp_path, depths=depths))


def test_elastic_command_prints_the_table(tmp_path, tiny_lm_dir, verses, capsys):
    assert main(["elastic", tiny_lm_dir, "--data", verses, "--out", str(tmp_path), "--depths", "4,2", "--steps", "2",
                 "--batch-size", "4", "--max-length", "16", "--eval-rows", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | 0, 3 |" in out and "report:" in out
