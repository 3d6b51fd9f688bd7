"""Learning-rate schedules: warm-up + decay body + optional warm restarts, as torch ``LRScheduler``s per step.

``Schedule(optimizer, body="cosine", warmup_steps=500)``; bodies in ``BODIES``; ``ReduceOnPlateau`` for
metric-driven decay; ``lr_scheduler_config(partial, optimizer, trainer)`` builds Lightning's lr_scheduler dict.
Closed forms live in :mod:`lit_tricks.functional.schedules`.
"""

from lit_tricks.schedules.bodies import (
    BODIES,
    Body,
    ConstantLR,
    CosineDecay,
    ExponentialDecay,
    InverseSqrtDecay,
    InverseTimeDecay,
    LinearDecay,
    MultiStepDecay,
    PolynomialDecay,
    StepDecay,
    make_body,
)
from lit_tricks.schedules.config import lr_scheduler_config, trainer_steps
from lit_tricks.schedules.plateau import ReduceOnPlateau
from lit_tricks.schedules.schedule import UNITS, Schedule

__all__ = [
    "BODIES",
    "UNITS",
    "Body",
    "ConstantLR",
    "CosineDecay",
    "ExponentialDecay",
    "InverseSqrtDecay",
    "InverseTimeDecay",
    "LinearDecay",
    "MultiStepDecay",
    "PolynomialDecay",
    "ReduceOnPlateau",
    "Schedule",
    "StepDecay",
    "lr_scheduler_config",
    "make_body",
    "trainer_steps",
]
