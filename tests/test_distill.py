"""`layerdrop distill`: a cut or given student learns a frozen teacher, for every task; resumable; bad input named."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, BertConfig, BertModel

from conftest import make, tokens, write_reviews
from layerdrop import cli
from layerdrop.config.args import DistillConfig, TrainConfig, build
from layerdrop.models.loading import load_saved
from layerdrop.recipes.distill import CACHE_FILE, run, run_or_reuse
from layerdrop.recipes.train import run_or_reuse as train_or_reuse
from layerdrop.training.losses import cosine_loss, hidden_loss, hidden_pairs
from layerdrop.training.trainer import LayerDropTrainer

QUICK = dict(batch_size=8, max_steps=4, save_steps=2, logging_steps=1, max_length=32, progress=False, warmup=0.0,
             lr=1e-3)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews(tmp_path_factory.mktemp("data") / "reviews.csv")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, minilm_tokenizer, reviews):
    """A 4-layer BERT classifier trained by `layerdrop train` on ``reviews``."""
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    out = tmp_path_factory.mktemp("teacher")
    return str(train_or_reuse(TrainConfig.from_flat(task="classification", model=str(folder), data=reviews,
                                                    out=str(out), **{**QUICK, "max_steps": 8})))


def _config(teacher, data, out, **kw):
    return build(DistillConfig, {"teacher": str(teacher), "data": str(data), "out": str(out), **QUICK, **kw})


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the losses


def test_hidden_pairs_match_each_kept_layer_but_the_last_to_its_teacher_layer():
    assert hidden_pairs((0, 3)) == ((1, 1),)
    assert hidden_pairs((1, 2, 5)) == ((1, 2), (2, 3))
    assert hidden_pairs((4,)) == ()


def test_cosine_and_hidden_losses_are_zero_on_the_teachers_states_and_ignore_padding():
    t = torch.randn(2, 5, 8)
    s = t * 3.0  # same directions: no cosine or normalised distance
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert cosine_loss(s, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_loss([s, s], [t, t], [(0, 1)], mask).item() == pytest.approx(0.0, abs=1e-6)
    noisy = s.clone()
    noisy[0, 3:] = torch.randn(2, 8)  # padding only
    assert cosine_loss(noisy, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(noisy, t).item() > 0.01


def test_the_teacher_loss_adds_the_weighted_hidden_state_terms(tmp_path):
    teacher = make("bert").eval()
    import layerdrop

    student = layerdrop.prune(teacher, depth=2).train()
    pairs = hidden_pairs((0, 3))
    ids = tokens(batch=4, length=6, seed=3)
    batch = {"input_ids": ids, "labels": torch.tensor([0, 1, 2, 0])}
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    plain = LayerDropTrainer(model=student, args=args, teacher=teacher, task_weight=0.0, distill_weight=0.0,
                             cos_weight=1.0)
    both = LayerDropTrainer(model=student, args=args, teacher=teacher, task_weight=0.0, distill_weight=0.0,
                            cos_weight=1.0, hidden_weight=2.0, hidden_layers=pairs)
    student.eval()  # no dropout: the two losses see the same forward
    with torch.no_grad():
        s = student(input_ids=ids, output_hidden_states=True).hidden_states
        t = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        student.training = True  # compute_loss takes the teacher's path only in training
        cos = plain.compute_loss(student, batch).item()
        total = both.compute_loss(student, batch).item()
    assert cos == pytest.approx(cosine_loss(s[-1], t[-1]).item(), rel=1e-5)
    assert total == pytest.approx(cos + 2.0 * hidden_loss(s, t, pairs).item(), rel=1e-5)


# --------------------------------------------------------------------------- the recipe


def test_a_cut_student_learns_from_its_teacher_and_exports_a_plain_checkpoint(teacher, reviews, tmp_path):
    before = _digest(teacher)
    result = run(_config(teacher, reviews, tmp_path / "d", depth=2))
    assert result.kept == (0, 3) and result.steps == 4
    assert set(result.metrics) == {"valid_accuracy", "test_accuracy"} == set(result.teacher_metrics)
    meta = json.loads((result.model_dir / "layerdrop.json").read_text())
    assert meta["teacher"] == teacher and meta["kept_layers"] == [0, 3]
    assert meta["loss"] == {"alpha_kd": 0.5, "alpha_task": 0.5, "temperature": 2.0, "alpha_cos": 0.0,
                            "alpha_hidden": 0.0}
    assert meta["distilled_with"]["depth"] == 2 and meta["pruning"]["strategy"] == "every-other"
    encoder = AutoModel.from_pretrained(result.model_dir)  # vanilla transformers
    assert encoder.config.num_hidden_layers == 2
    assert _digest(teacher) == before  # the teacher is never changed
    assert not (tmp_path / "d" / CACHE_FILE).exists()  # 32 rows seen of 64: running the teacher is cheaper
    student, initial = load_saved(str(result.model_dir)), load_saved(str(tmp_path / "d" / "initial-student"))
    assert not torch.equal(student.head.weight, initial.head.weight)  # it trained


def test_cached_teacher_logits_train_the_same_student_as_running_the_teacher(teacher, reviews, tmp_path):
    cached = run(_config(teacher, reviews, tmp_path / "cached", depth=2, max_steps=10))  # 80 rows seen of 64
    live = run(_config(teacher, reviews, tmp_path / "live", depth=2, max_steps=10, cache_teacher=False))
    assert (tmp_path / "cached" / CACHE_FILE).is_file() and not (tmp_path / "live" / CACHE_FILE).exists()
    a, b = load_saved(str(cached.model_dir)).state_dict(), load_saved(str(live.model_dir)).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_finished_run_is_reused_an_unfinished_one_resumes_and_other_settings_are_refused(teacher, reviews, tmp_path):
    cfg = _config(teacher, reviews, tmp_path / "whole", depth=2, dropout=0.1)
    whole = run_or_reuse(cfg)
    stamp = (whole / "layerdrop.json").stat().st_mtime_ns
    assert run_or_reuse(cfg) == whole and (whole / "layerdrop.json").stat().st_mtime_ns == stamp

    crashed = cfg.replace(out=str(tmp_path / "crashed"))
    run(crashed)
    shutil.rmtree(tmp_path / "crashed" / "model")
    (tmp_path / "crashed" / "checkpoints" / "checkpoint-4" / "layerdrop-complete.json").unlink()  # died saving it
    earlier = tmp_path / "crashed" / "checkpoints" / "checkpoint-2" / "layerdrop-complete.json"
    earlier.write_text(json.dumps({"global_step": 2, "train_seconds": 1000.0}))  # its first invocation's time
    resumed = run_or_reuse(crashed)
    assert json.loads((resumed / "layerdrop.json").read_text())["train_seconds"] >= 1000.0  # counted
    a, b = load_saved(str(whole)).state_dict(), load_saved(str(resumed)).state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)
    with pytest.raises(ValueError, match="alpha_kd 0.5 -> 1.0"):
        run_or_reuse(cfg.replace(alpha_kd=1.0))


def test_the_teacher_cache_and_the_cut_are_reused_only_for_the_same_teacher_data_and_encoding(
        teacher, reviews, tmp_path):
    out = tmp_path / "d"
    first = run(_config(teacher, reviews, out, depth=2, max_steps=10))
    assert first.cache_seconds > 0 and not first.cache_reused

    def not_started():  # a run that stopped before its first checkpoint keeps no claim on its folder
        shutil.rmtree(out / "model")
        shutil.rmtree(out / "checkpoints")

    not_started()
    again = run(_config(teacher, reviews, out, depth=2, max_steps=10))
    assert again.cache_reused and again.cache_seconds == first.cache_seconds  # same rows: reused, its cost counted
    assert json.loads((out / "model" / "layerdrop.json").read_text())["teacher_cache_seconds"] == round(
        first.cache_seconds, 1)
    not_started()
    shorter = run(_config(teacher, reviews, out, depth=1, max_length=4, max_steps=10))
    assert not shorter.cache_reused and shorter.cache_seconds > 0  # other encoding and depth: made again
    assert shorter.kept == (0,)


def test_a_given_student_is_matched_to_the_teacher_layers_it_was_cut_from(teacher, reviews, tmp_path):
    assert cli.main(["prune", teacher, "--keep", "1,2", "--out", str(tmp_path / "cut")]) == 0
    result = run(_config(teacher, reviews, tmp_path / "d", student=str(tmp_path / "cut"), alpha_hidden=1.0,
                         alpha_cos=1.0))
    assert result.kept == (1, 2) and not (tmp_path / "d" / CACHE_FILE).exists()  # hidden states: no cache


def test_a_distilled_student_teaches_its_own_cut_in_its_own_layer_indices(teacher, reviews, tmp_path):
    first = run(_config(teacher, reviews, tmp_path / "three", depth=3))
    again = run(_config(first.model_dir, reviews, tmp_path / "two", depth=2, alpha_hidden=1.0, cache_teacher=False))
    assert first.kept == (0, 2, 3) and again.kept == (0, 2)  # of the 3-layer teacher's layers
    meta = json.loads((again.model_dir / "layerdrop.json").read_text())
    assert meta["pruning"]["kept_layers"] == [0, 3]  # of the first model's
    assert "layerdrop_settings" not in json.loads((again.model_dir / "config.json").read_text())


def test_a_language_model_heals_its_cut_by_logit_distillation(tiny_lm_dir, tmp_path):
    text = tmp_path / "text.csv"
    text.write_text("text\n" + "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(200)))
    code = cli.main(["distill", tiny_lm_dir, "--data", str(text), "--depth", "2", "--alpha-task", "0",
                     "--out", str(tmp_path / "heal"), "--max-steps", "3", "--batch-size", "4", "--max-length", "32",
                     "--no-progress", "--eval-rows", "20"])
    assert code == 0
    meta = json.loads((tmp_path / "heal" / "model" / "layerdrop.json").read_text())
    assert meta["task"] == "clm" and meta["kept_layers"] == [0, 3]
    assert set(meta["metrics"]) >= {"test_perplexity"} and set(meta["teacher_metrics"]) >= {"test_perplexity"}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "heal" / "model").config.n_layer == 2
    assert cli.main(["distill", tiny_lm_dir, "--data", str(text), "--depth", "2", "--long-doc", "mean",
                     "--out", str(tmp_path / "o")]) == 2  # a setting the teacher's task rejects


def test_transformers_placeholder_labels_match_any_data_with_as_many_classes(teacher, reviews, tmp_path):
    from transformers import BertForSequenceClassification

    from layerdrop.training.teachers import label_names

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8, num_labels=2))
    assert label_names(model, str(tmp_path)) is None
    model.config.id2label = {0: "neg", 1: "pos"}
    assert label_names(model, str(tmp_path)) == ["neg", "pos"]


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def other_tokenizer_student(tmp_path_factory):
    """A 2-layer classifier trained on a preset with its own tokenizer."""
    data = write_reviews(tmp_path_factory.mktemp("d") / "r.csv")
    out = tmp_path_factory.mktemp("other")
    return str(train_or_reuse(TrainConfig.from_flat(task="classification", model="bert-tiny", data=data, out=str(out),
                                                    vocab_size=300, **{**QUICK, "max_steps": 1})))


@pytest.mark.parametrize("case, message", [
    ("both", "exactly one of them"),
    ("neither", "exactly one of them"),
    ("temperature", "--temperature must be above 0"),
    ("weights", "every loss weight is 0"),
    ("negative", "cannot be negative: alpha_kd"),
    ("not a folder", "is not a model folder"),
    ("missing", "no model folder"),
    ("too deep", "deeper than the teacher"),
    ("labels", "are not the data's"),
    ("tokenizer", "another tokenizer than the teacher"),
])
def test_bad_input_is_named(case, message, teacher, reviews, other_tokenizer_student, tmp_path, capsys):
    args = ["distill", teacher, "--data", reviews, "--out", str(tmp_path / "o"), "--max-steps", "1", "--no-progress"]
    extra = {"both": ["--depth", "2", "--student", teacher], "neither": [],
             "temperature": ["--depth", "2", "--temperature", "0"],
             "weights": ["--depth", "2", "--alpha-kd", "0", "--alpha-task", "0"],
             "negative": ["--depth", "2", "--alpha-kd", "-1"],
             "too deep": ["--depth", "5"], "tokenizer": ["--student", other_tokenizer_student],
             "labels": ["--depth", "2"]}.get(case, ["--depth", "2"])
    if case == "not a folder":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    if case == "missing":
        args[1] = str(tmp_path / "nowhere")
    if case == "labels":
        args[3] = write_reviews(tmp_path / "other-labels.csv", "good", "bad")
    assert cli.main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_a_student_deeper_than_its_teacher_is_refused(teacher, reviews, tmp_path, capsys):
    assert cli.main(["prune", teacher, "--keep", "0,1", "--out", str(tmp_path / "small")]) == 0
    args = ["distill", str(tmp_path / "small"), "--data", reviews, "--student", teacher, "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--no-progress"]
    assert cli.main(args) == 2
    assert "deeper than its teacher" in capsys.readouterr().err


def test_a_distilled_student_drops_the_heads_its_teacher_fitted_on_other_weights(teacher, reviews, tmp_path):
    from torch import nn

    from layerdrop.models.loading import DEPTH_HEADS_FILE, save_classifier

    with_heads = tmp_path / "teacher-with-heads"
    shutil.copytree(teacher, with_heads)
    model = load_saved(str(with_heads))
    model.heads["0"] = nn.Linear(model.head.in_features, model.head.out_features)
    save_classifier(model, with_heads)
    result = run(_config(with_heads, reviews, tmp_path / "d", depth=2))  # the cut (0, 3) keeps head "0"
    assert len(load_saved(str(tmp_path / "d" / "initial-student")).heads) == 1
    assert not (result.model_dir / DEPTH_HEADS_FILE).exists() and len(load_saved(str(result.model_dir)).heads) == 0
