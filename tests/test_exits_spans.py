"""Early exit for question answering: each window leaves at its own depth, a question is harmful only when its F1
falls, and `layerdrop exits` calibrates, measures and records a question-answering model's exits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering

from conftest import TINY, padded_batch, write_squad
from layerdrop.config.recipes import ExitsConfig
from layerdrop.core.depths import record_depths
from layerdrop.cut.prune import view
from layerdrop.errors import InputError
from layerdrop.exits import (
    RULES,
    ExitRule,
    Spans,
    early_exit_spans,
    exit_index,
    exit_predict,
    exit_spans,
    exits_of,
    lookup,
    plan,
    recorded_exits,
    resumable,
    span_sureness,
)
from layerdrop.exits.calibrate import calibrate_rule, harmful_counts, outcome
from layerdrop.models.loading import load_saved

NESTED = {1: (0,), 2: (0, 1), 4: (0, 1, 2, 3)}


def _qa_model(name: str) -> torch.nn.Module:
    config = TINY[name]().config
    config.num_labels = 2  # a span head: start and end
    torch.manual_seed(0)
    return AutoModelForQuestionAnswering.from_config(config).eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_exit_gives_the_span_logits_the_model_gives_at_that_depth(name):
    model, batch = _qa_model(name), padded_batch()
    out = early_exit_spans(model, batch, plan(NESTED, can_resume=resumable(model)))
    attended = batch["attention_mask"].bool()
    for e, keep in enumerate(NESTED.values()):
        with torch.no_grad():
            cut = view(model, keep=keep)(**batch)
        for i, ends in enumerate((cut.start_logits, cut.end_logits)):
            torch.testing.assert_close(out.every[:, e, i][attended], ends[attended], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_window_leaves_where_its_rule_fires_with_that_exits_logits(name):
    model, batch = _qa_model(name), padded_batch()
    stages = plan(NESTED, can_resume=resumable(model))
    every = early_exit_spans(model, batch, stages).every  # (B, E, 2, T)
    mask, rule = batch["attention_mask"], RULES["max-prob"]
    sure = torch.stack([span_sureness(every[:, :e + 1], mask, rule) for e in range(len(stages))], 1)  # (B, E)
    threshold = float(sure[:, 0].median())  # about half the windows leave at the first exit
    out = early_exit_spans(model, batch, stages, rule, threshold)
    expected = exit_index(sure, threshold)
    assert 0 < int((expected == 0).sum()) < len(expected)
    assert out.depth.tolist() == [list(NESTED)[e] for e in expected.tolist()]
    attended = mask.bool()
    for row, e in enumerate(expected.tolist()):
        m = attended[row]
        torch.testing.assert_close(out.start_logits[row][m], every[row, e, 0][m], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.end_logits[row][m], every[row, e, 1][m], atol=1e-5, rtol=1e-4)


def test_padding_every_remaining_window_has_is_trimmed_and_the_answers_stay_those_of_the_cut_model():
    model, batch = _qa_model("bert"), padded_batch()  # lengths 9, 5, 3, 7, 9, 4
    long_first = ExitRule("long-first", lambda probs: torch.full((len(probs),), float(probs.shape[-1])), (7.0,),
                          "windows of 7 tokens or more leave at the first exit")
    out = early_exit_spans(model, batch, plan(NESTED), long_first, 7.0)
    assert out.depth.tolist() == [1, 4, 4, 1, 1, 4]
    assert out.every[[1, 2, 5], 1, :, 5:].isnan().all()  # the rest had at most 5 tokens: 4 columns trimmed
    attended = batch["attention_mask"].bool()
    for e, keep in enumerate(NESTED.values()):
        with torch.no_grad():
            cut = view(model, keep=keep)(**batch)
        rows = [0, 3, 4] if e == 0 else [1, 2, 5]
        for row in rows:
            m = attended[row]
            torch.testing.assert_close(out.every[row, e, 0][m], cut.start_logits[row][m], atol=1e-5, rtol=1e-4)
            if e in (0, 2):  # the exit it left by
                torch.testing.assert_close(out.end_logits[row][m], cut.end_logits[row][m], atol=1e-5, rtol=1e-4)
                assert e == 0 or out.start_logits[row, 5:].isinf().all()  # trimmed columns hold no score


def test_a_layer_runs_only_for_the_windows_that_reach_it():
    model, batch = _qa_model("bert"), padded_batch()
    stages = plan(NESTED)
    every = early_exit_spans(model, batch, stages).every
    sure = span_sureness(every[:, :1], batch["attention_mask"], RULES["entropy"])
    threshold = float(sure.median())
    seen: list[int] = []
    hook = model.bert.encoder.layer[3].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        out = early_exit_spans(model, batch, stages, RULES["entropy"], threshold)
    finally:
        hook.remove()
    assert seen == [int((out.depth == 4).sum())] and seen[0] < len(out.depth)


def test_a_window_is_sure_only_when_both_its_start_and_its_end_are():
    logits = torch.full((2, 1, 2, 4), -10.0)  # (B=2, E=1, 2, T=4)
    logits[0, 0, 0, 1] = logits[0, 0, 1, 2] = 10.0  # window 0: a sharp start and a sharp end
    logits[1, 0, 0, 1] = 10.0  # window 1: a sharp start, a flat end
    logits[1, 0, 1] = 0.0
    mask = torch.ones(2, 4, dtype=torch.long)
    for name in ("max-prob", "entropy"):
        sure = span_sureness(logits, mask, RULES[name])
        assert sure[0] > sure[1], name
    assert span_sureness(logits, mask, RULES["max-prob"])[1] == pytest.approx(0.25, abs=1e-3)  # the flat end


def test_padding_does_not_change_a_windows_sureness():
    logits = torch.randn(1, 2, 2, 5, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([logits, torch.full((1, 2, 2, 3), 7.0)], -1)  # padding columns with large logits
    mask = torch.tensor([[1] * 5 + [0] * 3])
    for name in RULES:
        assert torch.allclose(span_sureness(padded, mask, RULES[name]),
                              span_sureness(logits, torch.ones(1, 5, dtype=torch.long), RULES[name])), name


def _spans() -> Spans:
    """Two questions, one window each, two exits: question 0 is answered right at both exits; question 1 only at
    full depth, where its first exit is surer than question 0's."""
    context = "alpha beta gamma delta"
    offsets = [None, (0, 5), (6, 10), (11, 16), (17, 22)]  # CLS, then the four words
    logits = torch.full((2, 2, 2, 5), -5.0)  # (U, E, 2, T)
    logits[0, :, :, 1] = 5.0  # "alpha" at both exits
    logits[1, 0, :, 2] = 9.0  # "beta" at the first exit, very sure
    logits[1, 1, :, 3] = 5.0  # "gamma" at full depth
    return Spans(logits, torch.ones(2, 5, dtype=torch.long), (0, 1), (offsets, offsets), (context, context),
                 (("alpha",), ("gamma",)))


