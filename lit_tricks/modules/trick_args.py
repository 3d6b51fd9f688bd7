"""TrickModule's constructor arguments, checked in their groups (each error names the argument and the value).

The groups, as the docstring of :class:`~lit_tricks.modules.trick_module.TrickModule` lists them: the task (loss,
targets, classes), the surgery of the model (norm, dropout, init), the regularization (weight decay, L1, Jacobian
penalty) and the optimization/evaluation options. The constructor stays flat so that every key keeps its Hydra path
(``module.weight_decay=...`` in presets, sweeps and saved configs).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lit_tricks.modules.initialization import init_weights
from lit_tricks.modules.insertion import DROPOUT_PLACEMENTS
from lit_tricks.modules.sharding import SHARD_MODES
from lit_tricks.modules.surgery import DROPOUT_KINDS, parse_norm
from lit_tricks.modules.tasks import BINNED_POINTS, LOSSES, bin_edges
from lit_tricks.validation import ArgumentError, CheckAll, check_choice, check_number

__all__ = ["check_config", "check_groups", "check_regularization", "check_surgery", "check_task", "check_training"]


def check_task(loss: str, label_smoothing: float, binned_point: str, num_classes: int | None, top_k: int) -> float:
    """The task's arguments; returns ``label_smoothing`` as a float."""
    check_choice("loss", loss, LOSSES)
    check_choice("binned_point", binned_point, BINNED_POINTS)
    if num_classes is not None:
        check_number("num_classes", num_classes, 1, integer=True)
    check_number("top_k", top_k, 0, integer=True)
    smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    if smoothing and loss == "mse":
        raise ArgumentError("label_smoothing", label_smoothing, "must be 0 with loss='mse' (it smooths class targets "
                            "for cross_entropy and binned; mse regresses the targets as given)")
    return smoothing


def check_surgery(norm: str | Mapping[str, Any], dropout: float | None, dropout_kind: str,
                  dropout_placement: str) -> float | None:
    """The model surgery's arguments (``init`` is checked when applied); returns ``dropout`` as a float or None."""
    parse_norm(norm)
    check_choice("dropout_kind", dropout_kind, DROPOUT_KINDS)
    check_choice("dropout_placement", dropout_placement, DROPOUT_PLACEMENTS)
    if dropout is None:
        for arg, value, default in (("dropout_kind", dropout_kind, "dropout"),
                                    ("dropout_placement", dropout_placement, "head")):
            if value != default:
                raise ArgumentError(arg, value, "needs module.dropout=<p> (dropout=null keeps the model's own "
                                    "dropout layers as built)")
        return None
    return check_number("dropout", dropout, 0.0, 1.0)


def check_regularization(weight_decay: float, l1: float, jacobian_reg: float,
                         jacobian_projections: int) -> tuple[float, float, float]:
    """The penalties' arguments; returns ``(weight_decay, l1, jacobian_reg)`` as floats."""
    check_number("jacobian_projections", jacobian_projections, 1, integer=True)
    return (check_number("weight_decay", weight_decay, 0.0), check_number("l1", l1, 0.0),
            check_number("jacobian_reg", jacobian_reg, 0.0))


def check_groups(task: tuple[Any, ...], surgery: tuple[Any, ...], regularization: tuple[Any, ...]
                 ) -> tuple[float, float | None, tuple[float, float, float]]:
    """The three groups' checks with every bad argument reported at once: ``(label_smoothing, dropout,
    (weight_decay, l1, jacobian_reg))``."""
    with CheckAll() as checks:
        label_smoothing = checks(check_task, *task)
        dropout = checks(check_surgery, *surgery)
        penalties = checks(check_regularization, *regularization)
    assert label_smoothing is not None and penalties is not None  # CheckAll raised otherwise
    return label_smoothing, dropout, penalties


def check_training(scheduler_interval: str | None, optimizer_kwargs: Mapping[str, Any], shard: str = "auto") -> None:
    """The optimization options: the interval override, no ``weight_decay`` inside the optimizer partial, and the
    sharding mode."""
    check_choice("scheduler_interval", scheduler_interval, (None, "step", "epoch"))
    check_choice("shard", shard, list(SHARD_MODES))
    if float(optimizer_kwargs.get("weight_decay", 0.0) or 0.0) != 0.0:
        # a plain ValueError: the key is the optimizer's (another config node), not one of the module's arguments
        raise ValueError(f"optimizer: weight_decay={optimizer_kwargs['weight_decay']!r} set in the optimizer; set "
                         "module weight_decay instead (decay is applied through parameter groups)")


def check_config(cls: type, kwargs: Mapping[str, Any], optimizer: Any = None) -> None:
    """The arguments of ``cls`` (TrickModule or a subclass) that do not depend on the model, every problem at once.

    The start-up config check calls it (``TrickModule.check_config``) before any model exists; what depends on the
    model (a norm/dropout that has nowhere to go, zoneout without a GRU, ...) is refused when the module is built.
    """
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"{cls.__name__} got unexpected arguments {unknown}")
    a = {**{k: p.default for k, p in params.items() if p.default is not p.empty}, **kwargs}
    with CheckAll() as checks:
        checks(check_groups, (a["loss"], a["label_smoothing"], a["binned_point"], a["num_classes"], a["top_k"]),
               (a["norm"], a["dropout"], a["dropout_kind"], a["dropout_placement"]),
               (a["weight_decay"], a["l1"], a["jacobian_reg"], a["jacobian_projections"]))
        checks(init_weights, nn.Module(), a["init"])  # the scheme and its options (a module without layers)
        checks(bin_edges, a["loss"], a["bins"])
    check_training(a["scheduler_interval"], getattr(optimizer, "keywords", None) or {}, a["shard"])


def plain_bins(bins: Sequence[float] | None) -> list[float] | None:
    """``bins`` as a list of floats (for the hyperparameters), or None."""
    return None if bins is None else [float(b) for b in bins]
