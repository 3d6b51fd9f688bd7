"""Issue 25's defects: each option acts as its config says or is refused at start-up in one line.

(1) DropConnect / weight noise with ``dropout_placement=every_hidden`` reach conv layers; (2) the full-batch
second-order methods refuse every stochastic layer at start-up and train BatchNorm models on the full-batch statistics;
(3) ``dropout_placement=head`` keeps the state-dict keys. Oracles: ``F.conv2d`` / ``F.linear`` on the hand-masked
weights, ``torch.autograd.functional.hessian`` of the hand-written BatchNorm loss, the user's own network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_tricks.models import MLP, ConvNet1d, GRU1d, SmallCNN
from lit_tricks.modules.trick_module import TrickModule
from lit_tricks.optim import GaussNewtonOptimizer, LevenbergMarquardtOptimizer, NewtonOptimizer

SECOND_ORDER = {"newton": functools.partial(NewtonOptimizer, damping=1e-3), "gauss_newton": GaussNewtonOptimizer,
                "lm": LevenbergMarquardtOptimizer}


def _cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=3, in_channels=1, image_size=8, width=4, stages=2, convs_per_stage=1)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    return text


# ------------------------------------------------------------------------------- (1) weight noise on conv layers
@pytest.mark.parametrize("kind", ["dropconnect", "weight_noise", "additive_weight_noise"])
def test_weight_kinds_every_hidden_act_on_every_hidden_conv(kind: str) -> None:
    plain = _cnn()
    keys = list(plain.state_dict())
    module = TrickModule(_cnn(), dropout=0.3, dropout_kind=kind, dropout_placement="every_hidden")
    model = module.model
    assert list(model.state_dict()) == keys  # the same parameters under the same names
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(getattr(c, "p", 0.0) == 0.3 for c in convs)
    conv = convs[0]
    x = torch.randn(4, 1, 8, 8)
    torch.manual_seed(5)
    out = conv.train()(x)
    torch.manual_seed(5)  # the same draw, written out per kind
    w = conv.weight
    if kind == "dropconnect":
        noisy = w * torch.empty_like(w).bernoulli_(0.7) / 0.7
    elif kind == "weight_noise":
        noisy = w * (1.0 + math.sqrt(0.3 / 0.7) * torch.randn_like(w))
    else:
        noisy = w + 0.3 * torch.randn_like(w)
    torch.testing.assert_close(out, F.conv2d(x, noisy, conv.bias, padding=1))
    torch.testing.assert_close(conv.eval()(x), F.conv2d(x, w, conv.bias, padding=1))
    model.train()
    assert not torch.equal(model(x), model(x))  # two training-mode forwards differ: the regularizer acts


def test_weight_kinds_on_a_model_without_hidden_layers_are_refused_in_one_line() -> None:
    torch.manual_seed(0)
    gru = GRU1d(num_classes=3, in_channels=1, image_size=(1, 8), hidden_size=2)
    with pytest.raises(ValueError, match="every_hidden") as err:
        TrickModule(gru, dropout=0.3, dropout_kind="dropconnect", dropout_placement="every_hidden")
    _one_line(err.value)


# --------------------------------------------------------------------- (2) second-order methods: stochastic layers
@pytest.mark.parametrize("method", sorted(SECOND_ORDER))
@pytest.mark.parametrize(("kind", "placement"), [("gaussian", "head"), ("dropconnect", "head"),
                                                 ("weight_noise", "every_hidden"),
                                                 ("additive_weight_noise", "head")])
def test_second_order_refuses_every_stochastic_layer_at_start_up(method: str, kind: str, placement: str) -> None:
    torch.manual_seed(0)
    model = MLP(num_classes=2, in_channels=1, image_size=(1, 3), hidden=[3])
    with pytest.raises(ValueError, match=rf"optimizer={method} .*module.dropout=0") as err:
        TrickModule(model, loss="mse", dropout=0.2, dropout_kind=kind, dropout_placement=placement,
                    optimizer=SECOND_ORDER[method])
    _one_line(err.value)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return MLP(num_classes=2, in_channels=1, image_size=(1, 3), hidden=[3], batch_norm=True)


def _bn_loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shapes: list[torch.Size]) -> torch.Tensor:
    """The MLP's full-batch loss written out: Linear -> BatchNorm (batch statistics, biased var) -> ReLU -> Linear."""
    parts, i = [], 0
    for s in shapes:
        parts.append(flat[i: i + math.prod(s)].view(s))
        i += math.prod(s)
    w1, b1, g, beta, w2, b2 = parts
    h = x.flatten(1) @ w1.T + b1
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5) * g + beta
    out = torch.relu(h) @ w2.T + b2
    return F.mse_loss(out, F.one_hot(y, 2).to(out.dtype))


