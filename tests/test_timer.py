"""One timer for every latency: the device is synchronised around what is timed (issue 29, defect 5),
and scoring or timing never switches the caller's model (defect 4)."""

from __future__ import annotations

import pytest
import torch

import layerdrop
from conftest import make, tokens
from layerdrop.evaluation import timer
from layerdrop.evaluation.measure import interleaved_latency_ms, latency_ms, perplexity


@pytest.fixture
def fake_cuda(monkeypatch):
    """Every model is "on" a CUDA device whose synchronize records its calls."""
    events: list[str] = []
    monkeypatch.setattr(timer, "device_of", lambda on: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    return events


def test_the_timer_waits_for_the_device_before_starting_and_before_stopping(fake_cuda):
    ms = timer.time_ms(lambda: fake_cuda.append("work"), torch.device("cuda", 0))
    assert fake_cuda == ["sync", "work", "sync"] and ms >= 0


def test_on_the_cpu_nothing_is_synchronised(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    timer.time_ms(lambda: None, make("bert"))
    assert calls == [] and timer.device_of(make("bert")) == torch.device("cpu")


@pytest.mark.parametrize("measure", ["latency_ms", "interleaved_latency_ms"])
def test_every_latency_is_timed_with_the_device_synchronised(fake_cuda, measure):
    model = make("bert").eval()
    batch = {"input_ids": tokens()}
    if measure == "latency_ms":
        latency_ms(model, batch, reps=3, warmup=1)
    else:
        interleaved_latency_ms([(model, (0, 1)), (model, (0, 1, 2, 3))], batch, reps=3)  # 4 rounds of 2
    forwards = 3 if measure == "latency_ms" else 8
    assert fake_cuda == ["sync"] * 2 * forwards


def test_the_servers_profiles_are_timed_with_the_device_synchronised(fake_cuda, minilm_tokenizer, tmp_path):
    from conftest import save_tiny_classifier
    from layerdrop.config.recipes import ServeConfig
    from layerdrop.serving.engine import profile_depths
    from layerdrop.serving.served import load_served

    served = load_served(ServeConfig(model=save_tiny_classifier(tmp_path, minilm_tokenizer), depths="2,1"))
    profile_depths(served, reps=2)
    lengths = len({min(n, served.max_length) for n in (8, 32, 96)})
    assert fake_cuda == ["sync"] * (2 * 2 * lengths * 2)  # 2 depths x lengths x 2 reps, each between two syncs


@pytest.mark.parametrize("measure", ["latency", "perplexity"])
def test_measuring_never_switches_the_callers_model(measure):
    model = layerdrop.apply(make("gpt2"), rate=0.5)
    ids = tokens()
    run = (lambda m: latency_ms(m, {"input_ids": ids}, reps=1)) if measure == "latency" else \
        (lambda m: perplexity(m, [{"input_ids": ids[0], "labels": ids[0]}], lambda rows: {
            "input_ids": torch.stack([r["input_ids"] for r in rows]),
            "labels": torch.stack([r["labels"] for r in rows])}))
    with pytest.raises(ValueError, match="eval mode"):
        run(model.train())  # in training mode LayerDrop would drop layers while it is measured
    assert model.training  # and it is still the caller's mode
    run(model.eval())
    assert not any(m.training for m in model.modules())
