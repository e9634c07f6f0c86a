"""Training: the Trainer callback, resumable masks, and the `layerdrop train` pipeline."""

import json

import pytest
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import layerdrop
from conftest import make, tokens, write_reviews
from layerdrop.config.args import TrainConfig
from layerdrop.core.rates import schedule_factor
from layerdrop.evaluation.measure import pooled_accuracy
from layerdrop.models.loading import Classifier, load_classifier, load_saved, pool, resolve
from layerdrop.recipes.train import run, run_or_reuse
from layerdrop.training.callback import LayerDropCallback, attach
from layerdrop.training.checkpoints import CHECKPOINT_DONE, drop_resume_state, last_complete_checkpoint
from layerdrop.training.losses import kd_loss
from layerdrop.training.trainer import LayerDropTrainer


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve("minilm-l6")[0])


def _tiny_dir(tmp_path_factory, tokenizer, kind):
    folder = tmp_path_factory.mktemp(kind)
    torch.manual_seed(0)
    common = dict(vocab_size=tokenizer.vocab_size)
    if kind == "bert":
        model = BertModel(BertConfig(**common, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
    elif kind == "bert-mlm":
        model = BertForMaskedLM(BertConfig(**common, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=128))
    else:
        model = GPT2LMHeadModel(GPT2Config(**common, n_embd=32, n_layer=4, n_head=2, n_positions=128,
                                           bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer):
    return _tiny_dir(tmp_path_factory, tokenizer, "bert")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews(tmp_path_factory.mktemp("data") / "reviews.csv")


def _quick(**kw):
    base = dict(batch_size=8, max_steps=4, save_steps=2, logging_steps=1, max_length=32, progress=False,
                warmup=0.0, lr=1e-3)
    return TrainConfig.from_flat(**{**base, **kw})


# --------------------------------------------------------------------------- callback


class _Record(TrainerCallback):
    def __init__(self, model):
        self.model, self.masks, self.scales = model, [], []

    def on_step_end(self, args, state, control, **kwargs):
        self.masks.append(self.model.layerdrop_state.keep)
        self.scales.append(self.model.layerdrop_state.scale)


def _data(n=24):
    ids = tokens(batch=n, length=6, seed=3)
    return [{"input_ids": ids[i], "labels": torch.tensor(i % 3)} for i in range(n)]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, report_to=[],
                save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1, learning_rate=1e-3,
                restore_callback_states_from_checkpoint=True)
    return TrainingArguments(**{**base, **kw})


@pytest.mark.parametrize("schedule", ["progressive", "warmup"])
def test_callback_drives_the_rate_schedule(tmp_path, schedule):
    model = layerdrop.apply(make("bert"), rate=0.5)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_data())
    attach(trainer, schedule=schedule, warmup_steps=4, gamma=0.3)
    record = _Record(model)
    trainer.add_callback(record)
    trainer.train()
    expected = [schedule_factor(schedule, s, warmup_steps=4, gamma=0.3) for s in range(6)]
    assert record.scales == pytest.approx(expected)


def test_callback_logs_rate_and_layers_run(tmp_path):
    model = layerdrop.apply(make("bert"), rate=0.5)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_data())
    attach(trainer)
    record = _Record(model)
    trainer.add_callback(record)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 6
    assert all(h["layerdrop/rate"] == 0.5 for h in logged)
    assert [h["layerdrop/layers_run"] for h in logged] == [sum(m) for m in record.masks]


def test_restore_from_a_folder_without_state_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        LayerDropCallback().restore(tmp_path)
    (tmp_path / "trainer_state.json").write_text('{"stateful_callbacks": {}}')
    with pytest.raises(ValueError, match="no LayerDropCallback state"):
        LayerDropCallback().restore(tmp_path)


def test_attach_puts_the_callback_first(tmp_path):
    trainer = Trainer(model=layerdrop.apply(make("bert")), args=_args(tmp_path), train_dataset=_data())
    callback = attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback


