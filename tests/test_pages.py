"""`layerdrop report`: a page's marked tables and figures are redrawn from its runs, the prose kept."""

import json
import re
import warnings

import pytest

import layerdrop
from conftest import make, tokens, write_reviews
from layerdrop import cli
from layerdrop.core.masklog import record_masks, save_mask_log
from layerdrop.recipes.pages import find_blocks, refresh_page, refresh_text
from layerdrop.recipes.sweep import SweepConfig, run_sweep

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"

PAGE = """# 第五章 Strategies

Prose the author wrote, kept as is.

<!-- layerdrop:sweep runs/sweep -->
stale table
<!-- /layerdrop -->

<!-- layerdrop:sweep-plot runs/sweep image=images/depth.png -->
<!-- /layerdrop -->

<!-- layerdrop:masks runs/masks.safetensors image=images/masks.png title="every-other" -->
<!-- /layerdrop -->

<!-- layerdrop:mechanism runs/masks.safetensors image=images/mechanism.png steps=2 -->
<!-- /layerdrop -->

<!-- layerdrop:levers runs/levers/*/sweep.json depths=6,3 -->
<!-- /layerdrop -->

<!-- layerdrop:levers-loss runs/levers/* image=images/loss.png -->
<!-- /layerdrop -->

<!-- layerdrop:generation runs/gen -->
<!-- /layerdrop -->

<!-- layerdrop:sweep runs/not-run-yet -->
kept while its run is missing
<!-- /layerdrop -->

The end.
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_lm_dir):
    """A folder with one run of each kind the page draws: a real sweep and mask log, bench-format JSON."""
    root = tmp_path_factory.mktemp("runs")
    data = write_reviews(root / "reviews.csv")
    run_sweep(SweepConfig(model=tiny_lm_dir, data=data, out=str(root / "runs/sweep"), rows=12, batch_size=6,
                          max_length=16, latency_reps=1, calibration_rows=12, strategies="every-other,block-influence",
                          progress=False))
    model = layerdrop.apply(make("bert"), rate=0.5, pattern="every-other").train()
    recorder = record_masks(model)
    for i in range(6):
        model(input_ids=tokens(seed=i))
    save_mask_log(root / "runs/masks.safetensors", recorder.log())
    for name, full, half, seconds in (("rate0.2", 0.84, 0.79, 30.0), ("rate0.5", 0.83, 0.81, 27.0)):
        (root / "runs/levers" / name).mkdir(parents=True)
        (root / "runs/levers" / name / "sweep.json").write_text(json.dumps({
            "task": "classification", "steps": 10, "train_seconds": seconds,
            "loss_curve": [[5, 0.7], [10, 0.4]], "rows": [{"depth": 6, "kept": list(range(6)), "score": full},
                                                           {"depth": 3, "kept": [0, 3, 5], "score": half}]}))
    (root / "runs/gen").mkdir()
    (root / "runs/gen/generation.json").write_text(json.dumps({"settings": {}, "layers": 6, "depths": [
        {"depth": 6, "kept": list(range(6)), "perplexity": 41.5,
         "greedy": {"tokens_per_second": 120.0, "distinct_1": 0.3, "distinct_2": 0.45, "repeated_4grams": 0.2},
         "sampled": {"tokens_per_second": 110.0, "distinct_1": 0.6, "distinct_2": 0.9, "repeated_4grams": float("nan")},
         "speculative": [{"draft_depth": 3, "acceptance": 0.625, "tokens_per_second": 150.0, "speed_up": 1.25}]},
        {"depth": 3, "kept": [0, 3, 5], "perplexity": 77.25,
         "greedy": {"tokens_per_second": 230.0, "distinct_1": 0.2, "distinct_2": 0.3, "repeated_4grams": 0.5},
         "sampled": {"tokens_per_second": 220.0, "distinct_1": 0.5, "distinct_2": 0.8, "repeated_4grams": 0.0}}]}))
    return root


def test_a_page_is_rebuilt_from_its_runs_and_its_prose_kept(tmp_path, runs):
    page = tmp_path / "lecture.md"
    page.write_text(PAGE, encoding="utf-8")
    result = refresh_page(page, runs)
    text = page.read_text(encoding="utf-8")
    assert [b.source for b in result.missing] == ["runs/not-run-yet"] and len(result.refreshed) == 7
    for prose in ("# 第五章 Strategies\n\nProse the author wrote, kept as is.\n", "kept while its run is missing",
                  "The end.\n"):
        assert prose in text
    assert "stale table" not in text
    sweep = json.loads((runs / "runs/sweep/sweep.json").read_text())
    for point in sweep["points"]["every-other"]:
        kept = " ".join(map(str, point["kept"]))
        assert f"| `every-other` | {point['depth']} | {kept} | {point['score']:.2f} |" in text
    assert "| `rate0.2` | 84.0 % | 79.0 % | 3.00 | 0.400 | 0.700 |" in text
    assert "| `rate0.5` | 83.0 % | 81.0 % | 2.70 |" in text
    assert "| 6 | 41.50 | 120.0 | 0.450 | 0.200 | 110.0 | 0.900 |  |" in text  # nan: no 4-grams, left blank
    assert "| 3 | 0.625 | 150.0 | 1.25 |" in text
    for image in ("images/depth.png", "images/masks.png", "images/loss.png", "images/mechanism.png"):
        assert (tmp_path / image).read_bytes()[:8] == PNG
        assert f"]({image})" in text
    assert "![every-other](images/masks.png)" in text


def test_refreshing_twice_changes_nothing_and_check_finds_a_hand_edit(tmp_path, runs, capsys):
    page = tmp_path / "lecture.md"
    page.write_text(PAGE, encoding="utf-8")
    refresh_page(page, runs)
    once = page.read_text(encoding="utf-8")
    assert refresh_page(page, runs).text == once
    assert cli.main(["report", str(page), "--runs", str(runs), "--check"]) == 0
    page.write_text(once.replace("| `rate0.2` | 84.0 %", "| `rate0.2` | 99.0 %"), encoding="utf-8")
    assert cli.main(["report", str(page), "--runs", str(runs), "--check"]) == 1
    assert "99.0 %" in page.read_text(encoding="utf-8")  # --check writes nothing
    out = capsys.readouterr().out
    assert "out of date" in out and "not-run-yet (not all found under" in out


def test_a_block_left_unrefreshed_draws_no_figure(tmp_path, runs):
    result = refresh_text(PAGE, runs, page_dir=None)
    assert "![every-other](images/masks.png)" in result.text
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("block, message", [
    ("<!-- layerdrop:histogram runs/sweep -->\n<!-- /layerdrop -->", "unknown block kind 'histogram'"),
    ("<!-- layerdrop:masks runs/masks.safetensors -->\n<!-- /layerdrop -->", "needs image=PATH"),
    ("<!-- layerdrop:sweep runs/sweep depths -->\n<!-- /layerdrop -->", "key=value options"),
    ("<!-- layerdrop:sweep-plot runs/sweep against=size image=a.png -->\n<!-- /layerdrop -->", "depth or latency"),
    ("<!-- layerdrop:levers runs/levers/*/sweep.json depths=six -->\n<!-- /layerdrop -->", "whole numbers"),
    ("<!-- layerdrop:mechanism runs/masks.safetensors image=a.png steps=99 -->\n<!-- /layerdrop -->",
     "forwards recorded"),
    ("<!-- layerdrop:sweep /etc/sweep -->\n<!-- /layerdrop -->", "relative to the runs folder"),
    ("<!-- layerdrop:sweep runs/sweep -->\nold\n\nprose\n<!-- layerdrop:sweep runs/sweep -->\nold\n<!-- /layerdrop -->",
     "before the next block"),
    ("<!-- layerdrop:sweep -->\n<!-- /layerdrop -->", "expected `<!-- layerdrop:KIND SOURCE"),
])
def test_a_malformed_block_is_named(block, message, runs, tmp_path):
    with pytest.raises(ValueError, match=message):
        refresh_text(block, runs, page_dir=tmp_path)


def test_the_marker_quoted_in_prose_is_left_alone(runs):
    page = ("Write `<!-- layerdrop:KIND RUN -->` above a table.\n<!-- layerdrop:sweep runs/sweep -->\nold\n"
            "<!-- /layerdrop -->\n")
    text = refresh_text(page, runs, page_dir=None).text
    assert text.startswith("Write `<!-- layerdrop:KIND RUN -->` above a table.\n") and "| `every-other` |" in text


def test_runs_option_picks_and_orders_the_levers_runs(runs):
    page = "<!-- layerdrop:levers runs/levers/* runs=rate0.5,rate0.2 -->\n<!-- /layerdrop -->\n"
    text = refresh_text(page, runs, page_dir=None).text
    assert text.index("| `rate0.5` |") < text.index("| `rate0.2` |")
    only = refresh_text(page.replace("runs=rate0.5,rate0.2", "runs=rate0.2"), runs, page_dir=None).text
    assert "| `rate0.2` |" in only and "rate0.5" not in only
    waiting = "<!-- layerdrop:levers runs/levers/* runs=rate0.2,rate0.9 -->\nold table\n<!-- /layerdrop -->\n"
    result = refresh_text(waiting, runs, page_dir=None)  # a run not there yet: the block waits for it
    assert result.text == waiting and [b.options["runs"] for b in result.missing] == ["rate0.2,rate0.9"]


def test_a_glob_that_finds_a_run_still_in_progress_waits_for_it(tmp_path, runs):
    for name in ("rate0.2", "rate0.5"):
        (tmp_path / "runs/levers" / name).mkdir(parents=True)
        sweep = (runs / "runs/levers" / name / "sweep.json").read_text()
        (tmp_path / "runs/levers" / name / "sweep.json").write_text(sweep)
    (tmp_path / "runs/levers/rate0.9/rt").mkdir(parents=True)  # training: no sweep.json yet
    page = "<!-- layerdrop:levers runs/levers/* -->\nold table\n<!-- /layerdrop -->\n"
    result = refresh_text(page, tmp_path, page_dir=None)
    assert result.text == page and len(result.missing) == 1
    (tmp_path / "runs/levers/rate0.9/rt").rmdir()
    (tmp_path / "runs/levers/rate0.9").rmdir()
    assert "| `rate0.5` |" in refresh_text(page, tmp_path, page_dir=None).text


def test_several_generation_runs_share_one_table_with_their_names(tmp_path, runs):
    for name in ("plain", "layerdrop"):
        (tmp_path / "runs/gens" / name).mkdir(parents=True)
        (tmp_path / "runs/gens" / name / "generation.json").write_text((runs / "runs/gen/generation.json").read_text())
    page = "<!-- layerdrop:generation runs/gens/* runs=plain,layerdrop -->\n<!-- /layerdrop -->\n"
    text = refresh_text(page, tmp_path, page_dir=None).text
    assert "| model | depth | perplexity |" in text
    rows = ("| `plain` | 6 | 41.50 |", "| `plain` | 3 | 77.25 |", "| `layerdrop` | 6 |")
    assert text.index(rows[0]) < text.index(rows[1]) < text.index(rows[2])
    assert "| `layerdrop` | 3 | 0.625 | 150.0 | 1.25 |" in text  # the speculative table names its run too


def test_the_importance_block_tabulates_and_draws_each_strategys_layer_scores(tmp_path, runs):
    page = tmp_path / "lecture.md"
    page.write_text("<!-- layerdrop:importance runs/sweep image=images/importance.png title=scores -->\n"
                    "<!-- /layerdrop -->\n", encoding="utf-8")
    refresh_page(page, runs)
    text = page.read_text(encoding="utf-8")
    records = json.loads((runs / "runs/sweep/sweep.json").read_text())["records"]
    influence = next(r["scores"] for r in records["block-influence"] if r["scores"])
    assert "| `block-influence` | " + " | ".join(f"{v:.3g}" for v in influence) + " |" in text
    assert "every-other" not in text  # it scores no layers
    assert (tmp_path / "images/importance.png").read_bytes()[:8] == PNG and "![scores](images/importance.png)" in text


def test_an_importance_block_over_a_sweep_without_scores_says_which_strategies_have_them(tmp_path):
    (tmp_path / "runs/eo").mkdir(parents=True)
    (tmp_path / "runs/eo/sweep.json").write_text(
        json.dumps({"records": {"every-other": [{"depth": 2, "scores": None}]}}))
    with pytest.raises(ValueError, match="data-driven or block-influence"):
        refresh_text("<!-- layerdrop:importance runs/eo image=a.png -->\n<!-- /layerdrop -->\n", tmp_path,
                     page_dir=None)


def test_a_page_with_windows_line_ends_is_refreshed(runs):
    page = "<!-- layerdrop:sweep runs/sweep -->\r\nold\r\n<!-- /layerdrop -->\r\n"
    assert "| `every-other` |" in refresh_text(page, runs, page_dir=None).text


def test_an_unchanged_page_is_not_rewritten(tmp_path, runs):
    page = tmp_path / "lecture.md"
    page.write_text(PAGE, encoding="utf-8")
    refresh_page(page, runs)
    stamp = page.stat().st_mtime_ns
    refresh_page(page, runs)
    assert page.stat().st_mtime_ns == stamp


def test_the_doctests_hold():
    import doctest

    import layerdrop.recipes.pages

    result = doctest.testmod(layerdrop.recipes.pages)
    assert result.attempted > 0 and result.failed == 0


def test_blocks_are_found_with_their_options_in_order():
    blocks = find_blocks(PAGE)
    assert [b.kind for b in blocks] == ["sweep", "sweep-plot", "masks", "mechanism", "levers", "levers-loss",
                                       "generation", "sweep"]
    assert dict(blocks[2].options) == {"image": "images/masks.png", "title": "every-other"}


def _generated(text: str) -> str:
    """The bodies of a page's blocks, without their image links (paths are not prose)."""
    bodies = re.findall(r"^<!-- layerdrop:[^\n]*-->\n(.*?)<!-- /layerdrop -->", text, re.S | re.M)
    return re.sub(r"!\[[^]]*]\([^)]*\)", "", "".join(bodies))


