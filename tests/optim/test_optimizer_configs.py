"""conf/optimizer: partials without weight_decay; each optimizer lowers the loss on blobs (L-BFGS full-batch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from lit_tricks.config_bases import load_preset
from tests.helpers.tiny import make_blobs

CONF = Path(__file__).resolve().parents[2] / "conf" / "optimizer"
OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))
#: Full-batch second-order methods: bound to a model and stepped on the whole set (tests/optim/test_full_batch_trainer)
SECOND_ORDER = ("newton", "gauss_newton", "lm")


def test_the_six_options_exist_and_sgd_is_the_notes_default() -> None:
    assert {"sgd", "adagrad", "rmsprop", "adam", "adamw", "lbfgs", *SECOND_ORDER} <= set(OPTIONS)
    sgd = load_preset("optimizer", "sgd").optimizer
    assert (sgd._target_, sgd.lr, sgd.momentum, sgd.nesterov) == ("torch.optim.SGD", 0.1, 0.9, True)


@pytest.mark.parametrize("option", [o for o in OPTIONS if o not in SECOND_ORDER])
def test_partial_without_weight_decay_lowers_the_loss(option: str) -> None:
    cfg = load_preset("optimizer", option).optimizer
    assert cfg._partial_ is True
    assert cfg.get("weight_decay", 0) == 0  # decay is module.weight_decay, applied through parameter groups
    data = make_blobs(128)
    x, y = data.tensors
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = instantiate(cfg)(model.parameters())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    first = float(closure())
    for _ in range(3 if option == "lbfgs" else 100):  # full batch: L-BFGS gets the whole set through its closure
        opt.step(closure)
    assert float(closure()) < 0.7 * first
