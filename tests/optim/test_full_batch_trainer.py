"""optimizer=newton|gauss_newton|lm through TrickModule and a real Trainer (manual optimization, one full batch per
epoch): linear least squares lands on numpy's lstsq solution; mini-batches and unsupported settings are refused."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_tricks.config_bases import load_preset
from lit_tricks.modules.trick_module import TrickModule
from lit_tricks.optim import GaussNewtonOptimizer, LevenbergMarquardtOptimizer, NewtonOptimizer
from tests.helpers.tiny import tiny_trainer

CONF = Path(__file__).resolve().parents[2] / "conf" / "optimizer"


def least_squares(n: int = 96, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.5, -2.0, 0.5, 0.25]) + 0.3 + 0.2 * rng.normal(size=n)
    return x.astype(np.float32), y.astype(np.float32)


def loaders(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[DataLoader[tuple[torch.Tensor, ...]], ...]:
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y).unsqueeze(-1))
    return DataLoader(data, batch_size=batch_size, shuffle=True), DataLoader(data, batch_size=len(data))


def fit(tmp_path: Path, option: str, x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int) -> TrickModule:
    torch.manual_seed(0)
    module = TrickModule(nn.Sequential(nn.Linear(x.shape[1], 1)), loss="mse",
                         optimizer=instantiate(load_preset("optimizer", option).optimizer))
    train, val = loaders(x, y, batch_size)
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert trainer.global_step == epochs  # one optimizer step per epoch (the step counter of manual optimization)
    return module


@pytest.mark.parametrize(("option", "epochs"), [("newton", 1), ("gauss_newton", 1), ("lm", 6)])
def test_least_squares_lands_on_the_closed_form_solution(tmp_path: Path, option: str, epochs: int) -> None:
    x, y = least_squares()
    module = fit(tmp_path, option, x, y, batch_size=len(x), epochs=epochs)
    design = np.hstack([x, np.ones((len(x), 1), dtype=np.float32)]).astype(np.float64)
    exact = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
    linear = module.model[0]
    got = np.concatenate([linear.weight.detach().numpy().ravel(), linear.bias.detach().numpy()])
    np.testing.assert_allclose(got, exact, atol=2e-4)  # float32 model; the start is far (init) from the solution
    if option == "lm":
        opt = module.optimizers().optimizer
        assert opt.method.accepted >= 2  # LM took real steps (it rejects every trial at the minimum)
        assert opt.param_groups[0]["damping"] <= 1e16  # and the damping stops at its ceiling (was 1e75 after 6 steps)


def test_mini_batches_are_refused_with_the_fix(tmp_path: Path) -> None:
    x, y = least_squares()
    with pytest.raises(ValueError, match=r"optimizer=newton is full-batch: the training loader yields 3 batches per "
                                         r"epoch; set data.batch_size >= the training set size \(96 samples\)"):
        fit(tmp_path, "newton", x, y, batch_size=32, epochs=1)


def test_settings_a_full_batch_method_cannot_honour_are_refused_in_one_line() -> None:
    newton = functools.partial(NewtonOptimizer, lr=1.0)
    with pytest.raises(ValueError, match=r"set module.weight_decay=0 .*set scheduler=none.*set module.dropout=0"):
        TrickModule(nn.Sequential(nn.Linear(4, 3)), weight_decay=1e-3, dropout=0.5, optimizer=newton,
                    scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    with pytest.raises(ValueError, match=r"optimizer=lm minimizes a sum of squares: set module.loss=mse"):
        TrickModule(nn.Sequential(nn.Linear(4, 3)), optimizer=LevenbergMarquardtOptimizer)
    with pytest.raises(ValueError, match=r"max_params=5000"):
        GaussNewtonOptimizer(nn.Linear(100, 100).parameters())
    module = TrickModule(nn.Sequential(nn.Linear(4, 3)), optimizer=newton)  # cross-entropy is fine for Newton
    assert module.automatic_optimization is False
    assert TrickModule(nn.Sequential(nn.Linear(4, 3))).automatic_optimization is True


def test_lm_damping_is_optimizer_state_and_survives_a_state_dict_round_trip() -> None:
    model = nn.Linear(4, 1)
    opt = LevenbergMarquardtOptimizer(model.parameters(), damping=0.5)
    opt.bind(model, nn.functional.mse_loss)
    x, y = (torch.from_numpy(a) for a in least_squares())
    opt.step(lambda: (x, y.unsqueeze(-1)))
    assert opt.param_groups[0]["damping"] == pytest.approx(0.05)  # one accepted step: damping / factor
    fresh = LevenbergMarquardtOptimizer(nn.Linear(4, 1).parameters())
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["damping"] == pytest.approx(0.05)