def test_newton_with_batchnorm_steps_on_the_full_batch_statistics_and_keeps_them_for_eval() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        module = TrickModule(_bn_model(), loss="mse", optimizer=SECOND_ORDER["newton"])
        opt = module.configure_optimizers()
        x, y = torch.randn(32, 1, 1, 3), torch.arange(32) % 2
        params = [p for p in module.model.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        shapes = [p.shape for p in params]
        grad = torch.autograd.grad(_bn_loss(flat.requires_grad_(True), x, y, shapes), flat)[0]
        hess = torch.autograd.functional.hessian(lambda w: _bn_loss(w, x, y, shapes), flat.detach())
        expected = flat.detach() - torch.linalg.solve(hess + 1e-3 * torch.eye(flat.numel()), grad)
        bn = module.model.features[2]
        module.train()
        opt.step(closure=lambda: (x, y))
        torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in params]), expected)
        # the running statistics are the full batch's at the new weights (unbiased variance, as torch keeps it)
        with torch.no_grad():
            h = module.model.features[1](x.flatten(1))
        torch.testing.assert_close(bn.running_mean, h.mean(0))
        torch.testing.assert_close(bn.running_var, h.var(0, unbiased=True))
        assert int(bn.num_batches_tracked) == 1 and bn.momentum == 0.1
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("method", ["gauss_newton", "lm"])
def test_least_squares_methods_train_a_batchnorm_model(method: str) -> None:
    module = TrickModule(_bn_model(), loss="mse", optimizer=SECOND_ORDER[method])
    opt = module.configure_optimizers()
    torch.manual_seed(1)
    x, y = torch.randn(32, 1, 1, 3), torch.arange(32) % 2
    module.train()
    losses = [opt.step(closure=lambda: (x, y)) for _ in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert int(module.model.features[2].num_batches_tracked) == 4


# ------------------------------------------------------------------------------------ (3) head placement: same keys
class UserNet(nn.Module):
    """The user's own network, with no Dropout layer: ``dropout_placement=head`` must insert one."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


@pytest.mark.parametrize("kind", ["dropout", "gaussian"])
@pytest.mark.parametrize("make", [UserNet, lambda: ConvNet1d(num_classes=3, image_size=(1, 12), kernels=(3,))])
def test_head_placement_keeps_the_state_dict_keys(make: Callable[[], nn.Module], kind: str) -> None:
    torch.manual_seed(0)
    net = make()
    keys = list(net.state_dict())
    module = TrickModule(net, dropout=0.5, dropout_kind=kind, dropout_placement="head")
    assert list(module.model.state_dict()) == keys
    x = torch.randn(64, 1, 1, 12)
    module.train()
    assert not torch.equal(module(x), module(x))  # the inserted dropout acts in training
    torch.manual_seed(0)
    fresh = make()  # the trained weights load into the user's own network, strictly
    fresh.load_state_dict(module.model.state_dict())
    module.eval()
    torch.testing.assert_close(fresh(x), module(x))


def test_head_placement_loads_a_checkpoint_saved_with_the_old_sequential_keys() -> None:
    torch.manual_seed(0)
    module = TrickModule(UserNet(), dropout=0.5)
    state = {k.replace("out.weight", "out.1.weight").replace("out.bias", "out.1.bias"): v.clone() + 1.0
             for k, v in module.model.state_dict().items()}
    module.model.load_state_dict(state)  # strict: the keys of a head once wrapped in Sequential(Dropout, head)
    assert torch.equal(module.model.out.weight, state["out.1.weight"])


def test_surgered_models_survive_pickle_and_deepcopy() -> None:
    """The inserted head dropout (a pre-hook), noisy convs and zoneout GRUs are plain modules and module-level hooks:
    a pickled or deep-copied model computes the same and keeps its noise (EMA copies, DDP spawn, torch.save)."""
    import copy
    import io

    torch.manual_seed(0)
    models = [TrickModule(UserNet(), dropout=0.5).model,
              TrickModule(_cnn(), dropout=0.3, dropout_kind="dropconnect", dropout_placement="every_hidden").model,
              TrickModule(GRU1d(num_classes=3, in_channels=1, image_size=(1, 6), hidden_size=2), dropout=0.2,
                          dropout_kind="zoneout", dropout_placement="every_hidden").model]
    inputs = [torch.randn(8, 1, 1, 12), torch.randn(8, 1, 8, 8), torch.randn(8, 1, 1, 6)]
    for model, x in zip(models, inputs):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for twin in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
            assert list(twin.state_dict()) == list(model.state_dict())
            model.eval(), twin.eval()
            torch.testing.assert_close(twin(x), model(x))
            twin.train()
            assert not torch.equal(twin(x), twin(x))
