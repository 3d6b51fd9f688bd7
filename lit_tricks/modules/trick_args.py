"""TrickModule's constructor arguments, checked in their groups (each error names the argument and the value).

The groups, as the docstring of :class:`~lit_tricks.modules.trick_module.TrickModule` lists them: the task (loss,
targets, classes), the surgery of the model (norm, dropout, init), the regularization (weight decay, L1, Jacobian
penalty) and the optimization/evaluation options. The constructor stays flat so that every key keeps its Hydra path
(``module.weight_decay=...`` in presets, sweeps and saved configs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lit_tricks.augment.tta import parse_tta
from lit_tricks.modules.insertion import DROPOUT_PLACEMENTS
from lit_tricks.modules.surgery import DROPOUT_KINDS, parse_norm
from lit_tricks.modules.tasks import BINNED_POINTS, LOSSES
from lit_tricks.validation import CheckAll, check_choice, check_number

__all__ = ["check_groups", "check_regularization", "check_surgery", "check_task", "check_training"]


def check_task(loss: str, label_smoothing: float, binned_point: str, num_classes: int | None, top_k: int,
               tta: Any = False) -> float:
    """The task's arguments (and the test-time augmentation); returns ``label_smoothing`` as a float."""
    check_choice("loss", loss, LOSSES)
    parse_tta(tta)
    check_choice("binned_point", binned_point, BINNED_POINTS)
    if num_classes is not None:
        check_number("num_classes", num_classes, 1, integer=True)
    check_number("top_k", top_k, 0, integer=True)
    return check_number("label_smoothing", label_smoothing, 0.0, 1.0)


def check_surgery(norm: str | Mapping[str, Any], dropout: float | None, dropout_kind: str,
                  dropout_placement: str) -> float | None:
    """The model surgery's arguments (``init`` is checked when applied); returns ``dropout`` as a float or None."""
    parse_norm(norm)
    check_choice("dropout_kind", dropout_kind, DROPOUT_KINDS)
    check_choice("dropout_placement", dropout_placement, DROPOUT_PLACEMENTS)
    return None if dropout is None else check_number("dropout", dropout, 0.0, 1.0)


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


def check_training(scheduler_interval: str | None, optimizer_kwargs: Mapping[str, Any]) -> None:
    """The optimization options: the interval override, and no ``weight_decay`` inside the optimizer partial."""
    check_choice("scheduler_interval", scheduler_interval, (None, "step", "epoch"))
    if float(optimizer_kwargs.get("weight_decay", 0.0) or 0.0) != 0.0:
        # a plain ValueError: the key is the optimizer's (another config node), not one of the module's arguments
        raise ValueError(f"optimizer: weight_decay={optimizer_kwargs['weight_decay']!r} set in the optimizer; set "
                         "module weight_decay instead (decay is applied through parameter groups)")


def plain_bins(bins: Sequence[float] | None) -> list[float] | None:
    """``bins`` as a list of floats (for the hyperparameters), or None."""
    return None if bins is None else [float(b) for b in bins]
