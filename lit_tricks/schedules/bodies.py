"""Decay bodies of a :class:`~lit_tricks.schedules.schedule.Schedule`: what the lr does after warm-up.

Each body is a small frozen dataclass (YAML: ``body: {_target_: lit_tricks.schedules.CosineDecay, eta_min: 0.0}``
or just ``body: cosine``) whose ``bind(steps_per_unit, warmup_steps)`` returns ``f(base_lr, t, T) -> lr`` with ``t``
the optimizer steps since the body started and ``T`` its length in steps (the rest of training, or the current
warm-restart cycle). Lengths inside a body (``step_size``, ``milestones``, ``timescale``) and per-time rates
(``gamma``, ``decay_rate``) are in the schedule's ``unit`` (steps or epochs). The math is in
:mod:`lit_tricks.functional.schedules`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from lit_tricks.functional import schedules as F

__all__ = [
    "BODIES",
    "Body",
    "ConstantLR",
    "CosineDecay",
    "ExponentialDecay",
    "InverseSqrtDecay",
    "InverseTimeDecay",
    "LinearDecay",
    "MultiStepDecay",
    "PolynomialDecay",
    "StepDecay",
    "make_body",
]

BodyFn = Callable[[float, int, "int | None"], float]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


def _steps(value: float, steps_per_unit: float) -> int:
    return max(1, round(value * steps_per_unit))


class Body:
    """Base class: ``needs_length`` bodies (cosine, linear, polynomial) decay over a known number of steps.

    A body reads as a Hydra spec: ``dict(body) == {"_target_": "<import path>", **fields}`` (plain types, so a
    module's hyperparameters stay checkpoint-safe), and :func:`make_body` accepts that spec back.
    """

    needs_length: ClassVar[bool] = False

    def keys(self) -> list[str]:
        """``_target_`` and the dataclass fields (the Mapping view used by ``dict(body)``)."""
        return ["_target_", *(f.name for f in dataclasses.fields(self))]  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key == "_target_":
            return f"{type(self).__module__}.{type(self).__qualname__}"
        if key in self.keys():
            value = getattr(self, key)
            return list(value) if isinstance(value, tuple | list) else value
        raise KeyError(key)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        """``f(base_lr, t, T) -> lr`` with lengths converted to optimizer steps."""
        raise NotImplementedError


def _end(base_lr: float, eta_min: float, end_factor: float | None) -> float:
    return base_lr * end_factor if end_factor is not None else eta_min


@dataclass(frozen=True)
class ConstantLR(Body):
    """``lr = base`` (after warm-up)."""

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        return lambda base, t, length: F.constant_lr(base, t)


@dataclass(frozen=True)
class StepDecay(Body):
    """``lr = base * gamma ** floor(t / step_size)``."""

    step_size: float = 30
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _positive("step_size", self.step_size)
        _positive("gamma", self.gamma)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        size = _steps(self.step_size, steps_per_unit)
        return lambda base, t, length: F.step_lr(base, t, size, self.gamma)


@dataclass(frozen=True)
class MultiStepDecay(Body):
    """``lr = base * gamma ** (number of milestones passed)``, e.g. x0.1 at epochs 30, 60, 90."""

    milestones: Sequence[float] = (30, 60, 90)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not self.milestones or any(not isinstance(m, int | float) or m < 0 for m in self.milestones):
            raise ValueError(f"milestones: expected a non-empty list of numbers >= 0, got {self.milestones!r}")
        _positive("gamma", self.gamma)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        marks = sorted(round(m * steps_per_unit) for m in self.milestones)
        return lambda base, t, length: F.multistep_lr(base, t, marks, self.gamma)


@dataclass(frozen=True)
class ExponentialDecay(Body):
    """``lr = base * gamma ** (t / unit)``: ``gamma`` per step or per epoch."""

    gamma: float = 0.99

    def __post_init__(self) -> None:
        _positive("gamma", self.gamma)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        if steps_per_unit == 1:
            return lambda base, t, length: F.exponential_lr(base, t, self.gamma)
        return lambda base, t, length: F.exponential_lr(base, t / steps_per_unit, self.gamma)


@dataclass(frozen=True)
class CosineDecay(Body):
    """``lr = eta_min + (base - eta_min)(1 + cos(pi t / T)) / 2``; ``end_factor`` sets ``eta_min = base * it``."""

    needs_length: ClassVar[bool] = True
    eta_min: float = 0.0
    end_factor: float | None = None

    def __post_init__(self) -> None:
        _positive("eta_min", self.eta_min, allow_zero=True)
        if self.end_factor is not None:
            _positive("end_factor", self.end_factor, allow_zero=True)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        def f(base: float, t: int, length: int | None) -> float:
            assert length is not None  # Schedule checks needs_length
            return F.cosine_lr(base, t, length, _end(base, self.eta_min, self.end_factor))

        return f


@dataclass(frozen=True)
class LinearDecay(Body):
    """``lr = base (1 + (end_factor - 1) t / T)``: linear from base to ``base * end_factor``."""

    needs_length: ClassVar[bool] = True
    end_factor: float = 0.0

    def __post_init__(self) -> None:
        _positive("end_factor", self.end_factor, allow_zero=True)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        def f(base: float, t: int, length: int | None) -> float:
            assert length is not None
            return F.linear_lr(base, t, length, self.end_factor)

        return f


@dataclass(frozen=True)
class PolynomialDecay(Body):
    """``lr = eta_min + (base - eta_min)(1 - t / T) ** power``."""

    needs_length: ClassVar[bool] = True
    power: float = 2.0
    eta_min: float = 0.0
    end_factor: float | None = None

    def __post_init__(self) -> None:
        _positive("power", self.power)
        _positive("eta_min", self.eta_min, allow_zero=True)
        if self.end_factor is not None:
            _positive("end_factor", self.end_factor, allow_zero=True)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        def f(base: float, t: int, length: int | None) -> float:
            assert length is not None
            return F.polynomial_lr(base, t, length, self.power, _end(base, self.eta_min, self.end_factor))

        return f


@dataclass(frozen=True)
class InverseTimeDecay(Body):
    """``lr = base / (1 + decay_rate * t)`` with ``t`` in the schedule's unit (the notes' 1/t decay)."""

    decay_rate: float = 0.01

    def __post_init__(self) -> None:
        _positive("decay_rate", self.decay_rate, allow_zero=True)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        if steps_per_unit == 1:
            return lambda base, t, length: F.inverse_time_lr(base, t, self.decay_rate)
        return lambda base, t, length: F.inverse_time_lr(base, t / steps_per_unit, self.decay_rate)


@dataclass(frozen=True)
class InverseSqrtDecay(Body):
    """``lr = base * sqrt(tau / (t + tau))``; ``timescale`` tau defaults to the warm-up length (Transformers)."""

    timescale: float | None = None

    def __post_init__(self) -> None:
        if self.timescale is not None:
            _positive("timescale", self.timescale)

    def bind(self, steps_per_unit: float, warmup_steps: int) -> BodyFn:
        tau = self.timescale * steps_per_unit if self.timescale is not None else max(warmup_steps, 1)
        return lambda base, t, length: F.inverse_sqrt_lr(base, t, tau)


BODIES: dict[str, type[Body]] = {
    "constant": ConstantLR,
    "step": StepDecay,
    "multistep": MultiStepDecay,
    "exponential": ExponentialDecay,
    "cosine": CosineDecay,
    "linear": LinearDecay,
    "polynomial": PolynomialDecay,
    "inverse_time": InverseTimeDecay,
    "inverse_sqrt": InverseSqrtDecay,
}


def make_body(body: Any) -> Body:
    """A body from an instance, a registry name (default arguments), a spec ``{"_target_": path, **fields}``, a
    zero-argument callable returning a Body (a partial of a Body class), or None (constant)."""
    if body is None:
        return ConstantLR()
    if isinstance(body, Body):
        return body
    if isinstance(body, str):
        if body not in BODIES:
            raise ValueError(f"body: expected one of {sorted(BODIES)} or a Body instance, got {body!r}")
        return BODIES[body]()
    if isinstance(body, Mapping) and isinstance(body.get("_target_"), str):
        module, _, name = str(body["_target_"]).rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return make_body(cls(**{k: v for k, v in body.items() if k not in ("_target_", "_partial_")}))
    if callable(body):
        built = body()
        if isinstance(built, Body):
            return built
        raise TypeError(f"body: the callable returned {type(built).__name__}, not a Body")
    raise TypeError(f"body: expected a Body, one of {sorted(BODIES)}, a spec dict or None, got {type(body).__name__}")

