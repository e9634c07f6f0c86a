"""`layerdrop compare`: every method at every depth on one test split, with its cost; resumable."""

import dataclasses
import json

import pytest
import torch
from transformers import BertConfig, BertModel

from conftest import write_reviews
from layerdrop import cli
from layerdrop.config.recipes import CompareConfig
from layerdrop.recipes.compare import METHODS, check, run_compare


@pytest.fixture(scope="module")
def compared(tmp_path_factory, minilm_tokenizer):
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    data = write_reviews(tmp_path_factory.mktemp("data") / "reviews.csv")
    cfg = CompareConfig(model=str(folder), data=data, out=str(tmp_path_factory.mktemp("compare")), depths="4,2",
                        seeds="0,1", train_rows=0, epochs=1.0, heal_epochs=0.5, batch_size=16, max_length=16,
                        lr=1e-3, latency_reps=1, progress=False, alpha_task=0.75, alpha_kd=0.25)
    return cfg, run_compare(cfg)


def test_every_method_is_scored_at_every_depth_and_the_shallowest_with_each_seed(compared):
    cfg, result = compared
    by = {(r.method, r.depth): r for r in result.rows}
    assert set(by) == {(m, 2) for m in METHODS} | {("plain", 4), ("layerdrop", 4), ("elastic-full", 4)}  # each full run
    assert all(len(by[(m, 2)].scores) == 2 for m in METHODS if METHODS[m].per_depth or m == "elastic")  # two seeds
    assert by[("top-dropped", 2)].kept == (0, 1) and by[("fixed-depth", 2)].kept == (0, 3)
    assert by[("elastic", 2)].kept == (0, 1) and by[("layerdrop-cut", 2)].kept == (0, 3)  # its recorded layers
    assert by[("distilled", 2)].minutes > 0 and by[("plain-cut", 2)].minutes == 0
    second = json.loads((result.out / "fixed2-seed1" / "model" / "layerdrop.json").read_text())["trained_with"]
    assert second["seed"] == 1 and second["split_seed"] == 0  # another seed, the same test rows
    for run in ("elastic", "elastic-seed1"):  # the elastic runs' weights are the comparison's
        trained = json.loads((result.out / run / "model" / "layerdrop.json").read_text())["trained_with"]
        assert (trained["alpha_task"], trained["alpha_kd"]) == (0.75, 0.25)


def test_finished_runs_keep_only_their_logs_unless_asked(compared):
    cfg, result = compared
    checkpoints = list(result.out.glob("*/checkpoints/checkpoint-*"))
    assert checkpoints and all([p.name for p in c.iterdir()] == ["trainer_state.json"] for c in checkpoints)
    assert not cfg.keep_checkpoints and all((c.parent.parent / "model").is_dir() for c in checkpoints)


def test_the_report_gives_the_cost_of_serving_every_depth(compared):
    cfg, result = compared
    md = (result.out / "compare.md").read_text()
    assert "What serving every depth of the table costs" in md and "★" in md
    serving = md.split("costs each method")[1]
    line = next(row for row in serving.splitlines() if row.startswith("| LayerDrop, cut and healed"))
    assert line.split("|")[2].strip() == "2"  # the LayerDrop run and one heal
    line = next(row for row in serving.splitlines() if row.startswith("| fixed depth"))
    assert line.split("|")[2].strip() == "2"  # full depth is in the table: the plain run, and one per depth
    line = next(row for row in serving.splitlines() if row.startswith("| one elastic run"))
    assert line.split("|")[2].strip() == "1"  # one run serves every depth
    data = json.loads((result.out / "compare.json").read_text())
    assert len(data["rows"]) == len(result.rows) and (result.out / "compare.csv").is_file()
    assert (result.out / "quality_vs_latency.png").stat().st_size > 0
    assert (result.out / "quality_vs_training.png").stat().st_size > 0


def test_a_page_block_redraws_the_reports_tables_from_its_json(compared, tmp_path):
    from layerdrop.recipes.pages import refresh_text

    cfg, result = compared
    page = (f"<!-- layerdrop:compare {result.out.name} -->\n<!-- /layerdrop -->\n"
            f"<!-- layerdrop:compare-plot {result.out.name} against=training image=cost.png -->\n<!-- /layerdrop -->\n")
    text = refresh_text(page, result.out.parent, page_dir=tmp_path).text
    assert result.table in text and result.table in (result.out / "compare.md").read_text()
    assert "![accuracy against training" in text and (tmp_path / "cost.png").stat().st_size > 0


def test_a_chinese_page_gets_the_comparison_in_chinese_with_the_same_numbers(compared):
    from layerdrop.evaluation.words import say
    from layerdrop.recipes.pages import refresh_text

    cfg, result = compared
    page = f"<!-- layerdrop:compare {result.out.name} -->\n<!-- /layerdrop -->\n"
    english = refresh_text(page, result.out.parent).text
    chinese = refresh_text(page, result.out.parent, language="zh").text
    assert "| 方法 | 深度 | 保留的层 | 测试集准确率 |" in chinese and "各方法覆盖表中全部深度所需的训练" in chinese
    assert "| 一次弹性训练 |" in chinese and "（仅剪枝）" in chinese
    assert "method" not in chinese and "LayerDrop, cut" not in chinese and "min)" not in chinese

    def rows(text):  # each table line's cells, the header lines left out
        lines = text.splitlines()
        return [line for k, line in enumerate(lines) if line.startswith("| ") and not lines[k + 1].startswith("|---")]

    translated = ["| " + say(line.split(" | ")[0].removeprefix("| "), "zh") + " | " + line.split(" | ", 1)[1]
                  for line in rows(english)]
    assert [line.replace("(cut)", "（仅剪枝）") for line in translated] == rows(chinese)  # the same numbers