def test_callback_without_layerdrop_says_to_apply_it(tmp_path):
    trainer = Trainer(model=make("bert"), args=_args(tmp_path), train_dataset=_data(), callbacks=[LayerDropCallback()])
    with pytest.raises(ValueError, match="layerdrop.apply"):
        trainer.train()


@pytest.mark.parametrize("how", ["trainer_restores", "restore_method"])
def test_resumed_trainer_repeats_masks_and_losses(tmp_path, how):
    def train(stop_at=None, resume=None):
        model = layerdrop.apply(make("bert"), rate=0.5, seed=3)
        args = _args(tmp_path / "ckpt", save_strategy="steps", save_steps=3,
                     restore_callback_states_from_checkpoint=how == "trainer_restores")
        callback = LayerDropCallback()
        if resume and how == "restore_method":
            callback.restore(resume)
        trainer = Trainer(model=model, args=args, train_dataset=_data(), callbacks=[callback])
        record = _Record(model)
        trainer.add_callback(record)
        if stop_at:
            class Stop(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    control.should_training_stop = state.global_step >= stop_at
            trainer.add_callback(Stop())
        trainer.train(resume_from_checkpoint=resume)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return record.masks, losses

    full_masks, full_losses = train()
    train(stop_at=3)
    resumed_masks, resumed_losses = train(resume=str(tmp_path / "ckpt" / "checkpoint-3"))
    assert resumed_masks == full_masks[3:]
    assert resumed_losses[-3:] == pytest.approx(full_losses[3:], rel=1e-6)
    assert len(set(full_masks)) > 1  # masks did vary


# --------------------------------------------------------------------------- pooling


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])  # (1, 3, 1)
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "mean").item() == 2.0


def test_last_pooling_takes_the_last_real_token():
    hidden = torch.arange(6.0).reshape(2, 3, 1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "last").flatten().tolist() == [1.0, 5.0]


def test_cls_pooling_takes_the_first_token():
    hidden = torch.arange(6.0).reshape(2, 3, 1)
    assert pool(hidden, None, "cls").flatten().tolist() == [0.0, 3.0]


def test_unknown_pooling_lists_the_choices():
    with pytest.raises(ValueError, match="mean"):
        pool(torch.zeros(1, 2, 3), None, "max")


def test_long_document_windows_are_pooled_per_document():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [5.0, 0.0]])  # 3 windows of doc 0, 1 of doc 1
    docs = [0, 0, 0, 1]
    assert pooled_accuracy(logits, [0, 0], docs, "mean") == 1.0  # mean: (0.67, 0.67) ties -> class 0
    assert pooled_accuracy(logits, [1, 0], docs, "max") == 0.5  # max: (2, 1) -> class 0


# --------------------------------------------------------------------------- pipeline


def test_classification_run_exports_a_plain_encoder_and_head(tmp_path, bert_dir, reviews):
    result = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "run"), rate=0.5))
    assert result.steps == 4 and set(result.metrics) == {"valid_accuracy", "test_accuracy"}
    encoder = AutoModel.from_pretrained(result.model_dir)  # plain transformers
    assert encoder.config.num_hidden_layers == 4
    assert encoder.config.layerdrop_settings["rates"] == [0.5] * 4
    clf = load_classifier(result.model_dir)
    assert isinstance(clf, Classifier) and clf.head.out_features == 2
    meta = json.loads((result.model_dir / "layerdrop.json").read_text())
    assert meta["label_names"] == ["neg", "pos"] and meta["pooling"] == "mean"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == result.metrics


def test_retraining_a_saved_model_uses_the_given_granularity_not_the_recorded_one(tmp_path, reviews):
    first = run(_quick(task="classification", model="bert-tiny", data=reviews, out=str(tmp_path / "head"),
                       rate=0.5, granularity="head", max_steps=2, evaluate=False))
    assert AutoModel.from_pretrained(first.model_dir).config.layerdrop_settings["granularity"] == "head"
    again = run(_quick(task="classification", model=str(first.model_dir), data=reviews,
                       out=str(tmp_path / "layer"), rate=0.5, max_steps=2, evaluate=False))
    assert AutoModel.from_pretrained(again.model_dir).config.layerdrop_settings["granularity"] == "layer"


