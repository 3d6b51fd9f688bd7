"""Every conf/scheduler preset with test overrides and its closed form written out by hand (shared by the tests).

Geometry used by the Trainer tests: 3 optimizer steps per epoch (6 batches, accumulate_grad_batches=2), 4 epochs,
12 steps in all, base lr 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from lit_tricks.config_bases import load_preset

CONF = Path(__file__).resolve().parents[2] / "conf"
SPE, EPOCHS, BASE = 3, 4, 0.1
TOTAL = SPE * EPOCHS


def _cos(base: float, t: float, n: float, lo: float = 0.0) -> float:
    return lo + (base - lo) * (1 + math.cos(math.pi * min(t, n) / n)) / 2


def _warm(s: int, w: int, f0: float) -> float:
    return f0 + (1 - f0) * s / w


def _sgdr(s: int) -> float:
    i, start, n = 0, 0, 3  # T_0 = 1 epoch = 3 steps, T_mult = 2
    while s >= start + n:
        start, n, i = start + n, n * 2, i + 1
    return _cos(BASE * 0.8**i, s - start, n)


def _onecycle(s: int) -> float:
    w = round(0.3 * TOTAL)  # 4
    if s < w:
        return BASE * (0.04 + 0.96 * (1 - math.cos(math.pi * s / w)) / 2)
    return _cos(BASE, s - w, TOTAL - w, BASE * 4e-6)


# name -> (overrides, expected lr at optimizer step s)
CASES: dict[str, tuple[dict[str, Any], Callable[[int], float]]] = {
    "warmup_cosine": ({"warmup_epochs": 1},
                      lambda s: BASE * _warm(s, 3, 0.01) if s < 3 else _cos(BASE, s - 3, TOTAL - 3)),
    "cosine": ({}, lambda s: _cos(BASE, s, TOTAL)),
    "step": ({"body": {"step_size": 1, "gamma": 0.5}}, lambda s: BASE * 0.5 ** (s // SPE)),
    "multistep": ({"body": {"milestones": [1, 3]}},
                  lambda s: BASE * 0.1 ** sum(m * SPE <= s for m in (1, 3))),
    "exponential": ({}, lambda s: BASE * 0.9 ** (s / SPE)),
    "linear": ({}, lambda s: BASE * (1 - s / TOTAL)),
    "polynomial": ({}, lambda s: BASE * (1 - s / TOTAL) ** 2),
    "inverse_time": ({}, lambda s: BASE / (1 + 0.5 * s / SPE)),
    "inverse_sqrt": ({}, lambda s: BASE * _warm(s, 3, 0.01) if s < 3 else BASE * math.sqrt(3 / (s - 3 + 3))),
    "constant": ({}, lambda s: BASE),
    "sgdr": ({"T_0": 1}, _sgdr),
    "onecycle": ({}, _onecycle),
}

PLATEAU: dict[str, Any] = {"monitor": "val/const", "patience": 0, "factor": 0.5, "warmup_steps": 2,
                           "start_factor": 0.25}


def plateau_expected(s: int) -> float:
    """``val/const`` never improves after epoch 0: the lr halves after each later epoch; warm-up over 2 steps."""
    return BASE * 0.5 ** max(0, s // SPE - 1) * (_warm(s, 2, 0.25) if s < 2 else 1.0)


def scheduler_partial(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """``conf/scheduler/<name>.yaml`` merged with ``overrides``, instantiated (a partial, or None for none)."""
    node = load_preset("scheduler", name).get("scheduler")
    if node is None or "_target_" not in node:
        return None
    return instantiate(OmegaConf.merge(node, overrides or {}))
