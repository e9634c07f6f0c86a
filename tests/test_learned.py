"""Data-driven pruning: learned per-layer rates (layerdrop.core.learned) and the data-driven strategy."""

import dataclasses

import pytest
import torch
from torch import nn

import layerdrop
from conftest import NUM_LAYERS, logits, make, tokens
from layerdrop.core.apply import scale_rates
from layerdrop.core.learned import LEARNED_KEY, RateLearner, attach_rate_learner, capped_rates, recorded_learned_rates
from layerdrop.cut.strategies import choose, data_driven_choice


def test_capped_rates_average_the_mean_and_respect_the_cap():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 12, (1,), generator=g))
        logits = 20 * torch.randn(n, generator=g, dtype=torch.float64)  # some weights underflow to ~0
        mean = float(torch.rand(1, generator=g)) * 0.8
        rates = capped_rates(logits, mean, 0.8)
        assert float(rates.mean()) == pytest.approx(mean, abs=1e-9)
        assert float(rates.max()) <= 0.8 + 1e-12 and float(rates.min()) >= 0
    order = capped_rates(torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64).log(), 0.4, 0.9)
    assert order[0] < order[1] < order[2]


def test_learned_rates_start_uniform_so_training_starts_as_plain_layerdrop(arch_name):
    ids = tokens(batch=2, length=5)
    plain = layerdrop.apply(make(arch_name), rate=0.4, seed=3).train()
    learned = layerdrop.apply(make(arch_name), rate=0.4, seed=3).train()
    learner = attach_rate_learner(learned)
    assert recorded_learned_rates(learned) == pytest.approx((0.4,) * NUM_LAYERS)
    for _ in range(4):
        torch.manual_seed(0)  # the models' own dropout
        expected = logits(plain, ids)
        torch.manual_seed(0)
        got = logits(learned, ids)
        assert learned.layerdrop_state.mask.keep == plain.layerdrop_state.mask.keep
        torch.testing.assert_close(got, expected)
    learner.policy_loss(got.sum()).backward()
    assert learner.w2.grad is not None  # the recorded decisions carry the scorer's gradient


def test_scorer_is_not_part_of_the_model():
    model = layerdrop.apply(make("bert"), rate=0.3)
    keys = set(model.state_dict())
    learner = attach_rate_learner(model)
    assert set(model.state_dict()) == keys
    assert not any(p is q for p in model.parameters() for q in learner.parameters())


class _Shift(nn.Module):
    """A frozen block that adds a constant vector: the loss decides whether it is wanted."""

    def __init__(self, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


class _Shifts(nn.Module):
    def __init__(self, shifts: torch.Tensor) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Shift(s) for s in shifts])
        self.config = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_learned_rates_drop_the_harmful_layer_most_and_keep_the_helpful_ones():
    g = torch.Generator().manual_seed(0)
    shifts = torch.randn(4, 8, generator=g)  # (L, H)
    model = layerdrop.apply(_Shifts(shifts), rate=0.25, layers="blocks", seed=1).train()
    learner = attach_rate_learner(model, hidden_size=8, seed=0)
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.05)
    for _ in range(150):
        x = torch.randn(16, 3, 8, generator=g)  # (B, T, H)
        target = x + shifts[0] + shifts[1] + shifts[3]  # block 2 is not wanted
        loss = ((model(x) - target) ** 2).mean()
        optimizer.zero_grad()
        learner.policy_loss(loss).backward()  # the blocks are frozen: only the scorer learns
        optimizer.step()
    rates = recorded_learned_rates(model)
    assert max(range(4), key=rates.__getitem__) == 2
    assert sum(rates) / 4 == pytest.approx(0.25, abs=1e-6)
    assert data_driven_choice(rates, 3).kept == (0, 1, 3)


def test_data_driven_choice_keeps_the_lowest_rates_with_ties_to_the_lower_layer():
    choice = data_driven_choice([0.3, 0.1, 0.5, 0.1, 0.2], 3)
    assert choice.kept == (1, 3, 4) and choice.strategy == "data-driven"
    assert choice.record["learned_rates"] == [0.3, 0.1, 0.5, 0.1, 0.2]
    assert choice.scores == pytest.approx((0.7, 0.9, 0.5, 0.9, 0.8))
    assert data_driven_choice([0.2, 0.2, 0.2], 2).kept == (0, 1)
    with pytest.raises(ValueError, match="from 1 to 3"):
        data_driven_choice([0.2, 0.2, 0.2], 4)


def test_data_driven_strategy_without_learned_rates_says_how_to_get_them():
    with pytest.raises(ValueError, match="--data-driven"):
        choose("data-driven", make("gpt2"), 2)


def test_recorded_rates_survive_saving_and_are_cut_by_pruning(tmp_path):
    model = layerdrop.apply(make("gpt2"), rate=0.5)
    learner = attach_rate_learner(model)
    with torch.no_grad():
        learner.mean_score.copy_(torch.tensor([0.0, 2.0, -1.0, 1.0]))
    rates = layerdrop.core.learned.record_learned_rates(model)
    assert rates.index(max(rates)) == 1
    layerdrop.remove(model).save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert recorded_learned_rates(reloaded) == pytest.approx(rates, abs=1e-6)
    assert choose("data-driven", reloaded, 2).kept == (0, 2)
    small = layerdrop.prune(reloaded, keep=[0, 2])
    assert getattr(small.config, LEARNED_KEY) == pytest.approx([rates[0], rates[2]])


def test_learn_rates_explains_what_it_needs():
    with pytest.raises(ValueError, match="apply"):
        attach_rate_learner(make("bert"))
    with pytest.raises(ValueError, match="granularity"):
        attach_rate_learner(layerdrop.apply(make("bert"), rate=0.2, granularity="sublayer"))
    with pytest.raises(ValueError, match="pattern='random'"):
        attach_rate_learner(layerdrop.apply(make("bert"), rate=0.2, pattern="every-other"))
    with pytest.raises(ValueError, match="mean rate"):
        RateLearner(4, 8, 0.0)


def test_eval_and_fixed_masks_do_not_touch_the_learned_rates():
    model = layerdrop.apply(make("llama"), rate=0.5)
    learner = attach_rate_learner(model)
    with torch.no_grad():
        learner.b2.fill_(1.0)
    before = learner.mean_score.clone()
    model.eval()
    logits(model, tokens())
    model.train()
    with layerdrop.only_layers(model, [0, 1]):
        logits(model, tokens())
    torch.testing.assert_close(learner.mean_score, before)
    logits(model, tokens())
    assert not torch.equal(learner.mean_score, before)


def test_rate_schedule_scales_the_learned_rates():
    model = layerdrop.apply(make("bert"), rate=0.4)
    attach_rate_learner(model)
    scale_rates(model, 0.5)
    assert model.layerdrop_state.rates == pytest.approx((0.2,) * NUM_LAYERS)
    assert dataclasses.replace(model.layerdrop_state.settings).rates == (0.4,) * NUM_LAYERS
