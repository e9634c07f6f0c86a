"""End-to-end tests of the `layerdrop` command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from layerdrop.cli import build_parser, main
from layerdrop.models.loading import load_classifier, resolve


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    tok = AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    rows = [{"text": f"{w} film number {i}", "label": lab} for i in range(12)
            for w, lab in (("good", "pos"), ("bad", "neg"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_subcommand_has_help_from_its_docstring(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: layerdrop " + command in text and len(text.splitlines()) > 8


def test_installed_console_script_runs_and_reports_bad_input(tmp_path):
    script = Path(sys.executable).with_name("layerdrop")  # installed by `pip install -e .` beside this python
    assert script.is_file(), f"no console script at {script}: install the package (make setup)"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "prune", "sweep", "generate", "demo"))
    bad = subprocess.run([str(script), "prune", str(tmp_path), "--depth", "1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("layerdrop prune: error:")


def test_threads_sets_torchs_threads_before_the_command_runs(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["prune", str(tmp_path), "--depth", "1", "--out", str(tmp_path / "x"), "--threads", "1"]) == 2
    assert calls == [1]  # set, then the command ran and refused the folder
    assert main(["sweep", str(tmp_path), "--data", "d", "--out", "o", "--threads", "-1"]) == 2
    assert "--threads -1" in capsys.readouterr().err and calls == [1]


def test_grouped_settings_are_flat_flags_and_build_the_groups():
    from layerdrop.cli import COMMANDS
    from layerdrop.cli.parser import _leaves
    from layerdrop.config.args import TrainConfig, build

    flags = [leaf.name for leaf in _leaves(TrainConfig)]
    assert len(flags) == len(set(flags)) == len(TrainConfig.leaf_names())
    ns = build_parser().parse_args(["train", "clm", "gpt2-tiny", "--data", "kjv", "--out", "o", "--rate", "0.5",
                                    "--lr", "0.001", "--max-length", "64", "--no-evaluate"])
    values = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "command"}
    cfg = build(TrainConfig, values)
    assert cfg == TrainConfig.from_flat(task="clm", model="gpt2-tiny", data="kjv", out="o", rate=0.5, lr=0.001,
                                        max_length=64, evaluate=False)
    assert ns._function is COMMANDS["train"].function


def test_train_then_prune_from_the_command_line(tmp_path, bert_dir, reviews, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "classification", bert_dir, "--data", reviews, "--out", str(run_dir), "--rate", "0.5",
                 "--max-steps", "3", "--batch-size", "8", "--max-length", "16", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "done: classification" in printed and f"model: {run_dir / 'model'}" in printed

    small = tmp_path / "small"
    assert main(["prune", str(run_dir / "model"), "--depth", "2", "--out", str(small)]) == 0
    assert "kept layers [0, 3] of 4 (every-other)" in capsys.readouterr().out
    encoder = AutoModel.from_pretrained(small)  # plain transformers
    assert encoder.config.num_hidden_layers == 2
    record = json.loads((small / "layerdrop.json").read_text())
    assert record["pruning"]["kept_layers"] == [0, 3]
    assert record["pruning"]["parameters_after"] < record["pruning"]["parameters_before"]
    assert record["label_names"] == ["neg", "pos"]  # the training record is carried over
    assert load_classifier(small).head.out_features == 2


def test_prune_with_explicit_layers(tmp_path, bert_dir):
    assert main(["prune", bert_dir, "--keep", "0,3", "--out", str(tmp_path / "k")]) == 0
    assert AutoModel.from_pretrained(tmp_path / "k").config.layerdrop_pruning["kept_layers"] == [0, 3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "{bert}", "--depth", "9", "--out", "{tmp}/x"], "depth must be an integer from 1 to 4"),
        (["prune", "{bert}", "--keep", "0,a", "--out", "{tmp}/x"], "comma-separated integers"),
        (["prune", "{tmp}", "--depth", "1", "--out", "{tmp}/x"], "not a model folder"),
        (["prune", "./no/such/model", "--depth", "1", "--out", "{tmp}/x"], "no model folder"),
        (["train", "poetry", "{bert}", "--data", "x", "--out", "{tmp}/x"], "unknown task"),
        (["train", "classification", "{bert}", "--data", "nope", "--out", "{tmp}/x"], "nope"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, message, tmp_path, bert_dir, capsys):
    argv = [a.format(bert=bert_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"layerdrop {argv[0]}: error:") and message in last


def test_train_reports_once_under_several_processes(monkeypatch, capsys, tmp_path):
    import layerdrop.recipes.train
    from layerdrop.recipes.train import TrainResult

    def other_rank(config):
        return TrainResult(out=tmp_path, model_dir=tmp_path / "model", metrics={}, steps=3, seconds=1.0,
                           resumed_from=None, main_process=False)

    monkeypatch.setattr(layerdrop.recipes.train, "run", other_rank)
    assert main(["train", "classification", "x", "--data", "x", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_only_input_errors_are_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    import layerdrop.recipes.prune_saved
    from layerdrop.errors import InputError, MissingInput, UnknownName

    argv = ["prune", str(tmp_path), "--depth", "1", "--out", str(tmp_path / "x")]
    for error in (InputError("bad --depth: use 2"), MissingInput("no model folder at x"), UnknownName("no 'x'")):
        def fails(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(layerdrop.recipes.prune_saved, "prune_saved", fails)
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"layerdrop prune: error: {error}"
    for bug in (KeyError("labels"), ValueError("a coding bug"), TypeError("x")):
        def broken(*args, bug=bug, **kwargs):
            raise bug
        monkeypatch.setattr(layerdrop.recipes.prune_saved, "prune_saved", broken)
        with pytest.raises(type(bug)):
            main(argv)


def test_input_errors_are_the_built_in_errors_a_caller_expects():
    from layerdrop.data.splits import DataError
    from layerdrop.errors import ExistingOutput, InputError, MissingInput, UnknownName
    from layerdrop.models.loading import ModelFileError

    assert issubclass(MissingInput, FileNotFoundError) and issubclass(ExistingOutput, FileExistsError)
    assert issubclass(UnknownName, KeyError) and str(UnknownName("no 'x'")) == "no 'x'"
    assert all(issubclass(e, (InputError, ValueError)) for e in (DataError, ModelFileError, InputError))


def test_data_driven_rates_under_several_processes_are_refused_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    argv = ["train", "classification", "bert-tiny", "--data", "rotten-tomatoes", "--out", str(tmp_path / "run"),
            "--rate", "0.5", "--data-driven"]
    assert main(argv) == 2
    assert "one process only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing loaded, nothing written
