"""Every TrickModule trick option x model kind x optimizer kind: the option acts (an observable difference against the
option off, from the same weights), already holds (the model already is what the option asks: asserted), or is
refused at start-up (the constructor or ``configure_optimizers``) in one line. No silent no-op (issue 25).

Each cell's outcome is also checked against the designed one (:func:`expected`), so a trick that starts refusing a
combination it should serve fails here too. In-process and tiny: a forward, or one optimizer step, per cell.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from lit_tricks.augment import batch_mix
from lit_tricks.models import MLP, ConvNet1d, GRU1d, SmallCNN
from lit_tricks.modules.trick_module import TrickModule
from lit_tricks.optim import GaussNewtonOptimizer, LevenbergMarquardtOptimizer, NewtonOptimizer

N = 8


def _resnet_block() -> nn.Module:
    """A torchvision ResNet in miniature: stem conv-BN-ReLU, torchvision's BasicBlock (its ReLU module applied twice,
    a residual add), pooling, a Linear head."""
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), BasicBlock(2, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))


#: model kind -> (builder, input shape of one sample)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda: MLP(num_classes=3, image_size=(1, 12), hidden=[6]), (1, 1, 12)),
    "logreg": (lambda: MLP(num_classes=3, image_size=(1, 12), hidden=[]), (1, 1, 12)),
    "cnn1d": (lambda: ConvNet1d(num_classes=3, image_size=(1, 12), channels=4, kernels=(3, 3)), (1, 1, 12)),
    "gru": (lambda: GRU1d(num_classes=3, image_size=(1, 12), hidden_size=2), (1, 1, 12)),
    "cnn": (lambda: SmallCNN(num_classes=3, image_size=8, width=2, convs_per_stage=1), (1, 8, 8)),
    "resnet_block": (_resnet_block, (1, 8, 8)),
}
NORMED = {"cnn", "resnet_block"}  # built with BatchNorm
#: a norm on selected layers only: BatchNorm after the first hidden layer, or kept at the first norm layer only
SELECTED: dict[str, dict[str, Any]] = {
    "mlp": {"kind": "batch", "layers": ["features.1"]}, "logreg": {"kind": "batch", "layers": ["features.*"]},
    "cnn1d": {"kind": "batch", "layers": ["features.0"]}, "gru": {"kind": "batch", "layers": ["gru"]},
    "cnn": {"kind": "none", "layers": ["features.5"]}, "resnet_block": {"kind": "none", "layers": ["3.bn*"]},
}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
    "lbfgs": functools.partial(torch.optim.LBFGS, lr=0.1, max_iter=1),
    "newton": functools.partial(NewtonOptimizer, damping=1e-2),
    "gauss_newton": GaussNewtonOptimizer,
    "lm": LevenbergMarquardtOptimizer,
}
SECOND_ORDER = ("newton", "gauss_newton", "lm")

DROPOUT_KINDS = ("dropout", "gaussian", "dropconnect", "weight_noise", "additive_weight_noise", "zoneout")
#: option -> (TrickModule keyword arguments, how it shows)
OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    **{f"{k}@{p}": ({"dropout": 0.3, "dropout_kind": k, "dropout_placement": p}, "noise")
       for k in DROPOUT_KINDS for p in ("head", "every_hidden")},
    "kind_without_p": ({"dropout": None, "dropout_kind": "gaussian"}, "noise"),
    "placement_without_p": ({"dropout": None, "dropout_placement": "every_hidden"}, "noise"),
    **{f"norm={n}": ({"norm": n}, "forward") for n in ("batch", "group:2", "layer", "none")},
    "norm=weight": ({"norm": "weight"}, "step"),
    "norm=selected": ({}, "forward"),
    **{f"init={s}": ({"init": s}, "weights")
       for s in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")},
    "decay_decoupled": ({"weight_decay": 0.1, "decoupled": True}, "step"),
    "decay_coupled": ({"weight_decay": 0.1, "decoupled": False}, "step"),
    "l1": ({"l1": 0.01}, "step"),
    "jacobian_reg": ({"jacobian_reg": 1.0}, "step"),
    "label_smoothing": ({"label_smoothing": 0.2}, "step"),
    "mixup": ({"batch_augment": batch_mix("mixup", alpha=1.0, num_classes=3)}, "loss"),
    "cutmix": ({"batch_augment": batch_mix("cutmix", alpha=1.0, num_classes=3)}, "loss"),
    "tta": ({"tta": True}, "predict"),
}


def expected(option: str, model: str, opt: str) -> str:
    """The designed outcome of a cell: acts | holds | refused."""
    if option.endswith("without_p"):
        return "refused"  # a dropout kind or placement with dropout=null (the model's own dropout) would do nothing
    kind, _, placement = option.partition("@")
    stochastic = kind in DROPOUT_KINDS
    if opt in SECOND_ORDER and (stochastic or option in ("decay_decoupled", "decay_coupled", "l1", "jacobian_reg",
                                                         "mixup", "cutmix")):
        return "refused"  # the full-batch methods step on the data loss of a deterministic model only
    if opt in ("gauss_newton", "lm") and option == "label_smoothing":
        return "refused"  # least squares: loss=mse, which takes no label smoothing
    if stochastic:
        if kind == "zoneout":
            return "acts" if model == "gru" and placement == "every_hidden" else "refused"
        return "refused" if placement == "every_hidden" and model in ("gru", "logreg") else "acts"
    if option in ("norm=batch", "norm=group:2", "norm=layer", "norm=selected") and model in ("gru", "logreg"):
        return "refused"  # no norm layer to swap, no hidden activation to insert one at
    if (option == "norm=batch" and model in NORMED) or (option == "norm=none" and model not in NORMED):
        return "holds"
    return "acts"


def _step(module: TrickModule, opt_name: str, x: Tensor, y: Tensor) -> None:
    """One training step as Lightning takes it (the decay hook after backward; L-BFGS through its closure)."""
    optimizer = module.configure_optimizers()
    if opt_name in SECOND_ORDER:
        optimizer.step(closure=lambda: (x, y))
        return
    module.on_train_batch_start((x, y), 0)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = module.training_step((x, y), 0)
        loss.backward()
        module.on_before_optimizer_step(optimizer)
        return loss

    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


def _build(option: str, model: str, opt: str, on: bool) -> TrickModule:
    kwargs = dict(OPTIONS[option][0]) if on else {}
    if on and option == "norm=selected":
        kwargs["norm"] = SELECTED[model]
    loss = "mse" if opt in ("gauss_newton", "lm") else "cross_entropy"
    net = MODELS[model][0]()
    net.load_state_dict(_base_state(model))  # option on and off start from the same weights
    return TrickModule(net, loss=loss, optimizer=OPTIMIZERS[opt], **kwargs)


@functools.cache
def _base_state(model: str) -> dict[str, Tensor]:
    """The weights of the model kind built from seed 0 (a state dict loads faster than a deepcopy)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MODELS[model][0]().state_dict()


