"""Newton converges in one step on linear regression; Gauss-Newton / Levenberg-Marquardt fit a nonlinear model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_tricks.optim import GaussNewton, LevenbergMarquardt, Newton, check_full_batch


def linear_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]], dtype=torch.float64) + 0.3
    return x, y + 0.1 * torch.randn(64, 1, generator=g, dtype=torch.float64)


def test_newton_solves_linear_regression_in_one_step() -> None:
    x, y = linear_data()
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    opt = Newton(model)
    opt.step(x, y)
    design = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], dim=1)
    exact = torch.linalg.lstsq(design, y).solution.squeeze(-1)
    got = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-10)
    before = opt.loss(x, y)
    opt.step(x, y)  # already at the minimum: a second step does not move
    assert abs(opt.loss(x, y) - before) < 1e-14


class ExpModel(nn.Module):
    """y = a * exp(b * x) + c."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([a, b, c], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.theta
        return a * torch.exp(b * x) + c


def exp_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, 40, dtype=torch.float64)
    return x, 2.0 * torch.exp(-1.3 * x) + 0.5


@pytest.mark.parametrize("method", ["gn", "lm"])
def test_nonlinear_least_squares_to_near_zero(method: str) -> None:
    x, y = exp_data()
    model = ExpModel(1.0, 0.0, 0.0) if method == "gn" else ExpModel(0.2, 1.5, -1.0)  # LM from a far start
    opt = GaussNewton(model) if method == "gn" else LevenbergMarquardt(model)
    losses = [opt.step(x, y) for _ in range(30)]
    final = opt.loss(x, y)
    assert losses[0] > 0.1 and final < 1e-20
    torch.testing.assert_close(model.theta.detach(), torch.tensor([2.0, -1.3, 0.5], dtype=torch.float64))
    if method == "lm":  # damping adapted so the loss never goes up
        assert all(b <= a for a, b in itertools.pairwise(losses))
        assert opt.accepted > 0


def test_refuses_minibatches_and_large_models() -> None:
    x, y = linear_data()
    opt = Newton(nn.Linear(3, 1).double())
    opt.step(x, y)
    with pytest.raises(ValueError, match="full-batch only"):
        opt.step(x[:16], y[:16])
    with pytest.raises(ValueError, match="max_params=100"):
        LevenbergMarquardt(nn.Linear(30, 10), max_params=100)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with pytest.raises(ValueError, match="yields 4 batches"):
        check_full_batch(loader)
    check_full_batch(DataLoader(TensorDataset(x, y), batch_size=64))
