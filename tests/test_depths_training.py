"""Training for named depths (`layerdrop train --depths`): one run whose every served depth is trained, with
its layers recorded in the model so every later cut, view, sweep and server keeps the same ones (issue 30)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, TrainingArguments

import layerdrop
from conftest import make, tokens, write_reviews
from layerdrop import cli
from layerdrop.config.args import TrainConfig
from layerdrop.config.recipes import ServeConfig, SweepConfig
from layerdrop.core.apply import trained_with_layerdrop
from layerdrop.core.depths import DEPTHS_KEY, layers_at, parse_depths, recorded_depths
from layerdrop.cut.strategies import own_strategy
from layerdrop.errors import InputError
from layerdrop.evaluation.measure import depth_sweep
from layerdrop.models.loading import load_saved, resolve
from layerdrop.recipes.sweep import run_sweep
from layerdrop.recipes.train import run
from layerdrop.serving.served import load_served
from layerdrop.training.losses import kd_loss
from layerdrop.training.trainer import LayerDropTrainer

DEPTHS = {2: (0, 1), 1: (0,)}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews(tmp_path_factory.mktemp("data") / "reviews.csv")


def _cfg(**kw):
    base = dict(task="classification", batch_size=8, max_steps=4, save_steps=2, logging_steps=1, max_length=32,
                progress=False, warmup=0.0, lr=1e-3)
    return TrainConfig.from_flat(**{**base, **kw})


@pytest.fixture(scope="module")
def elastic(tmp_path_factory, bert_dir, reviews):
    out = tmp_path_factory.mktemp("elastic") / "run"
    return run(_cfg(model=bert_dir, data=reviews, out=str(out), depths="4,2,1")), reviews


def _calls(model: torch.nn.Module) -> list[int]:
    """A counter of each block's runs (of its first sublayer: a skipped block calls none), kept by hooks."""
    counts = [0] * len(layerdrop.find_layers(model).layers)
    for i, layer in enumerate(layerdrop.find_layers(model).layers):
        next(layer.children()).register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def _trainer(tmp_path, model, **options) -> LayerDropTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], per_device_train_batch_size=4,
                             save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False)
    rows = [{"input_ids": ids, "labels": torch.tensor(i % 3)} for i, ids in enumerate(tokens(batch=4, length=6))]
    return LayerDropTrainer(model=model, args=args, train_dataset=rows, **options)


# --------------------------------------------------------------------------- the training step


def test_each_step_runs_the_full_network_and_every_named_depth_skipping_their_other_layers(tmp_path):
    model = make("bert")
    counts = _calls(model)
    _trainer(tmp_path, model, depths=DEPTHS).train()
    assert counts == [3, 2, 1, 1]  # layer 0 in all three networks, layer 1 in two, the rest in the full one only


def test_the_sandwich_trains_the_smallest_and_draws_the_others_by_step(tmp_path):
    trainer = _trainer(tmp_path, make("bert"), depths={3: (0, 1, 2), 2: (0, 1), 1: (0,)}, each_step="sandwich",
                       sandwich=1)
    draws = [trainer.depths_at(step) for step in range(40)]
    assert all(len(d) == 2 and d[-1] == 1 for d in draws)
    assert {d[0] for d in draws} == {3, 2}  # both others drawn over the steps
    assert draws == [trainer.depths_at(step) for step in range(40)]  # a resumed run draws the same