def test_a_question_is_harmful_only_when_its_f1_falls_below_full_depths():
    spans = _spans()
    assert spans.quality(torch.tensor([1, 1])).tolist() == [1.0, 1.0]
    assert spans.quality(torch.tensor([0, 0])).tolist() == [1.0, 0.0]
    rule = RULES["max-prob"]
    counts = harmful_counts(spans, rule)
    sure = spans.sureness(rule)[:, 0]  # (U,)
    assert counts == [int(t <= float(sure[1])) for t in rule.grid]  # harmful once question 1 may leave
    result = outcome(spans, rule, float(sure[1]), layers=(2, 4))
    # only question 1 is sure enough to leave early (question 0 is less sure): 2 layers and 4
    assert (result.accuracy, result.full_accuracy, result.harmful, result.mean_layers) == (0.5, 1.0, 0.5, 3.0)


def test_calibration_keeps_a_question_at_full_depth_where_its_exit_would_lose_f1():
    spans = _spans()
    rule = RULES["max-prob"]
    strict, loose = calibrate_rule(spans, rule, max_drops=[0.3, 0.9], confidence=0.5)
    # of 2 questions, 0 harmful rejects "more than 30 % harmful" at level 0.5 (p = 0.49), 1 harmful does not
    assert strict is not None and strict > float(spans.sureness(rule)[1, 0])
    assert loose is not None and loose <= float(spans.sureness(rule)[1, 0])  # 1 harmful of 2 is within 90 %


def _saved_qa(folder, tokenizer, depths=(1, 2)) -> str:
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                                num_attention_heads=2, intermediate_size=64))
    record_depths(model.config, {d: tuple(range(d)) for d in depths}, "top")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_layerdrop_exits_calibrates_a_qa_model_on_f1_and_exit_spans_uses_the_record(tmp_path, minilm_tokenizer):
    from layerdrop.recipes.exits import run_exits

    model_dir = _saved_qa(tmp_path / "model", minilm_tokenizer)
    data = str(write_squad(tmp_path / "squad.json"))
    cfg = ExitsConfig(model=model_dir, data=data, out=str(tmp_path / "exits"), max_drop=50, more_drops="90",
                      confidence=0.5, max_length=64, progress=False, latency_reps=1, timing_batches=1)
    result = run_exits(cfg)
    assert [s.depth for s in result.stages] == [1, 2, 4] and all(s.resumes for s in result.stages[1:])
    assert "| F1 |" in result.table and "windows leaving at" in result.table
    saved = json.loads((tmp_path / "exits" / "exits.json").read_text())
    assert saved["recorded"]["rule"] == result.recorded.rule
    assert all(0 <= r["test"]["accuracy"] <= 1 for r in saved["rules"])
    assert "the F1 early exit loses" in (tmp_path / "exits" / "exits.md").read_text()
    model = load_saved(model_dir).eval()
    exits = recorded_exits(model.config)
    assert exits == result.recorded and exits.depths == (1, 2, 4)
    batch = dict(minilm_tokenizer(["What is the capital of France?"], ["Paris is the capital of France."],
                                  return_tensors="pt"))
    out = exit_spans(model, batch)
    expected = early_exit_spans(model, batch, plan(exits_of(model, exits.depths)), lookup(exits.rule),
                                exits.threshold())
    assert out.depth.tolist() == expected.depth.tolist()
    torch.testing.assert_close(out.start_logits, expected.start_logits)
    with pytest.raises(InputError, match="for question answering: exit_spans"):
        exit_predict(model, batch)


def test_exit_spans_without_a_record_says_how_to_calibrate():
    with pytest.raises(InputError, match="run layerdrop exits MODEL --data DATA"):
        exit_spans(_qa_model("bert"), padded_batch())


def test_span_exits_refuse_a_model_without_a_span_head_or_in_training_mode():
    with pytest.raises(InputError, match="qa_outputs head"):
        early_exit_spans(TINY["bert"]().eval(), padded_batch(), plan(NESTED))
    with pytest.raises(Exception, match="eval"):
        early_exit_spans(_qa_model("bert").train(), padded_batch(), plan(NESTED))


def test_no_rule_runs_every_window_to_full_depth():
    model, batch = _qa_model("bert"), padded_batch()
    out = early_exit_spans(model, batch, plan(NESTED))
    assert out.depth.tolist() == [4] * 6 and out.layers_run.tolist() == [4] * 6
    assert not math.isnan(float(out.every[0, 0, 0, 0]))
