import math

import pytest

from layerdrop.core.rates import (
    exponential_rates,
    layer_rates,
    linear_rates,
    schedule_factor,
    uniform_rates,
    validate_rates,
)


def test_uniform_rates_repeat_the_rate():
    assert uniform_rates(0.2, 3) == (0.2, 0.2, 0.2)


def test_linear_rates_reach_the_rate_at_the_last_layer():
    assert linear_rates(0.5, 4) == pytest.approx((0.125, 0.25, 0.375, 0.5))


def test_exponential_rates_start_at_zero_and_end_at_the_rate():
    r = exponential_rates(0.4, 5)
    assert r[0] == 0.0 and r[-1] == pytest.approx(0.4)
    assert r[2] == pytest.approx(0.4 * (math.sqrt(2) - 1))
    assert all(a < b for a, b in zip(r, r[1:], strict=False))  # neighbours: r[1:] is one shorter


def test_exponential_rates_of_a_single_layer_is_the_rate():
    assert exponential_rates(0.3, 1) == (0.3,)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.2", True])
def test_rate_outside_unit_interval_names_the_allowed_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        layer_rates(4, bad)


def test_explicit_rates_need_one_per_layer():
    with pytest.raises(ValueError, match="got 2 rates for a model with 3 layers"):
        validate_rates([0.1, 0.2], 3)


def test_explicit_rate_list_is_checked_per_layer():
    with pytest.raises(ValueError, match="rate of layer 1"):
        layer_rates(2, rates=[0.1, 1.0])


def test_rate_and_rates_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        layer_rates(2, 0.1, rates=[0.1, 0.1])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ValueError, match="exponential"):
        layer_rates(2, 0.1, per_layer="cosine")


def test_progressive_schedule_matches_zhang_and_he_theta():
    theta_bar, gamma = 0.5, 0.001
    for t in (0, 10, 1000, 5000):
        theta = (1 - theta_bar) * math.exp(-gamma * t) + theta_bar  # their keep probability
        assert (1 - theta_bar) * schedule_factor("progressive", t, gamma=gamma) == pytest.approx(1 - theta)


def test_warmup_schedule_ramps_linearly_then_stays():
    assert [schedule_factor("warmup", s, warmup_steps=4) for s in (0, 1, 2, 4, 9)] == [0, 0.25, 0.5, 1, 1]
    assert schedule_factor("warmup", 0, warmup_steps=0) == 1.0


def test_constant_schedule_is_one():
    assert schedule_factor("constant", 123) == 1.0


def test_unknown_schedule_lists_known_ones():
    with pytest.raises(ValueError, match="progressive"):
        schedule_factor("cosine", 1)
