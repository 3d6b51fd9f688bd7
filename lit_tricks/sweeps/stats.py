"""Percentile bootstrap confidence intervals, plain and paired (same seeds across variants)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap_ci"]


def _check(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, *,
                 level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over ``values`` (resampled with replacement, ``n_boot`` times).

    Efron & Tibshirani (1993), ch. 13. With one value the interval is that value.
    """
    _check(level, n_boot)
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("values must not be empty")
    if x.size == 1:
        v = float(statistic(x))
        return v, v
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    stats = np.array([statistic(x[i]) for i in idx])
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float],
                        statistic: Callable[[np.ndarray, np.ndarray], float] | None = None, *,
                        level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``statistic(a, b)`` (default ``mean(a - b)``), resampling the *pairs* together.

    ``a[i]`` and ``b[i]`` come from the same seed (same init, same data order), so their noise cancels in the
    difference; resampling pairs keeps that.
    """
    _check(level, n_boot)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.size == 0:
        raise ValueError(f"a and b must be non-empty and paired (same length), got {xa.size} and {xb.size}")
    stat = statistic or (lambda u, v: float(np.mean(u - v)))
    estimate = float(stat(xa, xb))
    if xa.size == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, xa.size, size=(n_boot, xa.size))
    stats = np.array([stat(xa[i], xb[i]) for i in idx])
    alpha = (1.0 - level) / 2.0
    return estimate, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))