def test_retraining_a_model_armed_from_python_does_not_inherit_settings_the_recipe_does_not_expose(tmp_path,
                                                                                                  bert_dir, reviews):
    import layerdrop

    model = AutoModel.from_pretrained(bert_dir)
    layerdrop.apply(model, rate=0.3, min_layers=0, rescale=True)
    model.save_pretrained(tmp_path / "armed")
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(tmp_path / "armed")
    result = run(_quick(task="classification", model=str(tmp_path / "armed"), data=reviews,
                        out=str(tmp_path / "run"), rate=0.5, max_steps=2, evaluate=False))
    recorded = AutoModel.from_pretrained(result.model_dir).config.layerdrop_settings
    assert (recorded["min_layers"], recorded["rescale"]) == (1, False)


def test_run_trains_with_the_every_other_pattern_and_records_it(tmp_path, bert_dir, reviews):
    result = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "run"), rate=0.5,
                        pattern="every-other", self_distill=True, evaluate=False))
    assert AutoModel.from_pretrained(result.model_dir).config.layerdrop_settings["pattern"] == "every-other"


def test_long_doc_makes_overlapping_windows(tmp_path, bert_dir, reviews):
    from layerdrop import data
    from layerdrop.data import encode_classification

    tok = AutoTokenizer.from_pretrained(bert_dir)
    split = data.load(reviews).train
    rows, doc_of = encode_classification(tok, split, max_length=8, stride=2)
    assert len(rows) > len(split) and sorted(set(doc_of)) == list(range(len(split)))
    assert all(len(r["input_ids"]) <= 8 for r in rows)
    assert all(r["labels"] == split.labels[d] for r, d in zip(rows, doc_of, strict=True))


@pytest.mark.parametrize("data_driven, grouped", [(False, False), (True, False), (False, True)])
def test_resumed_run_matches_an_uninterrupted_run(tmp_path, bert_dir, reviews, data_driven, grouped):
    # grouped: batches of similar length, 3 steps an epoch, so the resumed run crosses into a new epoch
    cfg = _quick(task="classification", model=bert_dir, data=reviews, rate=0.5, dropout=0.1, out="",
                 data_driven=data_driven, **({"group_by_length": True, "batch_size": 24} if grouped else {}))
    full = run(cfg.replace(out=str(tmp_path / "full")))
    out = tmp_path / "crashed"
    run(cfg.replace(out=str(out)))
    (out / "checkpoints" / "checkpoint-4" / "layerdrop-complete.json").unlink()  # as if it died while saving
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-2"
    resumed = run(cfg.replace(out=str(out), resume=True))
    assert resumed.resumed_from.name == "checkpoint-2"
    a = load_classifier(full.model_dir).state_dict()
    b = load_classifier(resumed.model_dir).state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)
    assert resumed.metrics == pytest.approx(full.metrics)
    if data_driven:
        rates = [json.loads((r.model_dir / "layerdrop.json").read_text())["learned_rates"] for r in (full, resumed)]
        assert rates[1] == pytest.approx(rates[0]) and len(rates[0]) == 4
        assert (out / "checkpoints" / "checkpoint-2" / "learned_rates.safetensors").is_file()


