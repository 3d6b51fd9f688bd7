"""Optimizers beyond torch.optim: second-order methods for small full-batch problems."""

from lit_tricks.optim.second_order import (
    DEFAULT_MAX_PARAMS,
    GaussNewton,
    GaussNewtonOptimizer,
    LevenbergMarquardt,
    LevenbergMarquardtOptimizer,
    Newton,
    NewtonOptimizer,
    SecondOrderOptimizer,
    check_full_batch,
)

__all__ = [
    "DEFAULT_MAX_PARAMS",
    "GaussNewton",
    "GaussNewtonOptimizer",
    "LevenbergMarquardt",
    "LevenbergMarquardtOptimizer",
    "Newton",
    "NewtonOptimizer",
    "SecondOrderOptimizer",
    "check_full_batch",
]
