"""Temperature sampling over domains and the schedules that change it during training.

p_i(T) = n_i^(1/T) / sum_j n_j^(1/T): T=1 samples in proportion to domain size, a large T
approaches uniform. Scalarization keeps proportional sampling and reweights each sample's
loss by w_i = p_i(T) / p_i(1); it matches temperature sampling in expectation, at a gradient
variance larger by F(T) = sum_i p_i(T)^2 / p_i(1). Cooldown ("Upsample or Upweight?", 2024)
trains at a high T, then switches once to T=1. Pure math: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class TemperatureError(ValueError):
    """Domain sizes or a temperature that no distribution can come from."""


def _checked_sizes(sizes: Sequence[float]) -> np.ndarray:
    array = np.asarray(sizes, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise TemperatureError("need at least one domain size")
    if np.any(~np.isfinite(array)) or np.any(array <= 0):
        raise TemperatureError(f"domain sizes must be positive and finite, got {list(sizes)} "
                               "(an empty domain cannot be sampled: drop it from the mixture)")
    return array


def temperature_probs(sizes: Sequence[float], temperature: float) -> np.ndarray:
    """p_i(T) for domains of the given sizes (rows or tokens)."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise TemperatureError(f"temperature must be positive and finite, got {temperature}")
    array = _checked_sizes(sizes)
    logits = np.log(array) / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def scalarization_weights(sizes: Sequence[float], temperature: float) -> np.ndarray:
    """w_i = p_i(T) / p_i(1): per-sample loss weights under proportional sampling."""
    return temperature_probs(sizes, temperature) / temperature_probs(sizes, 1.0)


def variance_factor(sizes: Sequence[float], temperature: float) -> float:
    """F(T) = sum_i p_i(T)^2 / p_i(1) >= 1: how much noisier scalarization's gradient is."""
    return float(np.sum(temperature_probs(sizes, temperature) ** 2
                        / temperature_probs(sizes, 1.0)))


class _Schedule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def temperature(self, step: int, total_steps: int) -> float:
        raise NotImplementedError

    def probs(self, sizes: Sequence[float], step: int, total_steps: int) -> np.ndarray:
        return temperature_probs(sizes, self.temperature(step, total_steps))


class ConstantSchedule(_Schedule):
    """One temperature for the whole run (T=1: proportional; T=5: the paper's high T)."""

    kind: Literal["constant"] = "constant"
    value: float = Field(default=1.0, gt=0)

    def temperature(self, step: int, total_steps: int) -> float:
        return self.value


class CooldownSchedule(_Schedule):
    """High temperature first, then a single switch to a low one (paper: T=5, then 1 at 50%)."""

    kind: Literal["cooldown"] = "cooldown"
    high: float = Field(default=5.0, gt=0)
    low: float = Field(default=1.0, gt=0)
    switch_fraction: float = Field(default=0.5, ge=0, le=1)

    def temperature(self, step: int, total_steps: int) -> float:
        return self.high if step < self.switch_fraction * total_steps else self.low


class LinearSchedule(_Schedule):
    """Temperature moves linearly from `start` to `end` over training."""

    kind: Literal["linear"] = "linear"
    start: float = Field(default=5.0, gt=0)
    end: float = Field(default=1.0, gt=0)

    def temperature(self, step: int, total_steps: int) -> float:
        progress = min(1.0, step / max(1, total_steps - 1))
        return self.start + (self.end - self.start) * progress


Schedule = Annotated[ConstantSchedule | CooldownSchedule | LinearSchedule,
                     Field(discriminator="kind")]
