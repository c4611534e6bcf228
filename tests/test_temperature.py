"""Temperature sampling formulas and schedules (METHODS.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from gristmill.scoring.temperature import (
    ConstantSchedule,
    CooldownSchedule,
    LinearSchedule,
    TemperatureError,
    scalarization_weights,
    temperature_probs,
    variance_factor,
)

PAPER_SIZES = [2733, 162, 39, 1]


def test_probabilities_match_the_papers_check_values() -> None:
    assert temperature_probs(PAPER_SIZES, 5.0) == pytest.approx(
        [0.4543, 0.2582, 0.1942, 0.0933], abs=5e-5)


def test_temperature_one_is_proportional_and_large_temperature_is_near_uniform() -> None:
    assert temperature_probs([1, 3], 1.0) == pytest.approx([0.25, 0.75])
    assert temperature_probs(PAPER_SIZES, 1e6) == pytest.approx([0.25] * 4, abs=1e-4)


def test_scalarization_weights_and_variance_factor_by_hand() -> None:
    sizes = [1, 3]
    p_two = np.sqrt(sizes) / np.sqrt(sizes).sum()
    expected = p_two / np.array([0.25, 0.75])
    assert scalarization_weights(sizes, 2.0) == pytest.approx(expected)
    assert variance_factor(sizes, 2.0) == pytest.approx(float(np.sum(p_two**2 / [0.25, 0.75])))
    assert variance_factor(sizes, 1.0) == pytest.approx(1.0)
    assert variance_factor(PAPER_SIZES, 5.0) > 1.0


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_temperatures_are_refused(temperature: float) -> None:
    with pytest.raises(TemperatureError, match="temperature must be positive"):
        temperature_probs(PAPER_SIZES, temperature)


@pytest.mark.parametrize("sizes", [[], [10, 0], [10, -3]])
def test_empty_or_non_positive_domains_are_refused(sizes: list[int]) -> None:
    with pytest.raises(TemperatureError):
        temperature_probs(sizes, 1.0)


def test_cooldown_switches_once_at_the_fraction() -> None:
    schedule = CooldownSchedule()
    assert [schedule.temperature(s, 100) for s in (0, 49, 50, 99)] == [5.0, 5.0, 1.0, 1.0]
    early = CooldownSchedule(high=3.0, switch_fraction=0.2)
    assert early.temperature(19, 100) == 3.0 and early.temperature(20, 100) == 1.0


def test_linear_and_constant_schedules() -> None:
    linear = LinearSchedule(start=5.0, end=1.0)
    assert [linear.temperature(s, 5) for s in range(5)] == pytest.approx([5, 4, 3, 2, 1])
    assert ConstantSchedule(value=2.0).temperature(123, 1000) == 2.0
    with pytest.raises(ValueError):
        ConstantSchedule(value=0.0)