def test_a_resumed_runs_training_time_counts_the_invocations_before_it(tmp_path, bert_dir, reviews):
    out = tmp_path / "crashed"
    cfg = _quick(task="classification", model=bert_dir, data=reviews, rate=0.5, out=str(out))
    run(cfg)
    marker = out / "checkpoints" / "checkpoint-2" / CHECKPOINT_DONE
    assert json.loads(marker.read_text())["train_seconds"] > 0  # each checkpoint records the time so far
    marker.write_text(json.dumps({"global_step": 2, "train_seconds": 1000.0}))  # as if the first invocation was slow
    (out / "checkpoints" / "checkpoint-4" / CHECKPOINT_DONE).unlink()  # and died saving its last checkpoint
    resumed = run(cfg.replace(resume=True))
    meta = json.loads((resumed.model_dir / "layerdrop.json").read_text())
    assert meta["train_seconds"] >= 1000.0
    assert json.loads((out / "checkpoints" / "checkpoint-4" / CHECKPOINT_DONE).read_text())["train_seconds"] >= 1000.0


def test_dropping_resume_state_keeps_each_checkpoints_log_and_resumes_nothing(tmp_path, bert_dir, reviews):
    out = tmp_path / "r"
    result = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(out)))  # checkpoints at 2, 4
    log = (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text()
    assert drop_resume_state(out / "checkpoints") > 0
    for checkpoint in (out / "checkpoints").glob("checkpoint-*"):
        assert [p.name for p in checkpoint.iterdir()] == ["trainer_state.json"]
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text() == log
    assert last_complete_checkpoint(out / "checkpoints") is None  # nothing left to resume from
    assert load_classifier(result.model_dir) is not None  # the exported model is untouched
    assert drop_resume_state(out / "checkpoints") == 0  # twice: nothing more to free


def test_existing_checkpoints_are_not_overwritten_without_resume(tmp_path, bert_dir, reviews):
    cfg = _quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "r"), max_steps=2)
    run(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg)


def test_mlm_run_reports_perplexity(tmp_path_factory, tokenizer, reviews, tmp_path):
    folder = _tiny_dir(tmp_path_factory, tokenizer, "bert-mlm")
    result = run(_quick(task="mlm", model=folder, data=reviews, out=str(tmp_path / "mlm"), max_length=16))
    assert result.metrics["valid_perplexity"] > 1
    assert type(AutoModel.from_pretrained(result.model_dir)).__name__ == "BertModel"


def test_clm_run_exports_a_generating_model(tmp_path_factory, tokenizer, reviews, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = _tiny_dir(tmp_path_factory, tokenizer, "gpt2")
    result = run(_quick(task="clm", model=folder, data=reviews, out=str(tmp_path / "clm"), max_length=16,
                        schedule="progressive"))
    assert result.metrics["test_perplexity"] > 1
    lm = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert lm.generate(torch.tensor([[101, 2000]]), max_new_tokens=3, do_sample=False).shape == (1, 5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "translate"}, "unknown task"),
        ({"schedule": "cosine"}, "unknown rate schedule"),
        ({"lr_schedule": "step"}, "learning-rate schedule"),
        ({"long_doc": "median"}, "long-document pooling"),
        ({"stride": 20, "long_doc": "mean"}, "stride"),
        ({"data_driven": True, "rate": 0.0}, "--data-driven"),
        ({"data_driven": True, "granularity": "head"}, "--data-driven"),
        ({"data_driven": True, "rate": 0.5, "pattern": "every-other"}, "one or the other"),
        ({"pattern": "alternate"}, "unknown pattern"),
        ({"self_distill": True, "rate": 0.0}, "--rate > 0"),
        ({"granularity": "block"}, "granularity='block'"),
        ({"granularity": "head", "pattern": "every-other"}, "needs granularity='layer'"),
        ({"per_layer": "cubic"}, "per_layer profile"),
        ({"rate": 1.5}, "1.5"),
        ({"pooling": "max"}, "unknown pooling"),
    ],
)
def test_bad_training_options_are_explained(tmp_path, change, message):
    # model and data "x" do not exist: each option is rejected before anything is loaded
    with pytest.raises(ValueError, match=message):
        run(_quick(**{"task": "classification", "model": "x", "data": "x", "out": str(tmp_path), **change}))


# --------------------------------------------------------------------------- self-distillation, head lr


