"""Closed forms of lit_tricks.functional.schedules at chosen steps, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from lit_tricks.functional import schedules as F


def test_warmup_factor_modes() -> None:
    assert F.warmup_factor(0, 4, 0.1, "linear") == pytest.approx(0.1)
    assert F.warmup_factor(2, 4, 0.1, "linear") == pytest.approx(0.55)
    assert F.warmup_factor(4, 4, 0.1, "linear") == 1.0
    assert F.warmup_factor(2, 4, 0.01, "exponential") == pytest.approx(0.1)  # 0.01 ** 0.5
    assert F.warmup_factor(2, 4, 0.0, "cosine") == pytest.approx(0.5)
    assert F.warmup_factor(1, 4, 0.0, "cosine") == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert F.warmup_factor(7, 0, 0.3, "linear") == 1.0  # no warm-up
    with pytest.raises(ValueError, match="warmup: expected one of"):
        F.warmup_factor(0, 4, 0.1, "quadratic")


def test_body_closed_forms() -> None:
    assert F.constant_lr(0.3, 99) == 0.3
    assert F.step_lr(1.0, 29, 10, 0.1) == pytest.approx(0.01)
    assert F.step_lr(1.0, 30, 10, 0.1) == pytest.approx(0.001)
    assert F.multistep_lr(1.0, 29, [30, 60, 90], 0.1) == 1.0
    assert F.multistep_lr(1.0, 60, [90, 30, 60], 0.1) == pytest.approx(0.01)  # unsorted milestones, boundary counts
    assert F.exponential_lr(2.0, 3, 0.5) == pytest.approx(0.25)
    assert F.cosine_lr(1.0, 0, 10) == 1.0
    assert F.cosine_lr(1.0, 5, 10, eta_min=0.2) == pytest.approx(0.6)
    assert F.cosine_lr(1.0, 10, 10, eta_min=0.2) == pytest.approx(0.2)
    assert F.cosine_lr(1.0, 15, 10, eta_min=0.2) == pytest.approx(0.2)  # clamped after the end
    assert F.linear_lr(1.0, 5, 10, end_factor=0.5) == pytest.approx(0.75)
    assert F.polynomial_lr(1.0, 5, 10, power=2.0) == pytest.approx(0.25)
    assert F.polynomial_lr(1.0, 10, 10, power=2.0, eta_min=0.1) == pytest.approx(0.1)
    assert F.inverse_time_lr(1.0, 4, 0.25) == pytest.approx(0.5)
    assert F.inverse_sqrt_lr(1.0, 0, 100) == 1.0
    assert F.inverse_sqrt_lr(1.0, 300, 100) == pytest.approx(0.5)  # sqrt(100 / 400)


def test_cycles_and_ends() -> None:
    assert F.cycle_position(0, 3, 1) == (0, 0, 3)
    assert F.cycle_position(7, 3, 1) == (2, 1, 3)
    # T_mult=2: cycles [0, 3), [3, 9), [9, 21)
    assert F.cycle_position(2, 3, 2) == (0, 2, 3)
    assert F.cycle_position(3, 3, 2) == (1, 0, 6)
    assert F.cycle_position(20, 3, 2) == (2, 11, 12)
    assert F.cycle_position(21, 3, 2) == (3, 0, 24)
    assert F.cycle_ends(21, 0, 3, 2) == [3, 9, 21]
    assert F.cycle_ends(20, 2, 3, 2) == [5, 11]  # offset by warm-up; the unfinished last cycle is no end
    assert F.cycle_ends(10, 0, 5, 1) == [5, 10]


def test_lr_at_composes_warmup_body_restarts() -> None:
    def body(b: float, t: int, n: int | None) -> float:
        return F.cosine_lr(b, t, n or 1)

    kw = dict(warmup_steps=2, warmup="linear", start_factor=0.0)
    assert F.lr_at(0, 1.0, body, body_steps=8, **kw) == 0.0
    assert F.lr_at(1, 1.0, body, body_steps=8, **kw) == pytest.approx(0.5)
    assert F.lr_at(2, 1.0, body, body_steps=8, **kw) == 1.0
    assert F.lr_at(6, 1.0, body, body_steps=8, **kw) == pytest.approx(0.5)
    # restarts after warm-up: cycle 1 starts at step 2 + 3 with peak 0.5
    restart = dict(T_0=3, T_mult=2, cycle_decay=0.5, **kw)
    assert F.lr_at(5, 1.0, body, **restart) == pytest.approx(0.5)
    assert F.lr_at(8, 1.0, body, **restart) == pytest.approx(0.25)  # middle of the 6-step cycle
