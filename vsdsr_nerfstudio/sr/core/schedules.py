"""Timestep schedules of the SR stage (distillation) and of the LoRA training, as pure functions.

- ``linear``: DiSR / VSD-SR's deterministic annealing ``t_k = floor(T (t_max - (t_max - t_min) k / (K - 1)))``,
  restarted at every stage (``k`` is the step index *within* the stage). With ``t_max=0.98, t_min=0.5, T=1000``
  it runs from 980 at ``k=0`` to exactly 500 at ``k=K-1``. (DiSR divides by ``K`` and never quite reaches
  ``t_min``: its last step is ``500 + 480/K``; we hit both endpoints. DiSR also holds ``t`` for ``floor(N/B)``
  steps; we move every step.) The whole batch shares the step's ``t``.
- ``uniform``: ``t ~ U{floor(T t_min) .. floor(T t_max)}`` independently per patch.
- LoRA training: ``t ~ U{0 .. T-1}`` per sample (threestudio's ``train_lora``).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from jaxtyping import Int
from torch import Tensor

TimestepScheduleType = Literal["linear", "uniform"]

# floor(T * x) of a value that should be an integer but came out as 931.9999999 must give 932, not 931.
_FLOOR_EPS = 1e-6


def _floor_t(x: float) -> int:
    return int(math.floor(x + _FLOOR_EPS))


def linear_timestep(
    step: int, num_steps: int, num_train_timesteps: int = 1000, t_max: float = 0.98, t_min: float = 0.5
) -> int:
    """Annealed timestep of step ``step`` (0-based) of a ``num_steps``-step stage: ``t_max`` -> ``t_min`` linearly.

    Both endpoints are hit exactly; steps past the end stay at ``t_min``. The result is clamped to ``[0, T-1]``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
    frac = min(max(step, 0), num_steps - 1) / max(num_steps - 1, 1)
    t = _floor_t(num_train_timesteps * (t_max - (t_max - t_min) * frac))
    return min(max(t, 0), num_train_timesteps - 1)


def uniform_timesteps(
    batch_size: int,
    num_train_timesteps: int = 1000,
    t_max: float = 0.98,
    t_min: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Int[Tensor, " B"]:
    """``t ~ U{floor(T t_min) .. floor(T t_max)}`` per sample (CPU long tensor), clamped to ``[0, T-1]``."""
    lo = min(max(_floor_t(num_train_timesteps * t_min), 0), num_train_timesteps - 1)
    hi = min(max(_floor_t(num_train_timesteps * t_max), lo), num_train_timesteps - 1)
    return torch.randint(lo, hi + 1, (batch_size,), generator=generator)


def stage_timesteps(
    schedule: TimestepScheduleType,
    step: int,
    num_steps: int,
    batch_size: int,
    num_train_timesteps: int = 1000,
    t_max: float = 0.98,
    t_min: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Int[Tensor, " B"]:
    """The timesteps of one distillation step (CPU long tensor of length ``batch_size``)."""
    if schedule == "linear":
        t = linear_timestep(step, num_steps, num_train_timesteps, t_max, t_min)
        return torch.full((batch_size,), t, dtype=torch.long)
    if schedule == "uniform":
        return uniform_timesteps(batch_size, num_train_timesteps, t_max, t_min, generator)
    raise ValueError(f"unknown timestep schedule {schedule!r} (expected 'linear' or 'uniform')")


def lora_timesteps(
    batch_size: int, num_train_timesteps: int = 1000, generator: Optional[torch.Generator] = None
) -> Int[Tensor, " B"]:
    """LoRA training timesteps ``t ~ U{0 .. T-1}`` per sample (CPU long tensor)."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