def test_kd_loss_is_zero_for_identical_predictions_and_positive_otherwise():
    teacher = torch.randn(4, 7, 5)
    assert kd_loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 7, 5, requires_grad=True)
    teacher.requires_grad_(True)
    loss = kd_loss(student, teacher, temperature=2.0)
    loss.backward()
    assert loss.item() > 0 and student.grad is not None and teacher.grad is None


def test_self_distill_runs_the_full_network_and_one_sampled_subnetwork(tmp_path):
    model = layerdrop.apply(make("bert"), rate=0.5, seed=2)
    calls = [0] * 4
    for i, layer in enumerate(layerdrop.find_layers(model).layers):
        layer.attention.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    record = _Record(model)
    trainer = LayerDropTrainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=_data(),
                               self_distill=True, callbacks=[record])
    trainer.train()
    assert model.layerdrop_state.draws == 3  # the full-network pass draws no mask
    assert calls == [3 + sum(m[i] for m in record.masks) for i in range(4)]


def test_head_lr_gives_the_head_its_own_learning_rate(tmp_path):
    clf = Classifier(make("bert").bert, num_labels=3)
    trainer = LayerDropTrainer(model=clf, args=_args(tmp_path, learning_rate=1e-4), train_dataset=_data(),
                               head_lr=1e-2)
    opt = trainer.create_optimizer()
    head_ids = {id(p) for p in clf.head.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == (1e-2 if in_head.pop() else 1e-4)


def test_head_lr_reaches_the_head_of_a_native_classifier_and_not_its_body(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))
    trainer = LayerDropTrainer(model=model, args=_args(tmp_path, learning_rate=1e-4), train_dataset=_data(),
                               head_lr=1e-2)
    fast = {id(p) for g in trainer.create_optimizer().param_groups if g["lr"] == 1e-2 for p in g["params"]}
    assert fast == {id(p) for p in model.classifier.parameters()}  # the pooler is BERT's own: base rate


# --------------------------------------------------------------------------- distillation from a teacher (issue 15)


def test_the_teacher_loss_is_task_plus_soft_targets_and_the_teacher_gets_no_gradient(tmp_path):
    teacher = make("bert").eval()
    student = layerdrop.prune(teacher, depth=2).train()
    trainer = LayerDropTrainer(model=student, args=_args(tmp_path), train_dataset=_data(), teacher=teacher,
                               distill_weight=0.7, task_weight=0.3, distill_temperature=2.0)
    batch = {"input_ids": torch.stack([r["input_ids"] for r in _data(4)]),
             "labels": torch.stack([r["labels"] for r in _data(4)])}
    loss = trainer.compute_loss(student, batch)
    out = student(**batch)
    with torch.no_grad():
        soft = teacher(input_ids=batch["input_ids"]).logits
    assert loss.item() == pytest.approx(0.3 * out.loss.item() + 0.7 * kd_loss(out.logits, soft, 2.0).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_a_student_moves_toward_its_teacher_and_the_teacher_is_unchanged(tmp_path):
    teacher = make("bert").eval()
    with torch.no_grad():
        teacher.classifier.weight.mul_(20)  # predictions a student visibly misses
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = layerdrop.prune(make("bert", seed=5), depth=2)  # another model, cut
    ids = torch.stack([r["input_ids"] for r in _data()])

    def gap():
        with torch.no_grad():
            return kd_loss(student.eval()(input_ids=ids).logits, teacher(input_ids=ids).logits).item()

    start = gap()
    LayerDropTrainer(model=student.train(), args=_args(tmp_path, max_steps=24), train_dataset=_data(), teacher=teacher,
                     task_weight=0.0).train()
    assert gap() < 0.5 * start
    assert not teacher.training and all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"self_distill": True}, "choose one"),
    ({"distill_temperature": 0.0}, "above 0"),
    ({"distill_weight": 0.0, "task_weight": 0.0}, "learn nothing"),
    ({"teacher_mode": "train"}, "teacher.eval()"),
])
def test_bad_distillation_settings_are_explained(tmp_path, kwargs, message):
    teacher = make("bert")
    if kwargs.pop("teacher_mode", "eval") == "eval":
        teacher.eval()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LayerDropTrainer(model=layerdrop.prune(teacher, depth=2), args=_args(tmp_path), train_dataset=_data(),
                         teacher=teacher, **kwargs)


