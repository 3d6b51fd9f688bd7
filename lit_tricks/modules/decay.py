"""Where TrickModule's weight decay is applied: by the optimizer, by a decoupled step after backward, or as a loss.

Every parameter group carries ``lit_tricks_decay`` (the module's ``weight_decay`` for decayed tensors, 0 for the
rest). With the optimizer that fits the requested kind of decay the optimizer applies it (``native``); otherwise
its ``weight_decay`` is zeroed and the module applies it: ``hook`` (decoupled, ``w -= lr * wd * w`` before each
optimizer step) or ``loss`` (coupled L2, ``wd * sum w^2`` added to the loss).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from lit_tricks.optim.second_order import SecondOrderOptimizer

__all__ = ["COUPLED_NATIVE", "DECAY_MODES", "ONE_GROUP_OPTIMIZERS", "build_optimizer", "decay_mode"]

DECAY_MODES = ("native", "hook", "loss")
#: Optimizers whose own ``weight_decay`` is classic (coupled) L2: ``grad += wd * w``.
COUPLED_NATIVE = ("SGD", "Adam", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "ASGD")
#: Optimizers that take one flat parameter list, no parameter groups (torch's L-BFGS, the second-order methods).
ONE_GROUP_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.LBFGS, SecondOrderOptimizer)


def _target_class(factory: Callable[..., Any]) -> Any:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def takes_one_group(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` (an optimizer class or a partial of one) builds an optimizer of ONE_GROUP_OPTIMIZERS."""
    target = _target_class(factory)
    return isinstance(target, type) and issubclass(target, ONE_GROUP_OPTIMIZERS)


def build_optimizer(factory: Callable[..., Any], groups: list[dict[str, Any]]) -> tuple[torch.optim.Optimizer, bool]:
    """``(optimizer, flat)``: ``factory(groups)``, or ``factory(all params)`` (``flat``) for a one-group optimizer."""
    if takes_one_group(factory):
        return factory([p for g in groups for p in g["params"]]), True
    return factory(groups), False


def decay_mode(optimizer: torch.optim.Optimizer, weight_decay: float, decoupled: bool, flat: bool) -> str:
    """``native`` | ``hook`` | ``loss`` (see the module docstring) for this optimizer and the requested decay."""
    if weight_decay == 0.0:
        return "native"
    native_decoupled = isinstance(optimizer, torch.optim.AdamW) or any(
        g.get("decoupled_weight_decay", False) for g in optimizer.param_groups
    )
    native_coupled = type(optimizer).__name__ in COUPLED_NATIVE and not native_decoupled
    if flat:  # one group holds decayed and non-decayed tensors: the optimizer cannot tell them apart
        native_decoupled = native_coupled = False
    if decoupled:
        return "native" if native_decoupled else "hook"
    return "native" if native_coupled else "loss"
