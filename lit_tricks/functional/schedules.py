"""Closed-form learning rates per optimizer step: warm-up factors, decay bodies, warm-restart cycles (pure math).

A schedule is ``warm-up + body + optional restarts``. Step ``s`` (0-based optimizer step) gets

    s <  W:  lr = base * warmup_factor(s, W, start_factor, mode)
    s >= W:  t = s - W;  lr = body(base, t, T)                       (no restarts, T = total_steps - W)
             or, with restarts, cycle i of length T_0 * T_mult**i:  lr = body(base * cycle_decay**i, t_i, T_i)

Every function returns a Python float and is written as the formula it documents, so tests can compare a real
``Trainer`` run against these values directly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

__all__ = [
    "WARMUP_MODES",
    "constant_lr",
    "cosine_lr",
    "cycle_ends",
    "cycle_position",
    "exponential_lr",
    "inverse_sqrt_lr",
    "inverse_time_lr",
    "linear_lr",
    "lr_at",
    "multistep_lr",
    "polynomial_lr",
    "step_lr",
    "warmup_factor",
]

WARMUP_MODES = ("linear", "exponential", "cosine")

BodyFn = Callable[[float, int, "int | None"], float]


def warmup_factor(step: int, warmup_steps: int, start_factor: float, mode: str = "linear") -> float:
    """Multiplier of the base lr at ``step`` of a warm-up of ``warmup_steps`` steps (1.0 once it is over).

    With ``p = step / warmup_steps``: linear ``f0 + (1 - f0) p`` (torch ``LinearLR``); exponential ``f0 ** (1 - p)``
    (geometric from ``f0`` to 1, needs ``f0 > 0``); cosine ``f0 + (1 - f0) (1 - cos(pi p)) / 2`` (one-cycle's ramp).
    """
    if mode not in WARMUP_MODES:
        raise ValueError(f"warmup: expected one of {list(WARMUP_MODES)}, got {mode!r}")
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    p = step / warmup_steps
    if mode == "linear":
        return start_factor + (1.0 - start_factor) * p
    if mode == "exponential":
        return float(start_factor ** (1.0 - p))
    return start_factor + (1.0 - start_factor) * (1.0 - math.cos(math.pi * p)) / 2.0


def constant_lr(base_lr: float, t: float) -> float:
    """``lr = base``."""
    return base_lr


def step_lr(base_lr: float, t: int, step_size: int, gamma: float) -> float:
    """``lr = base * gamma ** floor(t / step_size)`` (torch ``StepLR``)."""
    return base_lr * gamma ** (t // step_size)


def multistep_lr(base_lr: float, t: int, milestones: Sequence[int], gamma: float) -> float:
    """``lr = base * gamma ** #{m in milestones: m <= t}`` (torch ``MultiStepLR``)."""
    return base_lr * gamma ** bisect.bisect_right(sorted(milestones), t)


def exponential_lr(base_lr: float, t: float, gamma: float) -> float:
    """``lr = base * gamma ** t`` (torch ``ExponentialLR``)."""
    return base_lr * gamma**t


def cosine_lr(base_lr: float, t: int, length: int, eta_min: float = 0.0) -> float:
    """``lr = eta_min + (base - eta_min) (1 + cos(pi min(t, T) / T)) / 2`` (SGDR, Loshchilov & Hutter 2017)."""
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * min(t, length) / length)) / 2.0


def linear_lr(base_lr: float, t: int, length: int, end_factor: float = 0.0) -> float:
    """``lr = base (1 + (end_factor - 1) min(t, T) / T)``: straight line from base to ``base * end_factor``."""
    return base_lr * (1.0 + (end_factor - 1.0) * min(t, length) / length)


def polynomial_lr(base_lr: float, t: int, length: int, power: float = 1.0, eta_min: float = 0.0) -> float:
    """``lr = eta_min + (base - eta_min) (1 - min(t, T) / T) ** power`` (torch ``PolynomialLR`` when eta_min=0)."""
    return eta_min + (base_lr - eta_min) * (1.0 - min(t, length) / length) ** power


def inverse_time_lr(base_lr: float, t: float, decay_rate: float) -> float:
    """``lr = base / (1 + k t)`` (time-based decay, ``k = decay_rate``)."""
    return base_lr / (1.0 + decay_rate * t)


def inverse_sqrt_lr(base_lr: float, t: float, timescale: float) -> float:
    """``lr = base * sqrt(tau / (t + tau))``: after a warm-up of ``tau`` steps this is ``base * sqrt(tau / step)``.

    The Transformer schedule (Vaswani et al., 2017) in Hugging Face's ``get_inverse_sqrt_schedule`` form.
    """
    return base_lr * math.sqrt(timescale / (t + timescale))


def cycle_position(t: int, T_0: int, T_mult: int = 1) -> tuple[int, int, int]:
    """``(i, t_i, T_i)``: cycle index, step within it and its length, cycles of length ``T_0 * T_mult**i``."""
    if T_mult == 1:
        return t // T_0, t % T_0, T_0
    i, start, length = 0, 0, T_0
    while t >= start + length:
        start += length
        length *= T_mult
        i += 1
    return i, t - start, length


def cycle_ends(total_steps: int, warmup_steps: int, T_0: int, T_mult: int = 1) -> list[int]:
    """Optimizer-step counts (``trainer.global_step`` right after the cycle's last step) at which cycles end."""
    ends: list[int] = []
    end, length = warmup_steps + T_0, T_0
    while end <= total_steps:
        ends.append(end)
        length *= T_mult
        end += length
    return ends


def lr_at(
    step: int,
    base_lr: float,
    body: BodyFn,
    *,
    warmup_steps: int = 0,
    warmup: str = "linear",
    start_factor: float = 0.0,
    body_steps: int | None = None,
    T_0: int | None = None,
    T_mult: int = 1,
    cycle_decay: float = 1.0,
) -> float:
    """The lr at optimizer step ``step``: warm-up, then ``body(base, t, T)``, restarted every cycle when ``T_0``.

    ``body_steps``: the body's length T without restarts (None for bodies that need none).
    """
    if step < warmup_steps:
        return base_lr * warmup_factor(step, warmup_steps, start_factor, warmup)
    t = step - warmup_steps
    if T_0 is None:
        return body(base_lr, t, body_steps)
    i, t_i, length = cycle_position(t, T_0, T_mult)
    return body(base_lr * cycle_decay**i, t_i, length)
