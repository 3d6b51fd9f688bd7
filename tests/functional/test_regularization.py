"""L1/L2 penalties and the random-projection Jacobian penalty against closed forms."""

from __future__ import annotations

import pytest
import torch

from lit_tricks.functional.regularization import jacobian_penalty, l1_penalty, l2_penalty


def test_l1_gradient_is_sign_and_l2_gradient_is_w() -> None:
    w = torch.tensor([[1.5, -2.0], [0.0, 3.0]], requires_grad=True)
    (0.3 * l1_penalty([w])).backward()
    assert torch.equal(w.grad, 0.3 * torch.sign(w.detach()))
    w.grad = None
    (0.3 * l2_penalty([w])).backward()
    assert torch.allclose(w.grad, 0.3 * w.detach())
    assert float(l1_penalty([w.detach()])) == 6.5 and float(l2_penalty([])) == 0.0


def test_jacobian_penalty_is_exact_for_one_output() -> None:
    lin = torch.nn.Linear(5, 1)
    x = torch.randn(4, 5, requires_grad=True)
    pen = jacobian_penalty(lin(x), x)
    assert torch.allclose(pen, lin.weight.pow(2).sum())


def test_jacobian_penalty_is_unbiased_for_a_linear_map() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4, bias=False)
    x = torch.randn(3, 6, requires_grad=True)
    pen = jacobian_penalty(lin(x), x, num_projections=800, generator=torch.Generator().manual_seed(1))
    exact = lin.weight.pow(2).sum()
    assert abs(float(pen) / float(exact) - 1.0) < 0.1
    pen.backward()  # differentiable (create_graph)
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_jacobian_penalty_validates() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="must require grad"):
        jacobian_penalty(x * 2, x)
    with pytest.raises(ValueError, match="num_projections"):
        jacobian_penalty(x, x.requires_grad_(), num_projections=0)
