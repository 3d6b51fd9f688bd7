"""GradientClipping on a real CPU Trainer: every mode, AMP unscaling, the gradient_clip_val clash, exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_tricks.callbacks.clipping import GradientClipping
from lit_tricks.functional.clip import grad_norm
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


class GradProbe(Callback):
    """Records the global grad norm each optimizer step sees after the callbacks before it."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.norms.append(float(grad_norm([p.grad for p in pl_module.parameters() if p.grad is not None])))


def no_dropout_model(seed: int = 0) -> TinyClassifier:
    torch.manual_seed(seed)
    model = TinyClassifier()
    model.net[3].p = 0.0  # dropout draws from the global RNG, which a resume does not restore
    return model


@pytest.mark.parametrize(
    ("kwargs", "bound"),
    [({"mode": "norm", "max_norm": 0.05}, 0.05), ({"mode": "value", "max_value": 1e-3}, None),
     ({"mode": "agc", "agc_factor": 1e-3}, None), ({"mode": "auto", "percentile": 10.0, "history": 4}, None)],
    ids=["norm", "value", "agc", "auto"],
)
def test_modes_clip_and_log(tmp_path: Path, kwargs: dict[str, Any], bound: float | None) -> None:
    clip, probe = GradientClipping(**kwargs), GradProbe()
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, log_every_n_steps=1, callbacks=[clip, probe])
    trainer.fit(no_dropout_model(), BlobsDataModule(shuffle=False))
    steps = trainer.global_step
    assert clip.steps == steps == len(probe.norms) == 8
    pre = clip.filled_history()
    assert pre.shape == (min(steps, clip.history),)
    post = torch.tensor(probe.norms[-len(pre):])
    assert bool((post <= pre * (1 + 1e-6)).all())  # clipping never grows a gradient
    if bound is not None:
        assert max(probe.norms) <= bound * (1 + 1e-5)
    metrics = trainer.callback_metrics
    assert float(metrics["grad/clipped_fraction"]) == float(clip.clipped_fraction)
    if kwargs["mode"] != "auto":  # auto clips only steps above the history's percentile: data-dependent
        assert float(clip.clipped_fraction) > 0
    assert float(metrics["grad/grad_norm"]) == pytest.approx(float(pre[-1]))


def test_norm_mode_with_huge_bound_changes_nothing(tmp_path: Path) -> None:
    clip, probe = GradientClipping(max_norm=1e9), GradProbe()
    tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[clip, probe]).fit(
        no_dropout_model(), BlobsDataModule(shuffle=False)
    )
    assert float(clip.clipped_fraction) == 0.0
    torch.testing.assert_close(torch.tensor(probe.norms), clip.filled_history())


def test_clips_unscaled_gradients_under_amp_grad_scaler(tmp_path: Path) -> None:
    """Lightning unscales before on_before_optimizer_step: the clip bound holds for the true gradients."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    plugin = MixedPrecision("16-mixed", device="cpu", scaler=scaler)
    clip, probe = GradientClipping(max_norm=0.05), GradProbe()
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, plugins=[plugin], callbacks=[clip, probe])
    trainer.fit(no_dropout_model(), BlobsDataModule(shuffle=False))
    assert trainer.precision_plugin.scaler is scaler
    pre = clip.filled_history()
    # true pre-clip norms are O(1); scaled ones would be ~4096x larger
    assert 1e-3 < float(pre.max()) < 50.0
    assert probe.norms and max(probe.norms) <= 0.05 * (1 + 1e-3)
    assert min(probe.norms) > 0.05 * 0.9  # clipped to the bound, not to bound / scale


def test_gradient_clip_val_clash_raises(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, max_epochs=1, gradient_clip_val=1.0, callbacks=[GradientClipping()])
    with pytest.raises(ValueError, match="gradient_clip_val"):
        trainer.fit(no_dropout_model(), BlobsDataModule())


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "bogus"}, {"mode": "value"}, {"max_norm": 0.0}, {"percentile": 101.0}, {"history": 0}],
)
def test_bad_arguments_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)) if "mode" not in kwargs else "mode|max_value"):
        GradientClipping(**kwargs)


def test_manual_clip_and_state_roundtrip() -> None:
    clip = GradientClipping("auto", percentile=50.0, history=3)
    p = torch.nn.Parameter(torch.zeros(4))
    for scale in (1.0, 2.0, 3.0, 4.0):
        p.grad = torch.full((4,), scale)
        clip.clip_([p])
    assert clip.steps == 4
    assert torch.equal(clip.filled_history(), torch.tensor([4.0, 6.0, 8.0]))  # oldest first after wrapping
    other = GradientClipping("auto", percentile=50.0, history=3)
    other.load_state_dict(clip.state_dict())
    assert other.steps == 4 and torch.equal(other.norm_history, clip.norm_history)
    assert torch.equal(other.clipped_steps, clip.clipped_steps)
    assert GradientClipping("norm").state_key != GradientClipping("agc").state_key


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[TinyClassifier, GradientClipping]:
        model, clip = no_dropout_model(), GradientClipping("auto", percentile=25.0, history=5)
        ckpt = ModelCheckpoint(dirpath=root, save_last=True)
        trainer = tiny_trainer(root, max_epochs=max_epochs, callbacks=[clip, ckpt])
        trainer.fit(model, BlobsDataModule(shuffle=False), ckpt_path=ckpt_path)
        return model, clip

    full_model, full_clip = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    last = tmp_path / "part" / "last.ckpt"
    state = torch.load(last, weights_only=True)  # plain types and tensors only
    assert any(k.startswith("GradientClipping") for k in state["callbacks"])
    resumed_model, resumed_clip = run(tmp_path / "part", 4, ckpt_path=str(last))
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_clip.steps == full_clip.steps == 32
    assert torch.equal(resumed_clip.norm_history, full_clip.norm_history)
    assert torch.equal(resumed_clip.clipped_steps, full_clip.clipped_steps)


class ManualClassifier(TinyClassifier):
    """Manual optimization: Lightning still calls on_before_optimizer_step inside ``opt.step()``."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))
        opt.step()


def test_manual_optimization_and_boring_model(tmp_path: Path) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    clip, probe = GradientClipping(max_norm=0.01), GradProbe()
    tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[clip, probe]).fit(
        ManualClassifier(), BlobsDataModule(shuffle=False)
    )
    assert clip.steps == len(probe.norms) == 8 and max(probe.norms) <= 0.01 * (1 + 1e-5)
    boring_clip = GradientClipping("agc")
    tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                 callbacks=[boring_clip]).fit(BoringModel())
    assert boring_clip.steps == 4


def test_fsdp1_is_refused_in_one_line() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    trainer = SimpleNamespace(strategy=FSDPStrategy(), gradient_clip_val=None)
    with pytest.raises(ValueError, match="ModelParallelStrategy") as err:
        GradientClipping().setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert "FSDPStrategy" in str(err.value) and "\n" not in str(err.value)