def test_self_distill_run_trains_and_needs_a_rate(tmp_path, bert_dir, reviews):
    result = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "sd"),
                        rate=0.5, self_distill=True, max_steps=2, head_lr=1e-2))
    assert result.steps == 2
    with pytest.raises(ValueError, match="--rate > 0"):
        run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "x"), rate=0.0,
                   self_distill=True))


def test_freeze_embeddings_keeps_the_word_embeddings_and_trains_the_rest(tmp_path, bert_dir, reviews):
    from safetensors.torch import load_file

    run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "f"), freeze_embeddings=True,
               max_steps=2))
    before = load_file(f"{bert_dir}/model.safetensors")
    after = load_file(tmp_path / "f" / "model" / "model.safetensors")
    word, query = "embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(after[word], before[word])
    assert not torch.equal(after[query], before[query])


def test_native_pooling_gives_a_checkpoint_without_a_pooler_new_weights(tmp_path, tokenizer):
    from layerdrop.recipes.train import load_model

    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64))
    torch.nn.init.zeros_(model.pooler.dense.weight)  # as e5-small's converted folder has it
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = _quick(task="classification", model=str(tmp_path), data="x", out="y", pooling="native")
    native, _ = load_model(cfg, ["neg", "pos"], [])
    assert native.bert.pooler.dense.weight.abs().sum() > 0
    assert torch.equal(native.bert.pooler.dense.weight, load_model(cfg, ["neg", "pos"], [])[0].bert.pooler.dense.weight)


def test_a_run_without_layerdrop_drops_a_record_inherited_from_its_start(tmp_path, bert_dir, reviews):
    from layerdrop.core.apply import trained_with_layerdrop

    elastic = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "ld"), rate=0.5,
                         max_steps=1))
    assert trained_with_layerdrop(load_saved(str(elastic.model_dir)))
    plain = run(_quick(task="classification", model=str(elastic.model_dir), data=reviews, out=str(tmp_path / "p"),
                       rate=0.0, max_steps=1))
    assert not trained_with_layerdrop(load_saved(str(plain.model_dir)))


def test_freeze_embeddings_is_refused_for_a_model_built_from_scratch(tmp_path, reviews):
    with pytest.raises(ValueError, match="without the flag"):
        run(_quick(task="classification", model="bert-tiny", data=reviews, out=str(tmp_path / "x"),
                   freeze_embeddings=True))


def test_bf16_mixed_precision_trains_on_the_cpu_too(tmp_path, bert_dir, reviews):
    result = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "bf16"), bf16=True,
                        max_steps=2))
    assert result.steps == 2 and 0.0 <= result.metrics["test_accuracy"] <= 1.0


def test_run_or_reuse_reuses_a_finished_run_even_if_it_was_resumed(tmp_path, bert_dir, reviews):
    cfg = _quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "r"), max_steps=2)
    model_dir = run_or_reuse(cfg)
    meta_file = model_dir / "layerdrop.json"
    meta = json.loads(meta_file.read_text())
    meta["trained_with"]["resume"] = True  # as written by a run that was continued after a stop
    meta_file.write_text(json.dumps(meta))
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert run_or_reuse(cfg) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again
    moved = tmp_path / "moved"
    (tmp_path / "r").rename(moved)
    assert run_or_reuse(cfg.replace(out=str(moved))) == moved / "model"  # a moved run is reused
    cfg = cfg.replace(out=str(moved))
    with pytest.raises(FileExistsError, match=r"other settings \(lr 0.001 -> 0.0001\)"):
        run_or_reuse(cfg.replace(lr=1e-4))


