"""Loss-side regularizers: L1 and L2 penalties over a parameter list, and the Jacobian (input smoothness) penalty."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["jacobian_penalty", "l1_penalty", "l2_penalty"]


def l1_penalty(params: Sequence[Tensor]) -> Tensor:
    """``sum_i |w_i|_1`` over ``params``; its gradient is ``sign(w)`` (0 at exactly 0)."""
    if not params:
        return torch.zeros(())
    return torch.stack([p.abs().sum() for p in params]).sum()


def l2_penalty(params: Sequence[Tensor]) -> Tensor:
    """``0.5 * sum_i ||w_i||^2`` over ``params``; its gradient is ``w`` (so ``lambda * l2_penalty`` is coupled L2)."""
    if not params:
        return torch.zeros(())
    return 0.5 * torch.stack([p.pow(2).sum() for p in params]).sum()


def jacobian_penalty(
    outputs: Tensor, inputs: Tensor, num_projections: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """Random-projection estimate of the mean squared Frobenius norm ``mean_n ||d outputs_n / d inputs_n||_F^2``.

    ``outputs`` (N, C) must have been computed from ``inputs`` (N, ...) with ``inputs.requires_grad``; the graph is
    kept (``create_graph=True``) so the penalty can be backpropagated. With ``v`` uniform on the unit sphere of
    R^C, ``E[||v^T J||^2] = ||J||_F^2 / C``, so the estimate is ``C * mean_v ||v^T J||^2`` (unbiased).

    Hoffman, Roberts & Yaida (2019), "Robust Learning with Jacobian Regularization", Algorithm 1.
    """
    if num_projections < 1:
        raise ValueError(f"num_projections must be an integer >= 1, got {num_projections!r}")
    if not inputs.requires_grad:
        raise ValueError("inputs must require grad (call inputs.requires_grad_() before computing outputs)")
    flat = outputs.reshape(outputs.shape[0], -1)
    n, c = flat.shape
    total = outputs.new_zeros(())
    for _ in range(num_projections):
        v = torch.randn(flat.shape, generator=generator, dtype=flat.dtype, device="cpu").to(flat.device)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        (jv,) = torch.autograd.grad((flat * v).sum(), inputs, create_graph=True)
        total = total + jv.pow(2).sum()
    return c * total / (n * num_projections)
