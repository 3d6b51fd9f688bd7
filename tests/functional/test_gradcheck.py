"""gradient_check against a correct float64 tanh MLP and a custom Function whose backward is 1% off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lit_tricks.callbacks.gradient_check import GradientCheck, GradientCheckError
from lit_tricks.functional.gradcheck import gradient_check, relative_error, verdict
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


class OffByOnePercent(torch.autograd.Function):
    """y = x * w with a backward for w scaled by 1.01 (a subtle bug)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).sum(0) * 1.01


class BuggyScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return OffByOnePercent.apply(x, self.scale)


def ce(module: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(module(x), y)


def tanh_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def test_tanh_mlp_relative_error_below_1e7() -> None:
    report = gradient_check(tanh_mlp(), batch(), ce, entries_per_tensor=20)
    assert len(report.tensors) == 4
    assert report.max_error < 1e-7
    assert report.verdict == "good"
    assert not report.has_kinks and report.eps == 1e-5  # smooth: the larger step, less round-off


def test_off_by_one_percent_backward_is_flagged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), BuggyScale(8), nn.Linear(8, 3))
    report = gradient_check(model, batch(), ce)
    assert report.worst is not None and report.worst.name == "2.scale"
    assert 5e-3 < report.max_error < 2e-2
    assert report.verdict in ("suspicious", "wrong")
    assert "2.scale" in report.summary()


def test_module_itself_untouched_and_kinks_noted() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    report = gradient_check(model, (batch()[0].float(), batch()[1]), ce, max_samples=4)
    assert report.has_kinks and "kinks" in report.summary() and report.eps == 1e-6  # kinks: a smaller step
    assert report.max_error < 1e-4  # dropout is off during the check, so the loss is deterministic
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_verdicts_and_relative_error() -> None:
    assert verdict(0.5) == "wrong" and verdict(1e-3) == "suspicious" and verdict(1e-8) == "good"
    assert verdict(1e-5, has_kinks=True) == "ok" and verdict(1e-5, has_kinks=False) == "suspicious"
    err = relative_error(torch.tensor([1.0, 0.0, 2.0, 1e-6]), torch.tensor([1.01, 0.0, -2.0, 2e-6]), floor=1e-3)
    assert torch.allclose(err, torch.tensor([0.01 / 1.01, 0.0, 2.0, 1e-3]))
    with pytest.raises(ValueError, match="entries_per_tensor"):
        gradient_check(tanh_mlp(), batch(), ce, entries_per_tensor=0)


class BuggyClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), BuggyScale(16), nn.Linear(16, 3))


def test_callback_passes_on_correct_module_and_fails_fast_naming_worst_tensor(tmp_path: Path) -> None:
    ok = GradientCheck()
    tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[ok]).fit(
        TinyClassifier(), datamodule=BlobsDataModule())
    assert ok.report is not None and ok.report.has_kinks and ok.done
    assert ok.state_dict() == {"version": 1, "done": True}

    torch.manual_seed(0)
    model = BuggyClassifier()
    before = model.net[0].weight.detach().clone()
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[GradientCheck()])
    with pytest.raises(GradientCheckError, match=r"net\.2\.scale"):
        trainer.fit(model, datamodule=BlobsDataModule())
    assert trainer.global_step == 0 and torch.equal(before, model.net[0].weight)  # failed before any step


def another_cpu(loss_fn: Any, ulps: float = 4.0) -> Any:
    """``loss_fn`` whose every value is off by up to ``ulps`` float64 ulps, as another CPU's summation order gives."""
    g = torch.Generator().manual_seed(123)  # its own stream: gradient_check reseeds the global RNG per evaluation

    def perturbed(module: nn.Module, b: Any) -> torch.Tensor:
        loss = loss_fn(module, b)
        u = 2 * torch.rand((), generator=g, dtype=torch.float64) - 1
        return loss * (1 + ulps * torch.finfo(torch.float64).eps * u)

    return perturbed


class TinyInput(nn.Module):
    """A tanh MLP whose first input feature is scaled by 1e-6: its weight column gets gradients ~1e-7."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * torch.tensor([1e-6, 1, 1, 1, 1], dtype=x.dtype))


@pytest.mark.parametrize("model_seed", range(4))
def test_round_off_of_any_cpu_never_makes_a_correct_model_suspicious(model_seed: int) -> None:
    torch.manual_seed(model_seed)
    model = TinyInput(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double())
    report = gradient_check(model, batch(), another_cpu(ce), entries_per_tensor=40)
    tiny = [abs(a) for a, i in zip(report.tensors[0].analytic, report.tensors[0].indices) if i % 5 == 0]
    assert tiny and max(tiny) < 1e-5  # the check did sample the tiny entries
    assert report.verdict == "good", report.summary()


def test_one_percent_bug_in_small_gradients_is_still_flagged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), BuggyScale(8), nn.Linear(8, 3))
    with torch.no_grad():
        model[3].weight.mul_(1e-2)  # the buggy tensor's gradients shrink ~100x, to ~1e-4
    report = gradient_check(model, batch(), another_cpu(ce))
    scale = next(t for t in report.tensors if t.name == "2.scale")
    assert max(abs(a) for a in scale.analytic) < 1e-3
    assert report.worst is scale and report.verdict in ("suspicious", "wrong"), report.summary()