def test_a_chinese_page_gets_every_generated_word_and_figure_in_chinese(tmp_path, runs):
    from layerdrop.errors import InputError
    from layerdrop.evaluation.report import cjk_font

    try:
        cjk_font()
    except InputError as err:
        pytest.skip(str(err))
    page = tmp_path / "lecture.zh-CN.md"
    written = PAGE.replace('title="every-other"', 'title="隔层"').replace(
        "<!-- layerdrop:sweep runs/not-run-yet -->\nkept while its run is missing\n<!-- /layerdrop -->\n", "")
    page.write_text(written, encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = refresh_page(page, runs)
    assert len(result.refreshed) == 7
    assert not [str(w.message) for w in caught if "missing from" in str(w.message)]  # no character drawn as a box
    text = page.read_text(encoding="utf-8")
    assert "| 策略 | 深度 | 保留的层 | 困惑度 |" in text
    assert "| 运行名 | 6 层准确率 | 3 层准确率 | 每步耗时（秒） |" in text
    assert "完整深度上的自投机解码（贪心解码）：" in text
    prose = re.sub(r"`[^`]*`", "", _generated(text))  # runs' and strategies' names are set as code
    words = set(re.findall(r"[A-Za-z][\w.-]*", prose))
    assert words <= {"M"}, words  # "M" of "1.23M" parameters


def test_english_words_on_a_chinese_figure_would_be_caught(tmp_path):
    from layerdrop.evaluation.report import plot_loss_curves

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_loss_curves({"a": [[1, 0.5], [2, 0.4]]}, tmp_path / "loss.png", title="训练损失")  # English: no CJK font
    assert any("missing from" in str(w.message) for w in caught)


def test_without_a_chinese_font_a_chinese_figure_says_how_to_install_one(tmp_path, monkeypatch):
    from matplotlib import font_manager

    from layerdrop.evaluation import report

    monkeypatch.setattr(report, "CJK_FONTS", ("No Such Font",))
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    with pytest.raises(ValueError, match="apt-get install fonts-noto-cjk"):
        report.plot_loss_curves({"a": [[1, 0.5]]}, tmp_path / "loss.png", language="zh")
    assert not (tmp_path / "loss.png").exists()


def test_the_run_files_a_page_was_drawn_from_can_be_shipped_and_checked_alone(tmp_path, runs, monkeypatch, capsys):
    page = tmp_path / "lecture.md"
    page.write_text(PAGE, encoding="utf-8")
    monkeypatch.chdir(runs)  # --runs . as in the docs
    assert cli.main(["report", str(page), "--runs", ".", "--copy-to", str(tmp_path / "shipped")]) == 0
    shipped = sorted(str(p.relative_to(tmp_path / "shipped")) for p in (tmp_path / "shipped").rglob("*") if p.is_file())
    assert shipped == ["runs/gen/generation.json", "runs/levers/rate0.2/sweep.json", "runs/levers/rate0.5/sweep.json",
                       "runs/masks.safetensors", "runs/sweep/sweep.json"]  # nothing the page does not read
    assert "copied 5 run file(s)" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", str(page), "--runs", "shipped", "--check"]) == 0


@pytest.mark.parametrize("page", ["docs/lecture.zh-CN.md", "docs/lecture.md"])
def test_the_lecture_pages_match_the_run_files_they_ship_with(page):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = refresh_page(root / page, root / "docs/lecture-runs", write=False)
    assert len(result.refreshed) >= 16  # tables 4, 5, 6, 13a and figures 1a, 1b, 2, 4, 5, 6, 10 (both)
    assert result.text == (root / page).read_text(encoding="utf-8"), \
        f"{page} differs from docs/lecture-runs: run layerdrop report {page} --runs docs/lecture-runs"