def _norm_kinds(module: TrickModule) -> set[str]:
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {type(m).__name__ for m in module.model.modules() if isinstance(m, norms)}


def _outcome(option: str, model: str, opt: str) -> str:
    torch.default_generator.manual_seed(0)  # every draw of the cell (CPU only: no CUDA seeding per cell)
    x = torch.randn(N, *MODELS[model][1])
    y = torch.arange(N) % 3
    try:
        on = _build(option, model, opt, on=True)
        on.configure_optimizers()
    except (ValueError, TypeError) as err:
        text = str(err)
        assert "\n" not in text and len(text) < 500, f"not one line: {text}"
        return "refused"
    off = _build(option, model, opt, on=False)
    how = OPTIONS[option][1]
    if expected(option, model, opt) == "holds":
        assert list(on.state_dict()) == list(off.state_dict()) and _norm_kinds(on) == _norm_kinds(off)
        assert _norm_kinds(on) <= {"BatchNorm1d", "BatchNorm2d"}  # norm=batch on BN models, none on norm-free ones
        return "holds"
    if how == "noise":
        if "zoneout" not in option:  # zoneout's eval is its expectation; the others' eval is the plain network
            on.eval(), off.eval()  # (before any training forward moves the BatchNorm statistics)
            torch.testing.assert_close(on(x), off(x))
        on.train(), off.train()
        assert torch.equal(off(x), off(x))
        assert not torch.equal(on(x), on(x)), "two training-mode forwards are equal: the noise does not act"
    elif how == "forward":
        on.train(), off.train()
        assert not torch.allclose(on(x), off(x)), "the forward is the option-off one"
    elif how == "weights":
        pairs = [(a, b) for (n, a), b in zip(on.model.named_parameters(), off.model.parameters()) if a.dim() >= 2]
        assert pairs and all(not torch.equal(a, b) for a, b in pairs), "a weight kept its default init"
    elif how == "step":
        on.train(), off.train()
        _step(on, opt, x, y)
        _step(off, opt, x, y)
        on.eval(), off.eval()
        assert not torch.allclose(on(x), off(x)), "one step lands where the option-off step does"
    elif how == "loss":  # a random batch transform may leave one batch as it is (CutMix's box can be empty): 4 draws
        on.train(), off.train()
        plain = off.training_step((x, y), 0)
        assert any(not torch.allclose(on.training_step((x, y), 0), plain) for _ in range(4)), "the loss is plain"
    else:  # predict
        on.eval(), off.eval()
        assert not torch.allclose(on.predict_step(x, 0), off.predict_step(x, 0)), "predictions are the plain ones"
    return "acts"


ROWS = [(o, m) for o in OPTIONS for m in MODELS]


@pytest.mark.parametrize(("option", "model"), ROWS, ids=["-".join(r) for r in ROWS])
def test_each_optimizer_acts_holds_or_refuses_in_one_line(option: str, model: str) -> None:
    """One row of the table: the option on the model under every optimizer kind."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        warnings.filterwarnings("ignore", message=".*L2 loss.*")
        outcomes = {}
        for opt in OPTIMIZERS:
            try:
                outcomes[opt] = _outcome(option, model, opt)
            except AssertionError as err:
                raise AssertionError(f"{option} x {model} x {opt}: {err}") from err
    assert outcomes == {opt: expected(option, model, opt) for opt in OPTIMIZERS}
