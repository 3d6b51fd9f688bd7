"""TrickModule's weight decay, coupled and decoupled, and elastic net (L1 + L2), under every optimizer preset of
``conf/optimizer/``, against update rules written out by hand (the papers' / torch docs' pseudo-code), two steps so
the optimizers' state (momentum, moments, accumulators) enters. The data gradient comes from autograd on a plain
``x @ W.T + b`` copy; only the weight is decayed, never the bias. Float64 throughout: tolerances of 1e-12 cover a
few roundings of values <= 10 (eps 2.2e-16)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from lit_tricks.config_bases import load_preset
from lit_tricks.modules.trick_module import TrickModule
from tests.helpers.tiny import tiny_trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*")
CONF = Path(__file__).resolve().parents[2] / "conf" / "optimizer"
TOL = {"rtol": 1e-12, "atol": 1e-12}
WD, L1 = 0.05, 0.01


def _node(name: str) -> Any:
    """conf/optimizer/<name>.yaml as a run composes it (its base config holds every default)."""
    return load_preset("optimizer", name).optimizer


def _preset(name: str) -> Any:
    return instantiate(_node(name))


def _data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.arange(16) % 2
    w = torch.randn(2, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    return x, y, w, b


def _module(name: str, decoupled: bool, l1: float = 0.0) -> TrickModule:
    w, b = _data()[2:]
    net = nn.Linear(3, 2).double()
    with torch.no_grad():
        net.weight.copy_(w), net.bias.copy_(b)
    return TrickModule(net, weight_decay=WD, decoupled=decoupled, l1=l1, optimizer=_preset(name))


def _grad(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    gw, gb = torch.autograd.grad(F.cross_entropy(x @ w.T + b, y), (w, b))
    return gw, gb


def _module_steps(module: TrickModule, x: Tensor, y: Tensor, steps: int = 2) -> tuple[Tensor, Tensor]:
    """Lightning's order per step: training_step, backward, on_before_optimizer_step (the decoupled hook), step."""
    opt = module.configure_optimizers()
    for i in range(steps):
        module.on_train_batch_start((x, y), i)
        opt.zero_grad()
        module.training_step((x, y), i).backward()
        module.on_before_optimizer_step(opt)
        opt.step()
    return module.model.weight.detach(), module.model.bias.detach()


class Rule:
    """One optimizer's update written out: ``update(i, p, g, t)`` returns the step to subtract from parameter i."""

    def __init__(self, name: str) -> None:
        self.name, self.kw, self.state = name, dict(_node(name)), {}  # type: ignore[arg-type]

    def update(self, i: int, g: Tensor, t: int) -> Tensor:
        kw, s = self.kw, self.state.setdefault(i, {})
        lr = kw["lr"]
        if self.name == "sgd":  # heavy ball with Nesterov's look-ahead, dampening 0
            s["buf"] = g.clone() if t == 1 else kw["momentum"] * s["buf"] + g
            return lr * (g + kw["momentum"] * s["buf"]) if kw["nesterov"] else lr * s["buf"]
        if self.name in ("adam", "adamw"):  # Kingma & Ba (2015), Algorithm 1 with torch's eps placement
            b1, b2 = kw["betas"]
            s["m"] = (1 - b1) * g + (b1 * s["m"] if t > 1 else 0)
            s["v"] = (1 - b2) * g * g + (b2 * s["v"] if t > 1 else 0)
            return lr * (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + kw["eps"])
        if self.name == "rmsprop":  # Hinton's lecture 6e, torch's eps outside the root
            s["sq"] = (1 - kw["alpha"]) * g * g + (kw["alpha"] * s["sq"] if t > 1 else 0)
            return lr * g / (s["sq"].sqrt() + kw["eps"])
        if self.name == "adagrad":  # Duchi et al. (2011): the root of the summed squared gradients
            s["sum"] = g * g + (s["sum"] if t > 1 else 0)
            return lr * g / (s["sum"].sqrt() + kw["eps"])
        raise AssertionError(self.name)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("l1", [0.0, L1], ids=["l2", "elastic_net"])
def test_two_steps_follow_the_hand_written_rule(name: str, decoupled: bool, l1: float) -> None:
    x, y, w, b = _data()
    rule = Rule(name)
    lr = rule.kw["lr"]
    for t in (1, 2):
        gw, gb = _grad(w, b, x, y)
        gw = gw + l1 * torch.sign(w)  # L1 on the decayed tensors: its subgradient enters the optimizer
        if decoupled:  # w <- w (1 - lr wd), then the optimizer on the data gradient (Loshchilov & Hutter, 2019)
            w = w * (1 - lr * WD)
        else:  # coupled L2: the gradient of 0.5 wd ||w||^2 enters the optimizer
            gw = gw + WD * w
        w, b = w - rule.update(0, gw, t), b - rule.update(1, gb, t)
    got_w, got_b = _module_steps(_module(name, decoupled, l1), x, y)
    torch.testing.assert_close(got_w, w, **TOL)
    torch.testing.assert_close(got_b, b, **TOL)


@pytest.mark.parametrize("decoupled", [True, False])
def test_lbfgs_preset_decays_once_per_step_under_lightning(tmp_path: Path, decoupled: bool) -> None:
    """L-BFGS evaluates its closure several times a step; the oracle is torch's L-BFGS on the objective written out:
    coupled adds 0.5 wd ||W||^2 to the loss, decoupled shrinks W by (1 - lr wd) once, after the first backward."""
    x, y, w, b = _data()
    ref_w, ref_b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    opt = _preset("lbfgs")([ref_w, ref_b])
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        opt.zero_grad()
        loss = F.cross_entropy(x @ ref_w.T + ref_b, y) + (0.0 if decoupled else 0.5 * WD * ref_w.pow(2).sum())
        loss.backward()
        calls += 1
        if decoupled and calls == 1:
            with torch.no_grad():
                ref_w.mul_(1 - opt.param_groups[0]["lr"] * WD)
        return loss

    opt.step(closure)
    module = _module("lbfgs", decoupled)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, loader)
    torch.testing.assert_close(module.model.weight.detach(), ref_w.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module.model.bias.detach(), ref_b.detach(), rtol=1e-10, atol=1e-10)
    assert calls > 1 and not math.isclose(float(ref_w.sum()), float(w.sum()))