def test_run_or_reuse_takes_a_setting_missing_from_an_older_record_as_its_default(tmp_path, bert_dir, reviews):
    cfg = _quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "r"), max_steps=2)
    model_dir = run_or_reuse(cfg)
    meta_file = model_dir / "layerdrop.json"
    meta = json.loads(meta_file.read_text())
    del meta["trained_with"]["pattern"]  # as written before the setting existed
    meta_file.write_text(json.dumps(meta))
    assert run_or_reuse(cfg) == model_dir
    with pytest.raises(FileExistsError, match="other settings"):
        run_or_reuse(cfg.replace(pattern="every-other"))


def test_callback_state_recreates_the_callback_with_its_check_interval():
    callback = LayerDropCallback(schedule="warmup", warmup_steps=7, check_every=13)
    again = LayerDropCallback(**callback.state()["args"])
    assert (again.schedule, again.warmup_steps, again.check_every) == ("warmup", 7, 13)


# --------------------------------------------------------------------------- settings (layerdrop.config.args)

# The `trained_with` record of a default run, as every version before the grouped settings wrote it.
_RECORD_BEFORE_GROUPS = {
    "task": "a", "model": "b", "data": "c", "out": "d", "rate": 0.2, "per_layer": "uniform", "granularity": "layer",
    "pattern": "random", "schedule": "constant", "rate_warmup_steps": 0, "pld_gamma": 0.001, "seed": 0,
    "epochs": 3.0, "max_steps": -1, "batch_size": 32, "grad_accum": 1, "lr": 5e-05, "weight_decay": 0.01,
    "lr_schedule": "linear", "warmup": 0.06, "max_grad_norm": 1.0, "dropout": None, "label_smoothing": 0.0,
    "head_lr": None, "self_distill": False, "distill_weight": 1.0, "distill_temperature": 1.0,
    "data_driven": False, "rate_lr": 0.005, "bf16": False, "max_length": 128, "pooling": "mean", "long_doc": None,
    "stride": 32, "train_rows": None, "eval_rows": None, "tokenizer": None, "vocab_size": 8000, "save_steps": 200,
    "logging_steps": 20, "resume": False, "evaluate": True, "progress": True,
}
_ADDED_SINCE = {"freeze_embeddings": False, "split_seed": None, "record_masks": False, "depths": None,
                "strategy": "top", "each_step": "all", "sandwich": 1, "teacher": None, "alpha_kd": 0.5,
                "alpha_task": 0.5, "temperature": 2.0, "alpha_hidden": 0.0, "depth_heads": None,
                "group_by_length": False}


def test_grouped_config_keeps_the_flat_record_of_earlier_runs():
    from layerdrop.recipes.train import _recorded

    cfg = TrainConfig(task="a", model="b", data="c", out="d")
    assert cfg.flat() == {**_RECORD_BEFORE_GROUPS, **_ADDED_SINCE, "rate": None}  # None: 0.2, or 0 with --depths
    recorded = {k: v for k, v in {**_RECORD_BEFORE_GROUPS, **_ADDED_SINCE}.items() if k not in ("progress",
                                                                                                "record_masks")}
    assert _recorded(cfg) == recorded  # what layerdrop.json records: the rate the run used


def test_from_flat_puts_each_setting_in_its_group_and_round_trips():
    cfg = TrainConfig.from_flat(task="clm", model="m", data="d", out="o", rate=0.5, lr=1e-4, max_length=64, seed=3)
    assert (cfg.layerdrop.rate, cfg.optim.lr, cfg.inputs.max_length, cfg.seed) == (0.5, 1e-4, 64, 3)
    assert TrainConfig.from_flat(**cfg.flat()) == cfg
    assert cfg.replace(lr=1e-3, resume=True).flat() == {**cfg.flat(), "lr": 1e-3, "resume": True}


def test_from_flat_names_an_unknown_setting():
    with pytest.raises(TypeError, match="'learning_rate'"):
        TrainConfig.from_flat(task="clm", model="m", data="d", out="o", learning_rate=1e-4)


