"""TrickModule's full-batch path: the second-order optimizers (``optimizer=newton|gauss_newton|lm``) step once per
epoch on the whole training set, in Lightning's manual optimization.

What they refuse at construction, each with the fix: stochastic layers (dropout, Gaussian dropout, DropConnect,
weight noise, zoneout: they make the curvature noise), terms outside the data loss (weight decay, L1, Jacobian
penalty, batch augmentation: use the method's ``damping`` instead of weight decay), LR schedules (Lightning does not
step them in manual optimization), and for the least-squares methods any loss but ``mse``; at the start of training,
mini-batches (``data.batch_size`` below the training set size). BatchNorm is handled, not refused: the step uses the
full batch's statistics (deterministic), and the running statistics become the full batch's after each step
(:class:`~lit_tricks.optim.full_batch_methods.FullBatchMethod`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from lit_tricks.modules.noise import noisy_layers
from lit_tricks.optim.second_order import SecondOrderOptimizer

__all__ = ["check_full_batch_module", "check_one_batch", "second_order_class"]


def second_order_class(factory: Callable[..., Any] | None) -> type[SecondOrderOptimizer] | None:
    """The :class:`~lit_tricks.optim.second_order.SecondOrderOptimizer` subclass ``factory`` builds, else None."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory if isinstance(factory, type) and issubclass(factory, SecondOrderOptimizer) else None


def check_full_batch_module(cls: type[SecondOrderOptimizer], model: nn.Module, *, loss: str, weight_decay: float,
                            l1: float, jacobian_reg: float, batch_augment: Any, scheduler: Any) -> None:
    """Raise one ValueError listing every setting the full-batch method ``cls`` cannot honour, each with its fix."""
    name = cls.name
    problems = []
    if cls.needs == "least_squares" and loss != "mse":
        problems.append(f"optimizer={name} minimizes a sum of squares: set module.loss=mse (got {loss!r}), or use "
                        f"optimizer=newton")
    for key, value in (("weight_decay", weight_decay), ("l1", l1), ("jacobian_reg", jacobian_reg)):
        if value:
            problems.append(f"module.{key}={value}: the step uses the data loss only; set module.{key}=0"
                            + (" (optimizer.damping regularizes the step instead)" if key == "weight_decay" else ""))
    if batch_augment is not None:
        problems.append("module.batch_augment: a full-batch method needs the same batch every step; set it to null")
    if scheduler is not None:
        problems.append("scheduler: Lightning does not step LR schedules in manual optimization; set scheduler=none")
    noisy = sorted({type(model.get_submodule(name)).__name__ for name in noisy_layers(model)})
    if noisy:
        problems.append(f"the model has stochastic layers ({', '.join(noisy)}): they make the curvature noise; "
                        f"set module.dropout=0 (and the model's own dropout to 0)")
    if problems:
        raise ValueError(f"optimizer={name} (full-batch second-order): " + "; ".join(problems))


def check_one_batch(name: str, num_batches: int | float, train_size: int | None) -> None:
    """Refuse mini-batches: the training loader must yield the whole training set as one batch."""
    if num_batches != 1:
        size = f" ({train_size} samples)" if train_size is not None else ""
        raise ValueError(f"optimizer={name} is full-batch: the training loader yields {num_batches} batches per "
                         f"epoch; set data.batch_size >= the training set size{size}")
