"""Second-order methods for small full-batch problems: Newton (exact Hessian), Gauss-Newton, Levenberg-Marquardt.

The methods (:class:`Newton`, :class:`GaussNewton`, :class:`LevenbergMarquardt`, in
:mod:`lit_tricks.optim.full_batch_methods`, re-exported here) take a model and a full batch. Their
``torch.optim.Optimizer`` faces (:class:`NewtonOptimizer`, ... built from parameters like any optimizer, so a config
``optimizer=newton`` can name them) are bound to the model and its loss, then each ``step(closure)`` takes one step
with ``closure()`` returning the whole training set ``(inputs, targets)``; TrickModule does this in Lightning's
manual optimization. The notes (003): Newton's update ``w - H^-1 g`` needs no learning rate but an n x n Hessian,
which is why it is for small problems only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from lit_tricks.optim.full_batch_methods import (
    DEFAULT_MAX_PARAMS,
    FullBatchMethod,
    GaussNewton,
    LevenbergMarquardt,
    LossFn,
    Newton,
    ResidualFn,
    check_full_batch,
    plain_residual,
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

class SecondOrderOptimizer(torch.optim.Optimizer):
    """Base of the ``torch.optim.Optimizer`` faces of the full-batch methods (see the module docstring).

    The hyperparameters live in the (single) parameter group, so schedulers, LR monitors and checkpoints see them;
    Levenberg-Marquardt writes its adapted ``damping`` back there, so a resumed run continues with it.
    """

    #: The method's name in configs and messages (``optimizer=<name>``).
    name: ClassVar[str] = "second_order"
    #: The problem the method solves: "loss" (any twice-differentiable loss) or "least_squares" (residuals).
    needs: ClassVar[str] = "loss"

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], max_params: int = DEFAULT_MAX_PARAMS) -> None:
        super().__init__(params, defaults)
        count = sum(p.numel() for g in self.param_groups for p in g["params"])
        if count > max_params:
            raise ValueError(f"optimizer={self.name}: the model has {count} parameters > max_params={max_params}; its "
                             f"{count}x{count} curvature matrix would take {count * count * 8 / 1e9:.1f} GB. Use a "
                             f"smaller model, optimizer=lbfgs or a first-order optimizer, or raise "
                             f"optimizer.max_params if you mean it.")
        self.max_params = max_params
        self.method: FullBatchMethod | None = None

    def bind(self, model: nn.Module, loss_fn: LossFn, residual_fn: ResidualFn | None = None) -> None:
        """Name the function the parameters belong to: ``model`` (its trainable parameters must be exactly this
        optimizer's) and ``loss_fn(outputs, targets)`` or, for the least-squares methods, ``residual_fn``."""
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        theirs = {id(p) for p in model.parameters() if p.requires_grad}
        if mine != theirs:
            raise ValueError(f"optimizer={self.name}: bind() needs the model whose trainable parameters are exactly "
                             f"this optimizer's ({len(mine)} tensors), got a model with {len(theirs)}")
        self.method = self._build(model, loss_fn, residual_fn)

    def _build(self, model: nn.Module, loss_fn: LossFn, residual_fn: ResidualFn | None) -> FullBatchMethod:
        raise NotImplementedError

    def _sync_in(self, method: Any) -> None:
        group = self.param_groups[0]
        method.lr = float(group["lr"])

    def _sync_out(self, method: Any) -> None:
        """Write state the method adapted back into the parameter group."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> float:  # type: ignore[override]
        """One full-batch step; ``closure()`` returns the whole training set ``(inputs, targets)``. Returns the loss
        before the step."""
        if self.method is None:
            raise RuntimeError(f"optimizer={self.name}: call bind(model, loss_fn) before step() (TrickModule does)")
        if closure is None:
            raise ValueError(f"optimizer={self.name}: step(closure) needs closure() -> (inputs, targets), the full "
                             f"training batch")
        with torch.enable_grad():
            batch = closure()
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise TypeError(f"optimizer={self.name}: closure() must return the full batch (inputs, targets), got "
                            f"{type(batch).__name__}")
        method: Any = self.method
        self._sync_in(method)
        with torch.enable_grad():
            loss = float(method.step(batch[0], batch[1]))
        self._sync_out(self.method)
        return loss


class NewtonOptimizer(SecondOrderOptimizer):
    """:class:`Newton` as an optimizer: ``w <- w - lr (H + damping I)^-1 g`` with the exact Hessian of the loss."""

    name = "newton"

    def __init__(self, params: Iterable[Any], lr: float = 1.0, damping: float = 0.0,
                 max_params: int = DEFAULT_MAX_PARAMS) -> None:
        if not lr > 0 or not damping >= 0:
            raise ValueError(f"optimizer=newton: need lr > 0 and damping >= 0, got lr={lr!r}, damping={damping!r}")
        super().__init__(params, {"lr": lr, "damping": damping}, max_params)

    def _build(self, model: nn.Module, loss_fn: LossFn, residual_fn: ResidualFn | None) -> FullBatchMethod:
        group = self.param_groups[0]
        return Newton(model, loss_fn, lr=group["lr"], damping=group["damping"], max_params=self.max_params)

    def _sync_in(self, method: Any) -> None:
        super()._sync_in(method)
        method.damping = float(self.param_groups[0]["damping"])


class GaussNewtonOptimizer(SecondOrderOptimizer):
    """:class:`GaussNewton` as an optimizer: least squares ``mean(r^2)``, ``w <- w - lr lstsq(J, r)``."""

    name = "gauss_newton"
    needs = "least_squares"

    def __init__(self, params: Iterable[Any], lr: float = 1.0, max_params: int = DEFAULT_MAX_PARAMS) -> None:
        if not lr > 0:
            raise ValueError(f"optimizer=gauss_newton: need lr > 0, got lr={lr!r}")
        super().__init__(params, {"lr": lr}, max_params)

    def _build(self, model: nn.Module, loss_fn: LossFn, residual_fn: ResidualFn | None) -> FullBatchMethod:
        return GaussNewton(model, residual_fn or plain_residual, lr=self.param_groups[0]["lr"],
                           max_params=self.max_params)


class LevenbergMarquardtOptimizer(SecondOrderOptimizer):
    """:class:`LevenbergMarquardt` as an optimizer; its adapted ``damping`` lives in the parameter group."""

    name = "lm"
    needs = "least_squares"

    def __init__(self, params: Iterable[Any], lr: float = 1.0, damping: float = 1e-3, factor: float = 10.0,
                 max_tries: int = 20, max_params: int = DEFAULT_MAX_PARAMS) -> None:
        if not lr > 0 or not damping > 0 or not factor > 1 or not (isinstance(max_tries, int) and max_tries >= 1):
            raise ValueError(f"optimizer=lm: need lr > 0, damping > 0, factor > 1, max_tries >= 1; got lr={lr!r}, "
                             f"damping={damping!r}, factor={factor!r}, max_tries={max_tries!r}")
        super().__init__(params, {"lr": lr, "damping": damping, "factor": factor, "max_tries": max_tries},
                         max_params)

    def _build(self, model: nn.Module, loss_fn: LossFn, residual_fn: ResidualFn | None) -> FullBatchMethod:
        group = self.param_groups[0]
        return LevenbergMarquardt(model, residual_fn or plain_residual, damping=group["damping"],
                                  factor=group["factor"], max_tries=group["max_tries"], max_params=self.max_params)

    def _sync_in(self, method: Any) -> None:
        super()._sync_in(method)
        group = self.param_groups[0]
        method.damping, method.factor, method.max_tries = float(group["damping"]), group["factor"], group["max_tries"]

    def _sync_out(self, method: Any) -> None:
        self.param_groups[0]["damping"] = float(method.damping)
