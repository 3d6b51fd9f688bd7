"""The full-batch second-order methods themselves: Newton (exact Hessian), Gauss-Newton, Levenberg-Marquardt.

Each takes a model and the whole training set per step; their ``torch.optim.Optimizer`` faces are in
:mod:`lit_tricks.optim.second_order`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

__all__ = [
    "DEFAULT_MAX_PARAMS", "FullBatchMethod", "GaussNewton", "LevenbergMarquardt", "Newton", "batch_statistics",
    "check_full_batch", "plain_residual",
]

#: The largest model accepted by default: an n x n Hessian / J^T J of 5000 parameters is 200 MB in float64.
DEFAULT_MAX_PARAMS = 5000

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ResidualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_full_batch(loader: Any) -> None:
    """Raise ValueError unless ``loader`` (a DataLoader or any sized iterable of batches) yields exactly one batch."""
    n = len(loader) if isinstance(loader, Sized) else None
    if n != 1:
        raise ValueError(f"second-order methods are full-batch only: the loader must yield one batch holding the "
                         f"whole training set, it yields {n if n is not None else 'an unknown number of'} batches "
                         f"(set batch_size >= the dataset size; for mini-batches use SGD/Adam, or L-BFGS full-batch)")


def plain_residual(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``outputs - targets`` flattened: the residuals of plain least squares."""
    return (outputs - targets).reshape(-1)


def _tracking_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalize with the batch's statistics and leave their
    running statistics alone (no in-place update, which ``torch.func`` transforms cannot trace)."""
    norms = _tracking_norms(model)
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class FullBatchMethod:
    """Shared machinery: the parameter limit, flat views of the parameters, the same-batch guard and the step.

    BatchNorm in training mode: on the same full batch every step, its batch statistics make the loss a
    deterministic function of the weights, so the curvature and the step use them (within
    :func:`batch_statistics`). The running statistics (for eval) are then set to the full batch's at the weights
    after the step (momentum 1 for one forward): the training set's population statistics of the network as it now
    is, which the notes (000) take from the final network, instead of an average lagging over a few full-batch steps.
    """

    method = "second-order method"

    def __init__(self, model: nn.Module, max_params: int = DEFAULT_MAX_PARAMS) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        count = sum(p.numel() for p in self.params)
        if count > max_params:
            gb = count * count * 8 / 1e9
            raise ValueError(f"{self.method}: the model has {count} parameters > max_params={max_params}; its "
                             f"{count}x{count} curvature matrix would take {gb:.1f} GB and O(n^3) to solve. Use "
                             f"optimizer=lbfgs or a first-order optimizer, or raise max_params if you mean it.")
        if count == 0:
            raise ValueError(f"{self.method}: the model has no trainable parameters")
        self.num_params = count
        self._fingerprint: tuple[Any, ...] | None = None
        self.steps = 0

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One step on the full batch ``(inputs, targets)``; returns the loss before the step."""
        self._check_batch(inputs, targets)
        with batch_statistics(self.model):
            loss = self._step(inputs, targets)
        norms = _tracking_norms(self.model)
        if norms:
            momenta = [m.momentum for m in norms]
            for m in norms:
                m.momentum = 1.0
            try:
                with torch.no_grad():
                    self.model(inputs)  # running statistics = the full batch's, at the new weights
            finally:
                for m, momentum in zip(norms, momenta):
                    m.momentum = momentum
        self.steps += 1
        return loss

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        raise NotImplementedError

    def _check_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.no_grad():
            fp = (tuple(inputs.shape), tuple(targets.shape), float(inputs.double().sum()),
                  float(targets.double().sum()))
        if self._fingerprint is None:
            self._fingerprint = fp
        elif fp != self._fingerprint:
            raise ValueError(f"{self.method} is full-batch only: step() got a different batch than before "
                             f"(shapes {fp[0]} vs {self._fingerprint[0]}); pass the whole training set every step. "
                             f"Mini-batch curvature is noise; use SGD/Adam for mini-batches.")

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, p in zip(self.names, self.params):
            out[name] = flat[i: i + p.numel()].view_as(p)
            i += p.numel()
        return out

    def _forward(self, flat: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self._unflatten(flat), (inputs,))

    @torch.no_grad()
    def _write(self, flat: torch.Tensor) -> None:
        for p, value in zip(self.params, self._unflatten(flat).values()):
            p.copy_(value)


