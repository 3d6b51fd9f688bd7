"""TrickModule with a real CPU Trainer: the acceptance checks of the foundation issue and the module bits of issue 5."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_tricks.config_bases import load_preset
from lit_tricks.models import MLP, SmallCNN, torchvision_model
from lit_tricks.modules import TrickModule
from tests.helpers.tiny import BlobsDataModule, make_blobs, tiny_trainer

ROOT = Path(__file__).resolve().parents[2]


def _net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, classes))


def _images(n: int = 48, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y * 2, :] += 0.7  # class = which row is bright
    return TensorDataset(x, y)


class _Shift(nn.Module):
    """A preprocessing module whose statistics are buffers (as the DataModules' preprocessors)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


def _quiet(tmp_path: Path, **kw: Any) -> Any:
    kw.setdefault("limit_val_batches", 0)
    kw.setdefault("enable_checkpointing", False)
    return tiny_trainer(tmp_path, **kw)


# ------------------------------------------------------------------------------------------------------ acceptance
def test_resnet18_group8_decay_groups_and_identical_accuracy_after_reload(tmp_path: Path) -> None:
    def build() -> nn.Module:
        return torchvision_model("resnet18", num_classes=3, in_channels=1, image_size=8)

    torch.manual_seed(0)
    shift = _Shift()
    shift.mean.fill_(0.1)
    module = TrickModule(build(), norm="group:8", weight_decay=1e-3, preprocess=shift,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in module.modules()) == 20
    conv_linear = {f"{n}.weight" for n, m in module.model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert set(module._decay_names) == conv_linear
    opt = module.configure_optimizers()
    decayed = [g for g in opt.param_groups if g["lit_tricks_decay"] > 0]  # decoupled: applied by the module
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert len(decayed) == 1 and {names[id(p)] for p in decayed[0]["params"]} == conv_linear

    train, test = DataLoader(_images(32), batch_size=16), DataLoader(_images(32, seed=1), batch_size=16)
    trainer = _quiet(tmp_path, max_epochs=1)
    trainer.fit(module, train)
    acc = trainer.test(module, test, verbose=False)[0]["test/acc"]
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # plain hyperparameters only
    assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.sgd.SGD"
    assert "model" not in ckpt["hyper_parameters"]

    reloaded = TrickModule.load_from_checkpoint(path, model=build(), preprocess=_Shift())
    assert float(reloaded.preprocess.mean) == pytest.approx(0.1)
    assert _quiet(tmp_path).test(reloaded, test, verbose=False)[0]["test/acc"] == acc
    x = next(iter(test))[0]
    module.eval()
    reloaded.eval()
    assert torch.equal(module(x), reloaded(x))
    assert reloaded.configure_optimizers().defaults["momentum"] == 0.9  # the optimizer partial is rebuilt
    rebuilt = TrickModule.load_from_checkpoint(path, model=build()).eval()  # preprocessing rebuilt from its class
    assert isinstance(rebuilt.preprocess, _Shift) and torch.equal(rebuilt(x), module(x))


def test_reload_without_a_rebuildable_preprocessor_names_the_argument(tmp_path: Path) -> None:
    class Local(_Shift):  # not importable by name
        pass

    trainer = _quiet(tmp_path, max_steps=1)
    trainer.fit(TrickModule(_net(), preprocess=Local()), DataLoader(make_blobs(16), batch_size=16))
    trainer.save_checkpoint(tmp_path / "local.ckpt")
    with pytest.raises(ValueError, match="preprocess: this checkpoint carries input preprocessing"):
        TrickModule.load_from_checkpoint(tmp_path / "local.ckpt", model=_net())


def _fit_steps(module: TrickModule, tmp_path: Path, steps: int = 3) -> None:
    dm = BlobsDataModule(n=64, batch_size=16, shuffle=False)
    _quiet(tmp_path, max_steps=steps).fit(module, dm)


def _reference(net: nn.Module, make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int = 3,
               loss_extra: Callable[[nn.Module], torch.Tensor] | None = None,
               before_step: Callable[[torch.optim.Optimizer], None] | None = None) -> nn.Module:
    ds = make_blobs(64, 8, 3, seed=0)
    opt = make_opt(net)
    for i, (x, y) in enumerate(DataLoader(ds, batch_size=16)):
        if i == steps:
            break
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        if loss_extra is not None:
            loss = loss + loss_extra(net)
        loss.backward()
        if before_step is not None:
            before_step(opt)
        opt.step()
    return net


def _weights(net: nn.Module) -> list[torch.Tensor]:
    return [net[0].weight, net[2].weight]


def _biases(net: nn.Module) -> list[torch.Tensor]:
    return [net[0].bias, net[2].bias]


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("opt", [
    functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    functools.partial(torch.optim.Adam, lr=0.01),
    functools.partial(torch.optim.AdamW, lr=0.01),  # no coupled mode of its own: the loss term is added
])
def test_coupled_l2_equals_half_lambda_norm_squared_in_the_loss(tmp_path: Path, opt: Any) -> None:
    lam = 0.05
    module = TrickModule(_net(), weight_decay=lam, decoupled=False, optimizer=opt)
    _fit_steps(module, tmp_path)

    def l2(net: nn.Module) -> torch.Tensor:
        return 0.5 * lam * sum(w.pow(2).sum() for w in _weights(net))

    ref = _reference(_net(), lambda n: opt(n.parameters(), weight_decay=0.0), loss_extra=l2)
    _assert_same(module.model, ref)


@pytest.mark.parametrize("opt", [functools.partial(torch.optim.Adam, lr=0.01),
                                 functools.partial(torch.optim.AdamW, lr=0.01)])
def test_decoupled_matches_torch_adamw(tmp_path: Path, opt: Any) -> None:
    lam = 0.5
    module = TrickModule(_net(), weight_decay=lam, decoupled=True, optimizer=opt)
    _fit_steps(module, tmp_path)

    def adamw(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": _weights(net), "weight_decay": lam},
                                  {"params": _biases(net), "weight_decay": 0.0}], lr=0.01)

    _assert_same(module.model, _reference(_net(), adamw))


def test_decoupled_sgd_shrinks_weights_by_one_minus_lr_lambda(tmp_path: Path) -> None:
    lam = 0.5
    module = TrickModule(_net(), weight_decay=lam, optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    _fit_steps(module, tmp_path)

    def shrink(opt: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for w in opt.param_groups[0]["params"][0:1] + opt.param_groups[0]["params"][2:3]:
                w.mul_(1 - 0.1 * lam)

    ref = _reference(_net(), lambda n: torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9), before_step=shrink)
    _assert_same(module.model, ref)


def test_l1_gradient_is_lambda_sign_w_on_decayed_weights_only() -> None:
    module = TrickModule(_net(), l1=0.3)
    module.compute_loss = lambda out, y: (out * 0).sum()  # type: ignore[method-assign]
    x, y = make_blobs(8, 8, 3).tensors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module.training_step((x, y), 0).backward()
    for w in _weights(module.model):
        assert torch.allclose(w.grad, 0.3 * torch.sign(w.detach()))
    assert all(float(b.grad.abs().sum()) == 0.0 for b in _biases(module.model))


def test_weight_norm_outputs_equal_at_init() -> None:
    torch.manual_seed(0)
    model = MLP(num_classes=5, image_size=8)
    x = torch.rand(4, 1, 8, 8)
    before = model(x)
    module = TrickModule(model, norm="weight")
    assert torch.allclose(module(x), before, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"norm": {"kind": "group", "num_groups": 0}}, "num_groups"),
    ({"init": "he"}, "init must be one of"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
    ({"weight_decay": -1e-4}, r"weight_decay must be a number in \[0, inf\)"),
    ({"l1": -1.0}, "l1 must be"),
    ({"loss": "hinge"}, "loss must be one of"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"dropout_kind": "spatial"}, "dropout_kind must be one of"),
    ({"loss": "binned"}, "bins"),
    ({"optimizer": functools.partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4)}, "set module weight_decay"),
])
def test_bad_values_raise_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrickModule(_net(), **kwargs)