@pytest.mark.parametrize("module", ["layerdrop.config.args", "layerdrop.recipes.steps"])
def test_the_settings_examples_hold(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_recorded_masks_of_a_resumed_run_match_an_uninterrupted_run(tmp_path, bert_dir, reviews):
    from layerdrop.core.masklog import MASK_FILE, load_mask_log

    cfg = _quick(task="classification", model=bert_dir, data=reviews, rate=0.5, out="", record_masks=True,
                 self_distill=True, evaluate=False)
    full = run(cfg.replace(out=str(tmp_path / "full")))
    out = tmp_path / "crashed"
    run(cfg.replace(out=str(out)))
    (out / "checkpoints" / "checkpoint-4" / "layerdrop-complete.json").unlink()  # as if it died while saving
    run(cfg.replace(out=str(out), resume=True))
    a, b = load_mask_log(full.out / MASK_FILE), load_mask_log(out / MASK_FILE)
    assert a.draw.tolist() == list(range(4)) and a.step.tolist() == [0, 1, 2, 3]  # one drawn forward per step
    assert torch.equal(a.keep, b.keep) and torch.equal(a.draw, b.draw) and torch.equal(a.step, b.step)
    assert "record_masks" not in json.loads((full.model_dir / "layerdrop.json").read_text())["trained_with"]


def test_record_masks_without_layerdrop_is_refused(tmp_path, bert_dir, reviews):
    with pytest.raises(ValueError, match="--record-masks .* needs --rate > 0"):
        run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "r"), rate=0.0,
                   record_masks=True))
    assert not (tmp_path / "r").exists()


def test_a_constant_learning_rate_schedule_warms_up_then_holds(tmp_path, bert_dir, reviews):
    result = run(_quick(task="classification", model=bert_dir, data=reviews, out=str(tmp_path / "r"), rate=0.5,
                        lr_schedule="constant", warmup=2, evaluate=False))
    state = json.loads((result.out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    rates = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert rates[0] < 1e-3 and rates[-2:] == [1e-3, 1e-3]


def test_a_presets_classifier_is_the_same_model_in_every_run():
    """A from-scratch preset's pooled head is drawn under --seed, like its body: the same command gives
    the same model (and logs the same loss) run after run."""
    from layerdrop.config.args import TrainConfig
    from layerdrop.recipes.train import load_model

    cfg = TrainConfig.from_flat(task="classification", model="bert-tiny", data="x", out="o", seed=3)
    texts = [f"a {w} film, number {i}" for i in range(40) for w in ("good", "bad")]
    first, second = (load_model(cfg, ["neg", "pos"], texts)[0] for _ in range(2))
    torch.manual_seed(123)  # whatever the global RNG holds between runs
    third = load_model(cfg, ["neg", "pos"], texts)[0]
    for model in (second, third):
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values(),
                                                      strict=True))


def test_group_by_length_batches_training_rows_of_similar_length_and_scores_in_order(tmp_path):
    from layerdrop.config.args import OptimArgs
    from layerdrop.recipes.steps import training_arguments

    args = training_arguments(OptimArgs(group_by_length=True, batch_size=4), tmp_path, seed=5, save_steps=2,
                              logging_steps=1, progress=False, layerdrop_on=False)
    lengths = [int(n) for n in torch.randint(2, 64, (64,), generator=torch.Generator().manual_seed(0))]
    rows = [{"input_ids": [1] * n, "labels": 0} for n in lengths]
    trainer = LayerDropTrainer(model=make("bert"), args=args, train_dataset=rows)
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(64))
    assert list(trainer._get_eval_sampler(rows)) == list(range(64))  # scored in the rows' order, as labels are

    def padded(order):  # tokens in batches of 4, each padded to its longest row
        return sum(4 * max(lengths[i] for i in order[k:k + 4]) for k in range(0, 64, 4))

    assert padded(order) < 0.8 * padded(list(range(64)))