def test_a_second_run_reuses_every_training(compared):
    cfg, first = compared
    stamps = {p: p.stat().st_mtime_ns for p in first.out.glob("*/model/layerdrop.json")}
    again = run_compare(cfg)
    assert [r.scores for r in again.rows] == [r.scores for r in first.rows]
    assert {p: p.stat().st_mtime_ns for p in first.out.glob("*/model/layerdrop.json")} == stamps


@pytest.mark.parametrize("field, value, message", [
    ("methods", "plain-cut,magic", "unknown method"),
    ("depths", "4,x", "whole numbers"),
    ("depths", "0", "outside"),
    ("heal_epochs", 0.0, "above 0"),
    ("max_steps", -1, "0 or more"),
    ("heal_steps", 10, "goes with --max-steps"),
])
def test_bad_settings_are_named_before_anything_trains(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        check(dataclasses.replace(CompareConfig(out=str(tmp_path)), **{field: value}))
    assert not any(tmp_path.iterdir())


def test_the_command_line_reports_a_bad_method(capsys, tmp_path):
    assert cli.main(["compare", "--methods", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.fixture(scope="module")
def compared_lm(tmp_path_factory):
    cfg = CompareConfig(model="gpt2-tiny", data="kjv", out=str(tmp_path_factory.mktemp("compare-lm")), depths="6,3",
                        train_rows=64, eval_rows=16, max_steps=4, batch_size=8, max_length=32, lr=1e-3,
                        latency_reps=1, progress=False)
    return cfg, run_compare(cfg)


def test_a_decoder_is_compared_by_perplexity_every_method_from_one_untrained_start(compared_lm):
    cfg, result = compared_lm
    assert result.metric == "perplexity" and all(r.score > 1 for r in result.rows)
    assert {r.method for r in result.rows} == {"plain", "layerdrop", "elastic-full",
                                               *(m for m in METHODS if m != "top-dropped")}
    init = str(result.out / "init")
    for run in ("plain", "layerdrop"):
        assert json.loads((result.out / run / "model" / "layerdrop.json").read_text())["trained_with"]["model"] == init
    fixed = json.loads((result.out / "fixed3" / "model" / "layerdrop.json").read_text())["trained_with"]
    assert fixed["model"] == str(result.out / "cut3") and fixed["max_steps"] == 4
    healed = json.loads((result.out / "layerdrop-healed3" / "model" / "layerdrop.json").read_text())
    assert healed["distilled_with"]["max_steps"] == 2  # half of --max-steps
    md = (result.out / "compare.md").read_text()
    assert "test perplexity" in md and "lower is better" in md
    best = min(result.rows, key=lambda r: (r.score, r.latency_ms))
    line = next(row for row in md.splitlines() if row.startswith("|") and f"| {best.score:.2f} |" in row)
    assert "★" in line  # the lowest perplexity is on the Pareto front
    with pytest.raises(ValueError, match="built for other settings .*train_rows"):
        run_compare(dataclasses.replace(cfg, train_rows=32))  # the untrained start was built from 64 rows


def test_a_model_trained_from_scratch_is_never_said_to_be_fine_tuned(compared_lm, compared):
    from layerdrop.recipes.pages import refresh_text

    cfg, result = compared_lm
    page = f"<!-- layerdrop:compare {result.out.name} -->\n<!-- /layerdrop -->\n"
    english, chinese = (refresh_text(page, result.out.parent, language=lang).text for lang in ("en", "zh"))
    assert "| plain training (full depth) |" in english and "| fixed depth (from scratch) |" in english
    assert "| 普通训练（完整深度） |" in chinese and "| 普通训练后剪枝 |" in chinese
    assert "fine-tune" not in english and "微调" not in chinese
    assert result.table in (result.out / "compare.md").read_text() and "fine-tune" not in result.table
    _, pretrained = compared  # a pretrained model keeps its fine-tune rows
    assert "| plain fine-tune (full depth) |" in pretrained.table
    assert [json.loads((r.out / "compare.json").read_text())["from_scratch"] for r in (result, pretrained)] == [
        True, False]  # recorded, so a report reads it from the file


def test_top_dropped_is_refused_for_a_model_trained_from_scratch(tmp_path):
    with pytest.raises(ValueError, match="trained from scratch"):
        check(CompareConfig(model="gpt2-tiny", methods="plain-cut,top-dropped", out=str(tmp_path)))
    assert "top-dropped" not in check(CompareConfig(model="gpt2-tiny", out=str(tmp_path)))[0]
    with pytest.raises(ValueError, match="built from scratch"):
        check(CompareConfig(model="gpt2-tiny", freeze_embeddings=True, out=str(tmp_path)))


@pytest.mark.parametrize("module", ["layerdrop.recipes.compare", "layerdrop.evaluation.comparison",
                                    "layerdrop.evaluation.report", "layerdrop.evaluation.words"])
def test_the_doctests_hold(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