# ------------------------------------------------------------------------------------------------- issue 5 bits
def test_binned_regression_beats_mse_on_a_bimodal_target(tmp_path: Path) -> None:
    def data(seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(512, 1, generator=g) * 2 - 1
        upper = torch.rand(512, generator=g) < 0.8  # 80% of the mass 1.5 above x, 20% 1.5 below
        y = x[:, 0] + torch.where(upper, 1.5, -1.5) + 0.1 * torch.randn(512, generator=g)
        return TensorDataset(x, y)

    train, test = DataLoader(data(0), batch_size=512), DataLoader(data(1), batch_size=512)
    bins = torch.linspace(-3.0, 3.0, 31).tolist()
    errors = {}
    for loss, outputs in (("binned", 30), ("mse", 1)):
        torch.manual_seed(0)
        model = MLP(num_classes=outputs, in_features=1, hidden=(32,))
        module = TrickModule(model, loss=loss, bins=bins if loss == "binned" else None, binned_point="median",
                             optimizer=functools.partial(torch.optim.Adam, lr=0.03))
        trainer = _quiet(tmp_path, max_epochs=80)
        trainer.fit(module, train)
        errors[loss] = trainer.test(module, test, verbose=False)[0]["test/mae"]
    assert errors["binned"] < 0.8 < errors["mse"], errors
    pred = module.predict_step(next(iter(test)), 0)
    assert isinstance(pred, torch.Tensor) and pred.shape == (512, 1)


def test_binned_predicts_value_mean_and_distribution() -> None:
    module = TrickModule(MLP(num_classes=4, in_features=2, hidden=()), loss="binned", bins=[0, 1, 2, 3, 4])
    out = module.predict_step((torch.rand(3, 2), torch.zeros(3)), 0)
    assert set(out) == {"value", "mean", "probs"} and torch.allclose(out["value"], out["mean"])
    assert torch.allclose(out["probs"].sum(-1), torch.ones(3))


def test_lbfgs_full_batch_trains_and_minibatches_warn(tmp_path: Path) -> None:
    lbfgs = functools.partial(torch.optim.LBFGS, lr=1.0, max_iter=10, line_search_fn="strong_wolfe")
    module = TrickModule(_net(), optimizer=lbfgs, weight_decay=1e-3)
    x, y = make_blobs(128, 8, 3, seed=0).tensors
    with torch.no_grad():
        before = float(F.cross_entropy(module(x), y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet(tmp_path, max_epochs=3).fit(module, DataLoader(TensorDataset(x, y), batch_size=128))
    assert not [w for w in caught if "L-BFGS" in str(w.message)]
    with torch.no_grad():
        after = float(F.cross_entropy(module(x), y))
    assert after < 0.2 * before and (module(x).argmax(-1) == y).float().mean() > 0.95
    with pytest.warns(UserWarning, match="L-BFGS is a full-batch method but gets 4 mini-batches"):
        _quiet(tmp_path, max_steps=1).fit(TrickModule(_net(), optimizer=lbfgs), DataLoader(TensorDataset(x, y),
                                                                                             batch_size=32))


def test_mixup_soft_targets_in_training_only(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    module = TrickModule(MLP(num_classes=3, image_size=8, hidden=(16,)), batch_augment=v2.MixUp(num_classes=3),
                         label_smoothing=0.1)
    seen: list[torch.Tensor] = []
    original = module.compute_loss

    def spy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(y)
        return original(out, y)

    module.compute_loss = spy  # type: ignore[method-assign]
    loader = DataLoader(_images(32), batch_size=16)
    _quiet(tmp_path, max_steps=2, limit_val_batches=1).fit(module, loader, loader)
    train_targets = [y for y in seen if y.ndim == 2]
    assert len(train_targets) == 2 and all(torch.allclose(y.sum(-1), torch.ones(16)) for y in train_targets)
    assert any(y.ndim == 1 for y in seen)  # validation saw the hard labels


def test_tta_averages_flipped_probabilities() -> None:
    torch.manual_seed(0)
    module = TrickModule(SmallCNN(num_classes=3), tta=True).eval()
    x = torch.rand(4, 1, 8, 8)
    expected = 0.5 * (module(x).softmax(-1) + module(x.flip(-1)).softmax(-1))
    assert torch.allclose(module.predict_step((x,), 0), expected, atol=1e-6)


def test_weight_variants_are_logged_side_by_side(tmp_path: Path) -> None:
    module = TrickModule(_net())
    head = module.model[2]

    @contextlib.contextmanager
    def zero_head() -> Iterator[None]:
        saved = [p.detach().clone() for p in head.parameters()]
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(head.parameters(), saved):
                    p.copy_(s)

    module.weight_variants.add("zero", zero_head)
    weight = head.weight.detach().clone()
    out = tiny_trainer(tmp_path).validate(module, BlobsDataModule(n=64), verbose=False)[0]
    assert {"val/acc", "val/loss", "val/acc_zero", "val/loss_zero"} <= set(out)
    assert out["val/loss_zero"] == pytest.approx(math.log(3), rel=1e-5) and out["val/loss"] != out["val/loss_zero"]
    assert torch.equal(head.weight, weight)


def test_num_classes_inferred_top5_and_default_optimizer(tmp_path: Path) -> None:
    module = TrickModule(MLP(num_classes=7, in_features=8, hidden=(16,)))
    assert module.num_classes == 7
    out = tiny_trainer(tmp_path).validate(module, BlobsDataModule(n=64, num_classes=7), verbose=False)[0]
    assert "val/top5_acc" in out and out["val/top5_acc"] >= out["val/acc"]
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.1 and opt.defaults["momentum"] == 0.9
    lazy = TrickModule(nn.Sequential(nn.Unflatten(1, (2, 4)), nn.Conv1d(2, 3, 4), nn.Flatten()))
    assert lazy.num_classes is None
    tiny_trainer(tmp_path).validate(lazy, BlobsDataModule(n=64), verbose=False)
    assert lazy.num_classes == 3


def test_scheduler_interval_and_jacobian_penalty(tmp_path: Path) -> None:
    module = TrickModule(_net(), jacobian_reg=0.1, scheduler_interval="step",
                         optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                         scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = _quiet(tmp_path, max_steps=2)
    trainer.fit(module, BlobsDataModule(n=64, batch_size=16))
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)
    assert float(trainer.callback_metrics["train/penalty"]) > 0
    assert "0.weight" in module.describe_param_groups()


def test_stop_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    def run(epochs: int, ckpt: str | None = None, save: Path | None = None) -> TrickModule:
        module = TrickModule(_net(), weight_decay=0.05, l1=1e-3,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
        trainer = _quiet(tmp_path, max_epochs=epochs)
        trainer.fit(module, BlobsDataModule(n=64, batch_size=16, shuffle=False), ckpt_path=ckpt)
        if save is not None:
            trainer.save_checkpoint(save)
        return module

    full = run(3)
    run(1, save=tmp_path / "half.ckpt")
    resumed = run(3, ckpt=str(tmp_path / "half.ckpt"))
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_configs_instantiate() -> None:
    for name in ("cnn_small", "mlp", "resnet18"):
        model = instantiate(load_preset("model", name).model, num_classes=10, in_channels=1,
                            image_size=(8, 8))
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    for name in ("trick", "plain"):
        module = instantiate(load_preset("module", name).module, model=copy.deepcopy(_net()),
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))
        assert isinstance(module, TrickModule)
        assert all(not type(v).__module__.startswith("omegaconf") for v in module.hparams.values())
    grouped = instantiate(OmegaConf.create({"_target_": "lit_tricks.modules.trick_module.TrickModule",
                                            "norm": {"kind": "group", "num_groups": 2}}), model=SmallCNN(width=4))
    assert sum(isinstance(m, nn.GroupNorm) for m in grouped.modules()) == 4
    assert grouped.hparams["norm"] == {"kind": "group", "num_groups": 2}


def test_lbfgs_decoupled_decay_once_per_step_on_decayed_tensors_only(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import lit_tricks.modules.trick_module as tm

    calls: list[list[dict[str, Any]]] = []
    monkeypatch.setattr(tm, "decoupled_weight_decay_", lambda groups: calls.append(list(groups)))
    lbfgs = functools.partial(torch.optim.LBFGS, lr=0.5, max_iter=5)
    module = TrickModule(_net(), optimizer=lbfgs, weight_decay=0.1)
    x, y = make_blobs(64, 8, 3, seed=0).tensors
    _quiet(tmp_path, max_steps=2).fit(module, DataLoader(TensorDataset(x, y), batch_size=64))
    assert len(calls) == 2  # the closure ran up to 5 times per step; the decay once
    decayed = {id(w) for w in _weights(module.model)}
    assert all({id(p) for p in g[0]["params"]} == decayed and g[0]["lit_tricks_decay"] == 0.1 for g in calls)
