"""Depth heads: a served depth's own classifier head is fitted on its frozen features, saved with the model,
and picked by depth wherever a depth is picked (views, cuts, only_layers, early exit)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from conftest import TINY, save_tiny_lm, write_reviews
from layerdrop import only_layers, prune, view
from layerdrop.config.recipes import HeadsConfig
from layerdrop.core.depths import record_depths
from layerdrop.errors import InputError
from layerdrop.evaluation.eval_mode import require_eval
from layerdrop.exits import early_exit, plan
from layerdrop.models.loading import (
    DEPTH_HEADS_FILE,
    META_FILE,
    Classifier,
    ModelFileError,
    load_classifier,
    pool,
    save_classifier,
)
from layerdrop.recipes.heads import run_heads
from layerdrop.training.heads import fit_head, head_accuracy, pooled_features


def _with_heads(name: str = "bert") -> Classifier:
    """A tiny 4-layer classifier with its own heads for layers (0,) and (0, 1), unlike the shared one."""
    torch.manual_seed(0)
    model = Classifier(TINY[name]().base_model, num_labels=3).eval()
    for key in ("0", "0_1"):
        model.heads[key] = nn.Linear(model.head.in_features, 3)
    return model.eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 90, (4, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _own_logits(model: Classifier, batch: dict[str, torch.Tensor], kept: tuple[int, ...], head: nn.Module):
    with torch.no_grad():
        hidden = view(model, keep=kept).encoder(**batch).last_hidden_state  # (B, T, H)
        return head(pool(hidden, batch["attention_mask"], model.pooling))


@pytest.mark.parametrize("name", sorted(TINY))
def test_views_cuts_and_only_layers_use_the_depths_own_head(name):
    model, batch = _with_heads(name), _batch()
    own = model.heads["0_1"]
    expected = _own_logits(model, batch, (0, 1), own)
    with torch.no_grad():
        torch.testing.assert_close(view(model, keep=(0, 1))(**batch).logits, expected)
        with only_layers(model, (0, 1)):
            torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(prune(model, keep=(0, 1)).eval()(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        shared = _own_logits(model, batch, (0, 2), model.head)  # no head of its own for these layers
        torch.testing.assert_close(view(model, keep=(0, 2))(**batch).logits, shared)


def test_picking_a_head_leaves_the_model_as_it_was():
    model = _with_heads()
    head, heads = model.head, dict(model.heads)
    view(model, keep=(0, 1))
    prune(model, keep=(0, 1))
    with only_layers(model, (0,)):
        pass
    assert model.head is head and dict(model.heads) == heads
    for picked in (view(model, keep=(0, 1)), view(model, keep=(0, 2)), prune(model, keep=(0, 1, 2))):
        require_eval(picked, "a test")  # the picked heads stay in the model's mode


def test_a_cut_exports_its_depths_head_and_keeps_those_of_the_depths_inside_it():
    model, batch = _with_heads(), _batch()
    cut = prune(model, keep=(0, 1, 2)).eval()
    assert list(cut.heads) == ["0", "0_1"]  # neither names the cut's own three layers
    assert torch.equal(prune(model, keep=(0, 1)).head.weight, model.heads["0_1"].weight)
    assert list(prune(model, keep=(0, 1)).heads) == ["0"]
    spread = prune(model, keep=(0, 2, 3))  # (0, 1) is not inside it; (0,) is
    assert list(spread.heads) == ["0"]
    with torch.no_grad(), only_layers(cut, (0, 1)), only_layers(model, (0, 1)):
        torch.testing.assert_close(cut(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-4)


def test_early_exit_scores_each_exit_with_its_depths_head():
    model, batch = _with_heads(), _batch()
    kept = {1: (0,), 2: (0, 1), 4: (0, 1, 2, 3)}
    probs = early_exit(model, batch, plan(kept)).probs
    for e, layers in enumerate(kept.values()):
        with torch.no_grad():
            expected = view(model, keep=layers)(**batch).logits.softmax(-1)
        torch.testing.assert_close(probs[:, e], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(probs[:, 1], _own_logits(model, batch, (0, 1), model.head).softmax(-1), atol=1e-3)


def test_saved_heads_load_back_and_saving_without_them_removes_them(tmp_path):
    model = _with_heads()
    save_classifier(model, tmp_path)
    assert json.loads((tmp_path / META_FILE).read_text())["depth_heads"] == ["0", "0_1"]
    loaded = load_classifier(tmp_path)
    for key in ("0", "0_1"):
        torch.testing.assert_close(loaded.heads[key].weight, model.heads[key].weight)
    model.heads = nn.ModuleDict()
    save_classifier(model, tmp_path)
    assert not (tmp_path / DEPTH_HEADS_FILE).exists()
    assert "depth_heads" not in json.loads((tmp_path / META_FILE).read_text())
    assert len(load_classifier(tmp_path).heads) == 0


def test_a_missing_heads_file_that_the_record_lists_is_a_clear_error(tmp_path):
    save_classifier(_with_heads(), tmp_path)
    (tmp_path / DEPTH_HEADS_FILE).write_bytes(b"cut short")
    with pytest.raises(ModelFileError, match="depth_heads.safetensors"):
        load_classifier(tmp_path)


def test_a_fitted_head_separates_what_the_shared_one_does_not_and_leaves_its_start_alone():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 8, generator=generator)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    start = nn.Linear(8, 2)
    before = start.weight.clone()
    head = fit_head(features, labels, start, l2=1e-3)
    assert head_accuracy(head, features, labels) > 0.95 > head_accuracy(start, features, labels)
    assert torch.equal(start.weight, before) and head is not start
    torch.testing.assert_close(fit_head(features, labels, start, l2=1e-3).weight, head.weight)  # deterministic


def test_pooled_features_are_what_the_sub_network_pools_and_need_eval_mode():
    model, batch = _with_heads(), _batch()
    rows = [{"input_ids": batch["input_ids"][i].tolist(), "attention_mask": batch["attention_mask"][i].tolist(),
             "labels": i % 3} for i in range(4)]

    def collate(items):
        return {k: torch.tensor([item[k] for item in items]) for k in items[0]}

    features, labels = pooled_features(model, rows, collate, (0, 1), batch_size=3)
    torch.testing.assert_close(features, _own_logits(model, batch, (0, 1), nn.Identity()))
    assert labels.tolist() == [0, 1, 2, 0]
    with pytest.raises(InputError, match="eval mode"):
        pooled_features(model.train(), rows, collate, (0, 1))


def _saved_elastic(folder, tokenizer, data: str) -> str:
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                   num_attention_heads=2, intermediate_size=64))
    record_depths(encoder.config, {4: (0, 1, 2, 3), 2: (0, 1), 1: (0,)}, "top")
    save_classifier(Classifier(encoder, num_labels=2), folder,
                    extra={"trained_with": {"data": data, "seed": 0, "max_length": 16, "train_rows": None}})
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_recipe_writes_the_heads_it_keeps_into_the_model(tmp_path, minilm_tokenizer):
    data = write_reviews(tmp_path / "r.csv")
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    result = run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "out"), keep="all", progress=False))
    assert [(r.depth, r.layers) for r in result.depths] == [(1, (0,)), (2, (0, 1))]
    assert all(r.kept for r in result.depths)
    loaded = load_classifier(model_dir)
    assert sorted(loaded.heads) == ["0", "0_1"]
    assert json.loads((tmp_path / "out" / "heads.json").read_text())["depths"][0]["depth"] == 1
    assert "validation, own head" in (tmp_path / "out" / "heads.md").read_text()
    better = run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "out2"), progress=False))
    assert [r.kept for r in better.depths] == [r.own > r.shared for r in better.depths]
    assert sorted(load_classifier(model_dir).heads) == sorted(
        key for key, r in zip(("0", "0_1"), better.depths, strict=True) if r.kept)


def test_the_recipe_refuses_what_it_cannot_fit(tmp_path, minilm_tokenizer):
    data = write_reviews(tmp_path / "r.csv")
    lm = save_tiny_lm(tmp_path / "lm", minilm_tokenizer)
    with pytest.raises(InputError, match="not a layerdrop classifier"):
        run_heads(HeadsConfig(model=lm, out=str(tmp_path / "x"), data=data))
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    with pytest.raises(InputError, match="full depth"):
        run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "x"), depths="4,2"))
    with pytest.raises(InputError, match="--keep"):
        run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "x"), keep="some"))  # type: ignore[arg-type]
    plain = tmp_path / "plain"
    save_classifier(Classifier(BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32,
                                                    num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64)), num_labels=2), plain)
    with pytest.raises(InputError, match="records no depths"):
        run_heads(HeadsConfig(model=str(plain), out=str(tmp_path / "x"), data=data))


def test_the_command_line_fits_and_reports_and_refuses_an_unknown_choice(tmp_path, minilm_tokenizer, capsys):
    from layerdrop.cli import main

    data = write_reviews(tmp_path / "r.csv")
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    assert main(["heads", model_dir, "--out", str(tmp_path / "out"), "--keep", "all", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"heads of depths 1, 2 written into {model_dir}" in printed and "heads.md" in printed
    with pytest.raises(SystemExit):
        main(["heads", model_dir, "--out", str(tmp_path / "out"), "--keep", "some"])
    assert "invalid choice: 'some'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["heads", "--help"])
    assert "--keep {better,all}" in capsys.readouterr().out


def test_training_with_depths_fits_the_heads_itself_and_never_carries_old_ones(tmp_path, minilm_tokenizer):
    from layerdrop.config.args import TrainConfig
    from layerdrop.recipes.train import run

    data = write_reviews(tmp_path / "r.csv")
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "out"), keep="all", progress=False))
    settings = dict(task="classification", model=model_dir, data=data, depths="4,2,1", max_steps=1, batch_size=8,
                    max_length=16, progress=False)
    off = run(TrainConfig.from_flat(**settings, out=str(tmp_path / "off"), depth_heads=False))
    assert not (off.model_dir / DEPTH_HEADS_FILE).exists() and len(load_classifier(off.model_dir).heads) == 0
    on = run(TrainConfig.from_flat(**settings, out=str(tmp_path / "on")))
    fit = json.loads((on.model_dir / META_FILE).read_text())["depth_heads_fit"]
    assert [(f["depth"], tuple(f["layers"])) for f in fit] == [(2, (0, 1)), (1, (0,))]
    kept = sorted("_".join(map(str, f["layers"])) for f in fit if f["kept"])
    assert sorted(load_classifier(on.model_dir).heads) == kept
    assert all(f["kept"] == (f["own"] > f["shared"]) for f in fit)


def test_depth_heads_need_a_pooled_classifier_and_depths(tmp_path, minilm_tokenizer, tiny_lm_dir):
    from layerdrop.config.args import TrainConfig
    from layerdrop.recipes.train import run

    data = write_reviews(tmp_path / "r.csv")
    with pytest.raises(InputError, match="--depth-heads"):
        run(TrainConfig.from_flat(task="clm", model=tiny_lm_dir, data=data, out=str(tmp_path / "x"), depths="4,2",
                                  depth_heads=True))
    with pytest.raises(InputError, match="give them with --depths"):
        run(TrainConfig.from_flat(task="classification", model=tiny_lm_dir, data=data, out=str(tmp_path / "x"),
                                  depth_heads=True))


def test_new_heads_remove_a_calibrated_early_exit_and_the_same_heads_keep_it(tmp_path, minilm_tokenizer):
    from layerdrop.core.depths import EXITS_KEY

    data = write_reviews(tmp_path / "r.csv")
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    config_file = tmp_path / "m" / "config.json"

    def calibrate() -> None:
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), EXITS_KEY: {"rule": "entropy"}}))

    calibrate()
    first = run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "out"), keep="all", progress=False))
    assert first.exits_dropped and EXITS_KEY not in json.loads(config_file.read_text())
    calibrate()  # calibrated again, on these heads
    again = run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "out"), keep="all", progress=False))
    assert not again.exits_dropped and EXITS_KEY in json.loads(config_file.read_text())  # the fit is deterministic


def test_a_view_of_a_model_with_fixed_layers_uses_the_views_own_numbering():
    from layerdrop import apply

    model = _with_heads()
    model.heads["0_3"] = nn.Linear(model.head.in_features, 3).eval()
    apply(model, 0.0)
    shell = view(model, keep=(0, 2, 3))  # its heads: "0" (and "0_2" for the model's (0, 3))
    assert sorted(shell.heads) == ["0", "0_2"]
    with only_layers(model, (0, 2)):  # the model's numbering; the view shares its state
        assert shell._running_head() is shell.head
        assert model._running_head() is model.head  # no head of the model's for (0, 2)
    with only_layers(model, (0, 3)):
        assert model._running_head() is model.heads["0_3"]


def test_a_record_that_lists_a_head_the_file_lacks_is_a_clear_error(tmp_path):
    save_classifier(_with_heads(), tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "depth_heads": ["0", "0_1", "0_1_2"]}))
    with pytest.raises(ModelFileError, match="0_1_2"):
        load_classifier(tmp_path)


def test_new_heads_remove_the_scores_training_recorded_at_their_depths(tmp_path, minilm_tokenizer):
    data = write_reviews(tmp_path / "r.csv")
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    meta_file = tmp_path / "m" / META_FILE
    metrics = {"test_accuracy": 0.8, "test_accuracy_at_2": 0.7, "test_accuracy_at_1": 0.6}
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "metrics": metrics}))
    result = run_heads(HeadsConfig(model=model_dir, out=str(tmp_path / "out"), depths="1", keep="all",
                                   progress=False))
    meta = json.loads(meta_file.read_text())
    assert meta["metrics"] == {"test_accuracy": 0.8, "test_accuracy_at_2": 0.7}  # depth 1's head changed
    assert [f["depth"] for f in meta["depth_heads_fit"]] == [1] and result.depths[0].kept


def test_a_depths_run_from_before_heads_is_not_reused_as_if_it_had_them(tmp_path, minilm_tokenizer):
    from layerdrop.config.args import TrainConfig
    from layerdrop.errors import ExistingOutput
    from layerdrop.recipes.train import run_or_reuse

    data = write_reviews(tmp_path / "r.csv")
    model_dir = _saved_elastic(tmp_path / "m", minilm_tokenizer, data)
    cfg = TrainConfig.from_flat(task="classification", model=model_dir, data=data, out=str(tmp_path / "run"),
                                depths="4,2,1", max_steps=1, batch_size=8, max_length=16, progress=False)
    assert run_or_reuse(cfg) == run_or_reuse(cfg)  # finished with its heads fitted: reused
    meta_file = tmp_path / "run" / "model" / META_FILE
    meta = json.loads(meta_file.read_text())
    meta.pop("depth_heads_fit")
    meta["trained_with"].pop("depth_heads")
    meta_file.write_text(json.dumps(meta))  # as a run finished before heads existed recorded it
    with pytest.raises(ExistingOutput, match="depth_heads: not fitted"):
        run_or_reuse(cfg)