def test_in_place_the_full_network_learns_the_task_and_each_depth_its_predictions(tmp_path):
    model = make("bert").train()
    trainer = _trainer(tmp_path, model, depths={2: (0, 1)}, task_weight=0.5, distill_weight=0.5,
                       distill_temperature=2.0)
    batch = trainer.data_collator(trainer.train_dataset)
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, batch)
    model.eval()  # the same forwards without dropout's draws
    with torch.no_grad():
        full = model(**batch)
        with layerdrop.only_layers(model, (0, 1)):
            sub = model(**batch)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            assert module.p == 0.0  # make("bert") has no dropout, so train and eval forwards agree
    expected = full.loss + 0.5 * sub.loss + 0.5 * kd_loss(sub.logits, full.logits, 2.0)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("options, message", [
    ({"self_distill": True}, "choose one"),
    ({"each_step": "some"}, "each_step"),
    ({"cos_weight": 1.0}, "hidden_weight"),
    ({"task_weight": 0.0, "distill_weight": 0.0}, "learn nothing"),
])
def test_named_depth_settings_that_cannot_train_are_refused(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        _trainer(tmp_path, make("bert"), depths=DEPTHS, **options)


# --------------------------------------------------------------------------- the record, and who reads it


def test_the_run_records_each_depths_layers_and_scores_each_depth(elastic):
    result, _ = elastic
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config[DEPTHS_KEY] == {"strategy": "top", "kept": {"4": [0, 1, 2, 3], "2": [0, 1], "1": [0]}}
    assert {"valid_accuracy_at_2", "test_accuracy_at_1"} <= set(result.metrics)
    trained = json.loads((result.model_dir / "layerdrop.json").read_text())["trained_with"]
    assert trained["depths"] == "4,2,1" and trained["rate"] == 0.0  # random dropping is off


def test_prune_view_sweep_and_serve_keep_the_recorded_layers_without_being_told(elastic, tmp_path):
    result, data = elastic
    model = load_saved(str(result.model_dir)).eval()
    assert own_strategy(model) == "trained" and trained_with_layerdrop(model)
    pruned = layerdrop.prune(model, depth=2)
    assert pruned.config.layerdrop_pruning["kept_layers"] == [0, 1]  # every-other would keep 0, 3
    assert len(layerdrop.find_layers(layerdrop.view(model, depth=2)).layers) == 2
    ids = tokens(batch=2, length=5)
    with torch.no_grad():
        torch.testing.assert_close(layerdrop.view(model, depth=2)(input_ids=ids).logits,
                                   pruned(input_ids=ids).logits)
    assert [r.kept for r in depth_sweep(model, lambda m: 0.0, depths=[2, 1])] == [(0, 1), (0,)]
    swept = run_sweep(SweepConfig(model=str(result.model_dir), data=data, out=str(tmp_path / "sweep"), rows=16,
                                  batch_size=8, max_length=32, latency_reps=1, progress=False))
    assert list(swept.points) == ["trained"] and swept.points["trained"][-2].kept == (0, 1)
    served = load_served(ServeConfig(model=str(result.model_dir), depths="4,2,1"))
    assert served.kept == {4: (0, 1, 2, 3), 2: (0, 1), 1: (0,)}
    assert served.quality == {d: result.metrics["test_accuracy" + (f"_at_{d}" if d < 4 else "")] for d in (4, 2, 1)}
    served = load_served(ServeConfig(model=str(result.model_dir), depths="2", strategy="every-other"))
    assert served.kept == {2: (0, 3)}  # an explicit strategy wins


def test_a_cut_keeps_the_record_of_the_depths_it_still_serves(elastic):
    result, _ = elastic
    cut = layerdrop.prune(load_saved(str(result.model_dir)), depth=2)
    assert recorded_depths(cut.config) == {2: (0, 1), 1: (0,)}
    assert layers_at(cut.config, 2, 1) == (0,)
    spread = layerdrop.prune(load_saved(str(result.model_dir)), keep=[0, 3])
    assert recorded_depths(spread.config) == {1: (0,)}  # only depth 1's layers all survive
    top_gone = layerdrop.prune(load_saved(str(result.model_dir)), keep=[1, 2, 3])
    assert recorded_depths(top_gone.config) == {} and own_strategy(top_gone) == "every-other"


def test_training_without_depths_drops_an_inherited_record(elastic, tmp_path):
    result, data = elastic
    again = run(_cfg(model=str(result.model_dir), data=data, out=str(tmp_path / "again"), rate=0.0, max_steps=1))
    config = json.loads((again.model_dir / "config.json").read_text())
    assert DEPTHS_KEY not in config


def test_training_again_drops_calibrated_exits_even_with_the_same_depths(elastic, tmp_path):
    from layerdrop.core.depths import EXITS_KEY

    result, data = elastic
    start = tmp_path / "calibrated"
    shutil.copytree(result.model_dir, start)
    config = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**config, EXITS_KEY: {"rule": "max-prob"}}))
    again = run(_cfg(model=str(start), data=data, out=str(tmp_path / "again"), depths="4,2", max_steps=1))
    assert EXITS_KEY not in json.loads((again.model_dir / "config.json").read_text())