def _solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix^-1 rhs``; least squares when the matrix is singular."""
    try:
        return torch.linalg.solve(matrix, rhs)
    except RuntimeError:  # singular
        return torch.linalg.lstsq(matrix, rhs.unsqueeze(-1)).solution.squeeze(-1)


class Newton(FullBatchMethod):
    """Newton's method with the exact Hessian from ``torch.func.hessian``: ``w <- w - lr (H + damping I)^-1 g``.

    ``loss_fn(outputs, targets)`` (default MSE). On a quadratic loss (linear least squares) one step with
    ``lr=1`` lands on the minimum. Far from a minimum H may be indefinite; ``damping`` > 0 helps.
    """

    method = "Newton"

    def __init__(self, model: nn.Module, loss_fn: LossFn = nn.functional.mse_loss, *, lr: float = 1.0,
                 damping: float = 0.0, max_params: int = DEFAULT_MAX_PARAMS) -> None:
        super().__init__(model, max_params)
        if lr <= 0 or damping < 0:
            raise ValueError(f"need lr > 0 and damping >= 0, got lr={lr}, damping={damping}")
        self.loss_fn, self.lr, self.damping = loss_fn, lr, damping

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        with torch.no_grad(), batch_statistics(self.model):
            return float(self.loss_fn(self.model(inputs), targets))

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        def f(flat: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(self._forward(flat, inputs), targets)

        flat = self._flat()
        grad = torch.func.grad(f)(flat)
        if any((isinstance(m, _BatchNorm) and m.training) or parametrize.is_parametrized(m)
               for m in self.model.modules()):
            # torch.func's second derivatives of batch_norm with batch statistics are wrong (torch 2.14; pytorch
            # issue 196699) and weight_norm has no forward-mode derivative: reverse-over-reverse autograd there
            h = torch.autograd.functional.hessian(f, flat, vectorize=True)
        else:
            h = hessian(f)(flat)
        if self.damping:
            h = h + self.damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        self._write(flat - self.lr * _solve(h, grad))
        return float(f(flat))


class GaussNewton(FullBatchMethod):
    """Gauss-Newton for least squares ``L = mean(r^2)``, ``r = residual_fn(model(x), y)``: ``(J^T J) d = J^T r``.

    J (m x n) comes from ``torch.func.jacrev``; the step solves the linearized least-squares problem
    ``min_d ||J d - r||`` (by lstsq, so a rank-deficient J is fine) and ``w <- w - lr d``.
    """

    method = "Gauss-Newton"

    def __init__(self, model: nn.Module, residual_fn: ResidualFn = plain_residual, *, lr: float = 1.0,
                 max_params: int = DEFAULT_MAX_PARAMS) -> None:
        super().__init__(model, max_params)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.residual_fn, self.lr = residual_fn, lr

    def _residuals(self, flat: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.residual_fn(self._forward(flat, inputs), targets).reshape(-1)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        with torch.no_grad(), batch_statistics(self.model):
            return float(self.residual_fn(self.model(inputs), targets).pow(2).mean())

    def _linearize(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = self._flat()
        r = self._residuals(flat, inputs, targets).detach()
        jac = jacrev(lambda w: self._residuals(w, inputs, targets))(flat)
        return flat, r, jac

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        flat, r, jac = self._linearize(inputs, targets)
        d = torch.linalg.lstsq(jac, r.unsqueeze(-1)).solution.squeeze(-1)
        self._write(flat - self.lr * d)
        return float(r.pow(2).mean())


class LevenbergMarquardt(GaussNewton):
    """Levenberg-Marquardt: ``(J^T J + lambda diag(J^T J)) d = J^T r``, lambda adapted so the loss decreases.

    A trial step that lowers the loss is taken and lambda shrinks by ``factor`` (toward Gauss-Newton); one that does
    not is rejected and lambda grows by ``factor`` (toward a short gradient-descent step), up to ``max_tries``
    times per step, kept within ``[min_damping, max_damping]``. The loss therefore never increases. Marquardt (1963)
    scaling by ``diag(J^T J)``. ``lr`` (1 by default) scales the trial step.
    """

    method = "Levenberg-Marquardt"

    def __init__(self, model: nn.Module, residual_fn: ResidualFn = plain_residual, *, damping: float = 1e-3,
                 factor: float = 10.0, max_tries: int = 20, min_damping: float = 1e-12, max_damping: float = 1e16,
                 max_params: int = DEFAULT_MAX_PARAMS) -> None:
        super().__init__(model, residual_fn, lr=1.0, max_params=max_params)
        if damping <= 0 or factor <= 1 or max_tries < 1:
            raise ValueError(f"need damping > 0, factor > 1, max_tries >= 1; got {damping}, {factor}, {max_tries}")
        self.damping, self.factor, self.max_tries, self.min_damping = damping, factor, max_tries, min_damping
        # at the minimum every trial is rejected: without a ceiling damping grows factor**max_tries a step, to inf
        self.max_damping = max_damping
        self.accepted = 0
        self.rejected = 0

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One accepted LM step (or none if ``max_tries`` trials all failed); returns the loss before the step."""
        flat, r, jac = self._linearize(inputs, targets)
        before = float(r.pow(2).mean())
        jtj = jac.T @ jac
        jtr = jac.T @ r
        scale = torch.diag(jtj).clamp_min(1e-12)
        for _ in range(self.max_tries):
            d = _solve(jtj + self.damping * torch.diag(scale), jtr)
            trial = flat - self.lr * d
            with torch.no_grad():
                after = float(self._residuals(trial, inputs, targets).pow(2).mean())
            if math.isfinite(after) and after < before:
                self._write(trial)
                self.damping = max(self.damping / self.factor, self.min_damping)
                self.accepted += 1
                break
            self.damping = min(self.damping * self.factor, self.max_damping)
            self.rejected += 1
        return before