def test_a_teacher_teaches_every_depth_and_must_share_the_task_labels_and_tokenizer(elastic, bert_dir, tmp_path):
    result, data = elastic
    taught = run(_cfg(model=bert_dir, data=data, out=str(tmp_path / "taught"), depths="4,2",
                      teacher=str(result.model_dir), alpha_hidden=0.5, max_steps=2))
    assert recorded_depths(load_saved(str(taught.model_dir)).config)[2] == (0, 1)
    other = write_reviews(tmp_path / "other.csv", good_label="great", bad_label="bad")
    with pytest.raises(InputError, match="labels"):
        run(_cfg(model=bert_dir, data=other, out=str(tmp_path / "x"), depths="4,2", teacher=str(result.model_dir)))
    with pytest.raises(InputError, match="does classification"):
        run(_cfg(task="mlm", model=bert_dir, data=data, out=str(tmp_path / "y"), depths="4,2",
                 teacher=str(result.model_dir)))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, message", [
    ("4,2,2", "twice"), ("4,x", "whole numbers"), ("0,2", "outside"), ("", "no depth"),
])
def test_a_bad_depth_list_names_the_fix(text, message):
    with pytest.raises(InputError, match=message):
        parse_depths(text, 4)


@pytest.mark.parametrize("settings, message", [
    ({"depths": "4,2", "rate": 0.5}, "leave --rate out"),
    ({"depths": "4,2", "self_distill": True}, "--self-distill"),
    ({"depths": "4,2", "strategy": "search"}, "before training"),
    ({"depths": "4,2", "strategy": "nope"}, "unknown strategy"),
    ({"depths": "4,2", "each_step": "most"}, "--each-step"),
    ({"depths": "4,2", "alpha_kd": 0.0, "alpha_task": 0.0}, "one above 0"),
    ({"depths": "4,2", "strategy": "trained"}, "before training"),
    ({"teacher": "somewhere"}, "with --depths"),
    ({"strategy": "every-other", "alpha_kd": 1.0}, "--strategy, --alpha-kd set how named depths train"),
])
def test_bad_depth_training_settings_are_refused_before_loading(tmp_path, reviews, settings, message):
    with pytest.raises(InputError, match=message):
        run(_cfg(model="bert-tiny", data=reviews, out=str(tmp_path / "o"), **settings))


@pytest.mark.parametrize("depths, message", [("8,2", "outside 1..4"), ("4", "only the full depth")])
def test_depths_the_model_cannot_serve_are_refused(tmp_path, bert_dir, reviews, depths, message):
    with pytest.raises(InputError, match=message):
        run(_cfg(model=bert_dir, data=reviews, out=str(tmp_path / "o"), depths=depths))


def test_the_command_line_trains_named_depths_and_reports_a_bad_one(tmp_path, bert_dir, reviews, capsys):
    assert cli.main(["train", "classification", bert_dir, "--data", reviews, "--out", str(tmp_path / "cli"),
                     "--depths", "4,3", "--max-steps", "1", "--batch-size", "8", "--no-progress"]) == 0
    assert "test_accuracy_at_3" in capsys.readouterr().out
    assert cli.main(["train", "classification", bert_dir, "--data", reviews, "--out", str(tmp_path / "bad"),
                     "--depths", "4,4"]) == 2
    assert "twice" in capsys.readouterr().err
