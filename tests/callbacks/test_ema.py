"""EMAWeights on a real Trainer (CPU): closed-form values, raw checkpoints, EMA twins, swaps, exact resume."""

from __future__ import annotations

import copy
import pickle
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from lit_tricks.callbacks.early_stopping import EarlyStopping
from lit_tricks.callbacks.ema import EMAWeights, ema_checkpoint_path
from lit_tricks.functional.ema import strip_wrapper_prefixes
from lit_tricks.weight_variants import SupportsWeightVariants, WeightVariants
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


def no_dropout(model: TinyClassifier) -> TinyClassifier:
    """Resume tests run without dropout: Lightning does not restore the global RNG state on resume (and creates
    the first resumed epoch's loader iterator at another point of the RNG stream), so dropout masks would differ."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


class Probe(Callback):
    """Records raw weights after each optimizer step and the weights seen inside val/test batches."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor]] = []
        self.last_step = 0
        self.val_weights: list[dict[str, Tensor]] = []
        self.test_weights: list[dict[str, Tensor]] = []
        self.val_raw_before: list[dict[str, Tensor]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self.last_step:
            self.last_step = trainer.global_step
            self.steps.append(_clone(pl_module))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self.val_weights.append(_clone(pl_module))

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self.test_weights.append(_clone(pl_module))


def _clone(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fit(tmp_path: Path, callbacks: list[Callback], max_epochs: int = 2, ckpt_path: str | None = None,
         model: pl.LightningModule | None = None, **kw: Any) -> tuple[pl.Trainer, pl.LightningModule]:
    torch.manual_seed(0)
    model = model if model is not None else no_dropout(TinyClassifier())
    trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks, **kw)
    trainer.fit(model, datamodule=BlobsDataModule(shuffle=False), ckpt_path=ckpt_path)
    return trainer, model


# ---------------------------------------------------------------------------------------------- closed form
@pytest.mark.parametrize(
    ("kwargs", "accumulate"),
    [(dict(decay=0.9, warmup=True, update_every_n_steps=2, start_step=3), 1),
     (dict(half_life_steps=5.0), 2)],
)
def test_ema_equals_closed_form_sequence(tmp_path: Path, kwargs: dict[str, Any], accumulate: int) -> None:
    ema_cb, probe = EMAWeights(apply_at_end=False, **kwargs), Probe()
    trainer, model = _fit(tmp_path, [probe, ema_cb], max_epochs=1, num_sanity_val_steps=0,
                          accumulate_grad_batches=accumulate)
    steps = probe.steps
    assert len(steps) == trainer.global_step == 8 // accumulate
    every, start = kwargs.get("update_every_n_steps", 1), kwargs.get("start_step", 0)
    base = 0.5 ** (every / kwargs["half_life_steps"]) if "half_life_steps" in kwargs else kwargs["decay"]
    params = [n for n, p in model.named_parameters()]
    expected = {n: p.detach().clone() for n, p in _init_params().items()}
    t, last_update = 0, 0
    for s, w in enumerate(steps, start=1):
        if s <= start:
            expected = {n: w[n].clone() for n in params}
        elif (s - start) % every == 0:
            last_update = s
            d = min(base, (1 + t) / (10 + t)) if kwargs.get("warmup") else base
            for n in params:
                expected[n].lerp_(w[n], 1 - d)
            t += 1
    assert ema_cb.num_updates == t > 0
    got = ema_cb.ema_state_dict
    for n in params:
        assert torch.equal(got[n], expected[n]), n
    # buffers are copied from the model (BatchNorm statistics and the integer counter)
    at_update = steps[last_update - 1]
    assert torch.equal(got["net.1.running_mean"], at_update["net.1.running_mean"])
    assert got["net.1.num_batches_tracked"].item() == at_update["net.1.num_batches_tracked"].item()


def _init_params() -> dict[str, Tensor]:
    torch.manual_seed(0)
    return dict(no_dropout(TinyClassifier()).named_parameters())


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_hold_raw_weights_and_an_ema_twin(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.8, apply_at_end=False), Probe()
    # val/loss keeps improving on blobs, so Lightning re-saves last.ckpt at every validation
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min", save_top_k=1, save_last=True)
    trainer, model = _fit(tmp_path, [probe, ema_cb, ckpt], max_epochs=3)
    last = tmp_path / "ckpt" / "last.ckpt"
    raw = torch.load(last, weights_only=True)  # the whole checkpoint loads with weights_only
    state = raw["callbacks"][ema_cb.state_key]
    assert state["version"] == 1 and state["num_updates"] == trainer.global_step
    assert _equal(raw["state_dict"], _clone(model))  # raw weights, not the EMA
    assert _equal(state["ema"], ema_cb.ema_state_dict)
    assert not torch.equal(state["ema"]["net.0.weight"], raw["state_dict"]["net.0.weight"])
    # evaluation saw the EMA weights, and the val-end checkpoint (saved right after) the raw ones
    assert _equal(probe.val_weights[-1], ema_cb.ema_state_dict)
    twin = ema_checkpoint_path(last)
    assert twin.name == "ema-last.ckpt"
    ema_ckpt = torch.load(twin, weights_only=True)
    assert _equal(ema_ckpt["state_dict"], ema_cb.ema_state_dict)
    assert "optimizer_states" not in ema_ckpt and "callbacks" not in ema_ckpt
    loaded = TinyClassifier.load_from_checkpoint(twin)
    assert _equal(_clone(loaded), ema_cb.ema_state_dict)
    # every checkpoint has its twin, and twins of removed top-k checkpoints are removed with them
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    mains = [n for n in ckpts if not n.startswith("ema-")]
    assert len(mains) == 2 and sorted(ema_checkpoint_path(n).name for n in mains) == [
        n for n in ckpts if n.startswith("ema-")]
    assert not [n for n in ckpts if n.startswith(".tmp-")]


def test_no_ema_twin_when_turned_off(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(tmp_path, [EMAWeights(save_ema_checkpoint=False), ckpt], max_epochs=1)
    assert not list((tmp_path / "ckpt").glob("ema-*.ckpt"))


class SaveDuringValidation(TinyClassifier):
    """Saves a checkpoint from inside validation, i.e. while EMA weights are swapped in."""

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self.current_epoch == 1:
            self.seen_during_save = _clone(self)
            self.trainer.save_checkpoint(Path(self.trainer.default_root_dir) / "during-val.ckpt")
            self.trainer.save_checkpoint(Path(self.trainer.default_root_dir) / "weights.ckpt", weights_only=True)


def test_save_while_swapped_writes_raw_weights(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.7, apply_at_end=False), Probe()
    _, model = _fit(tmp_path, [probe, ema_cb], max_epochs=2, model=SaveDuringValidation())
    assert isinstance(model, SaveDuringValidation)
    ck = torch.load(tmp_path / "during-val.ckpt", weights_only=True)
    assert _equal(model.seen_during_save, ck["callbacks"][ema_cb.state_key]["ema"])  # the EMA was in the model
    assert _equal(ck["state_dict"], probe.steps[-1])  # ... yet the checkpoint holds the raw weights
    assert not _equal(ck["state_dict"], model.seen_during_save)
    weights_only = torch.load(tmp_path / "weights.ckpt", weights_only=True)
    assert "callbacks" not in weights_only and _equal(weights_only["state_dict"], probe.steps[-1])
    assert _equal(torch.load(tmp_path / "ema-weights.ckpt", weights_only=True)["state_dict"],
                  ck["callbacks"][ema_cb.state_key]["ema"])
    assert _equal(_clone(model), probe.steps[-1])  # swapped back after validation


def test_resume_without_callback_trains_on_from_raw_weights(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", save_last=True)
    _fit(tmp_path / "a", [EMAWeights(decay=0.5), ckpt], max_epochs=2)
    _, resumed = _fit(tmp_path / "b", [], max_epochs=4, ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    _, plain = _fit(tmp_path / "c", [], max_epochs=4)
    assert _equal(_clone(resumed), _clone(plain))


def test_fit_equals_fit_stop_resume_bitwise(tmp_path: Path) -> None:
    def callbacks(d: Path) -> tuple[EMAWeights, EarlyStopping, list[Callback]]:
        ema = EMAWeights(decay=0.9, warmup=True, update_every_n_steps=3, apply_at_end=False)
        es = EarlyStopping("val/loss", patience=50, restore_best_weights=True, min_delta=1e-3)
        return ema, es, [ema, es, ModelCheckpoint(dirpath=d, save_last=True)]

    ema_a, es_a, cbs = callbacks(tmp_path / "a")
    _, model_a = _fit(tmp_path / "a", cbs, max_epochs=4)
    _, _, cbs = callbacks(tmp_path / "b")
    _fit(tmp_path / "b", cbs, max_epochs=2)
    ema_b, es_b, cbs = callbacks(tmp_path / "b")
    trainer_b, model_b = _fit(tmp_path / "b", cbs, max_epochs=4, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer_b.current_epoch == 4
    assert _equal(_clone(model_a), _clone(model_b))
    assert _equal(ema_a.ema_state_dict, ema_b.ema_state_dict)
    assert (ema_a.num_updates, ema_a.last_step) == (ema_b.num_updates, ema_b.last_step)
    assert (es_a.wait_count, es_a.best_epoch) == (es_b.wait_count, es_b.best_epoch)
    assert torch.equal(es_a.best_score, es_b.best_score)
    assert es_a.best_weights is not None and es_b.best_weights is not None
    assert _equal(es_a.best_weights, es_b.best_weights)
    # last.ckpt of both runs: identical raw weights and callback states
    a, b = (torch.load(d / "last.ckpt", weights_only=True) for d in (tmp_path / "a", tmp_path / "b"))
    assert _equal(a["state_dict"], b["state_dict"])
    assert _equal(a["callbacks"][ema_a.state_key]["ema"], b["callbacks"][ema_b.state_key]["ema"])


# ---------------------------------------------------------------------------------------------- evaluation
def test_evaluate_with_ema_and_raw(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.8, apply_at_end=False), Probe()
    _fit(tmp_path / "e", [probe, ema_cb], max_epochs=2)
    assert _equal(probe.val_weights[-1], ema_cb.ema_state_dict)
    raw_cb, probe_raw = EMAWeights(decay=0.8, evaluate_with="raw", apply_at_end=False), Probe()
    _fit(tmp_path / "r", [probe_raw, raw_cb], max_epochs=2)
    assert _equal(probe_raw.val_weights[-1], probe_raw.steps[-1])


def test_test_best_checkpoint_uses_its_ema_and_swaps_back(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.8), Probe()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=1)
    trainer, model = _fit(tmp_path, [probe, ema_cb, ckpt], max_epochs=3)
    best = torch.load(ckpt.best_model_path, weights_only=True)
    trainer.test(model, datamodule=BlobsDataModule(shuffle=False), ckpt_path="best")
    assert _equal(probe.test_weights[-1], best["callbacks"][ema_cb.state_key]["ema"])
    assert _equal(_clone(model), best["state_dict"])  # raw weights of the best checkpoint after test
    trainer.predict(model, datamodule=BlobsDataModule(shuffle=False))
    assert _equal(_clone(model), best["state_dict"])


def test_apply_at_end_and_restore_raw(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.8), Probe()
    _, model = _fit(tmp_path, [probe, ema_cb], max_epochs=1)
    assert _equal(_clone(model), ema_cb.ema_state_dict)
    ema_cb.restore_raw_weights()
    assert _equal(_clone(model), probe.steps[-1])


class VariantsClassifier(TinyClassifier):
    """A plain LightningModule implementing SupportsWeightVariants: metrics once normally, once in each variant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_variants = WeightVariants()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, "val")
        for name, ctx in self.weight_variants.items():
            cm: AbstractContextManager[None] = ctx()
            with cm:
                x, y = batch
                logits = self(x)
                self.log(self.weight_variants.metric_name("val/loss", name), nn.functional.cross_entropy(logits, y))
                self.log(self.weight_variants.metric_name("val/acc", name), (logits.argmax(-1) == y).float().mean())


def _loss(model: nn.Module, weights: dict[str, Tensor]) -> float:
    m = copy.deepcopy(model)
    m.load_state_dict(weights)
    m.eval()
    data = BlobsDataModule(shuffle=False)
    data.setup()
    x, y = data.val_set.tensors
    with torch.no_grad():
        return float(nn.functional.cross_entropy(m(x), y))


def test_validate_both_logs_raw_and_ema_side_by_side(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.8, validate_both=True, apply_at_end=False), Probe()
    trainer, model = _fit(tmp_path, [probe, ema_cb], max_epochs=2, model=no_dropout(VariantsClassifier()))
    metrics = trainer.callback_metrics
    assert {"val/loss", "val/loss_ema", "val/acc", "val/acc_ema"} <= metrics.keys()
    assert _equal(probe.val_weights[-1], probe.steps[-1])  # the model itself was not swapped
    assert float(metrics["val/loss"]) == pytest.approx(_loss(model, probe.steps[-1]), rel=1e-5)
    assert float(metrics["val/loss_ema"]) == pytest.approx(_loss(model, ema_cb.ema_state_dict), rel=1e-5)
    assert float(metrics["val/loss"]) != float(metrics["val/loss_ema"])
    assert isinstance(model, SupportsWeightVariants) and "ema" not in model.weight_variants  # removed at teardown
    assert model.weight_variants.variant_of("val/loss_ema") == "ema"
    assert model.weight_variants.variant_of("val/loss") is None


class CountingEMA(EMAWeights):
    calls = 0

    def recalibrate_bn(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.calls += 1
        super().recalibrate_bn(trainer, pl_module)


def test_validate_both_recalibrates_once_per_validation(tmp_path: Path) -> None:
    ema_cb = CountingEMA(decay=0.8, validate_both=True, recalibrate_bn_batches=2, apply_at_end=False)
    trainer, model = _fit(tmp_path, [ema_cb], max_epochs=2, model=no_dropout(VariantsClassifier()))
    assert ema_cb.calls == 2  # 2 validations x 4 batches entering the context, sanity check skipped
    assert float(trainer.callback_metrics["val/loss_ema"]) == pytest.approx(
        _loss(model, ema_cb.ema_state_dict), rel=1e-5)  # EMA weights with their recalibrated statistics


def test_validate_both_warns_when_the_module_ignores_the_protocol(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="SupportsWeightVariants"):
        _fit(tmp_path, [EMAWeights(validate_both=True)], max_epochs=1, num_sanity_val_steps=0)


def test_early_stopping_restores_the_evaluated_ema_weights(tmp_path: Path) -> None:
    ema_cb, probe = EMAWeights(decay=0.9, apply_at_end=True), Probe()
    es = EarlyStopping("val/loss", patience=100, restore_best_weights=True)

    class Losses(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.sanity_checking:
                self.losses.append(float(trainer.callback_metrics["val/loss"]))

    losses = Losses()
    _, model = _fit(tmp_path, [probe, es, ema_cb, losses], max_epochs=4)
    best = min(range(4), key=lambda i: losses.losses[i])
    assert es.best_epoch == best
    assert _equal(_clone(model), probe.val_weights[best])  # EMA weights of the best epoch (what was evaluated)
    assert not _equal(_clone(model), probe.steps[(best + 1) * 8 - 1])  # not the raw ones of that epoch


class RecordingEMA(EMAWeights):
    """Keeps the batches its BatchNorm recalibration ran on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bn_batches: list[Any] = []

    def bn_forward(self, pl_module: pl.LightningModule, batch: Any) -> None:
        self.bn_batches.append([t.clone() for t in batch])
        super().bn_forward(pl_module, batch)


def test_recalibrate_bn_matches_update_bn(tmp_path: Path) -> None:
    ema_cb, probe = RecordingEMA(decay=0.8, recalibrate_bn_batches=2, apply_at_end=False), Probe()
    _, model = _fit(tmp_path, [probe, ema_cb], max_epochs=1)
    ema_params = {k: v for k, v in ema_cb.ema_state_dict.items() if "running" not in k and "batches" not in k}
    ref = copy.deepcopy(model)
    ref.load_state_dict(ema_params, strict=False)
    batches = ema_cb.bn_batches[-2:]  # the last validation's recalibration
    data = BlobsDataModule(shuffle=False)
    data.setup()
    pool = torch.cat([b[0] for b in data.train_dataloader()])
    for x, _ in batches:  # full batches of training samples (drawn apart from the training loader's iterator)
        assert len(x) == data.batch_size and all(bool((pool == row).all(1).any()) for row in x)
    torch.optim.swa_utils.update_bn(batches, ref)
    seen = probe.val_weights[-1]
    torch.testing.assert_close(seen["net.1.running_mean"], ref.net[1].running_mean)
    torch.testing.assert_close(seen["net.1.running_var"], ref.net[1].running_var)
    # the EMA keeps the recalibrated statistics (they go into the EMA checkpoint)
    torch.testing.assert_close(ema_cb.ema_state_dict["net.1.running_mean"], ref.net[1].running_mean)


# ---------------------------------------------------------------------------------------------- robustness
class Wrapped(nn.Module):
    """Stands in for torch.compile's OptimizedModule: the real net sits under `_orig_mod`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._orig_mod = net

    def forward(self, x: Tensor) -> Tensor:
        return self._orig_mod(x)


def test_loading_tolerates_orig_mod_and_module_prefixes() -> None:
    plain = TinyClassifier()
    cb = EMAWeights()
    cb._ensure(plain)
    with torch.no_grad():
        for t in cb._ema_params:
            t.add_(1.0)
    state = cb.state_dict()
    state["ema"] = {"module." + k: v for k, v in state["ema"].items()}  # saved from a DDP-wrapped model
    wrapped = TinyClassifier()
    wrapped.net = Wrapped(wrapped.net)  # type: ignore[assignment]
    other = EMAWeights()
    other.load_state_dict(copy.deepcopy(state))
    other._ensure(wrapped)
    got = {strip_wrapper_prefixes(k): v for k, v in other.ema_state_dict.items()}
    assert _equal(got, cb.ema_state_dict)
    with pytest.raises(RuntimeError, match="another model"):
        mismatch = EMAWeights()
        mismatch.load_state_dict(copy.deepcopy(state))
        mismatch._ensure(TinyClassifier(hidden=4, dim=3))


def test_picklable_after_setup_and_state_roundtrip(tmp_path: Path) -> None:
    ema_cb = EMAWeights(decay=0.8, validate_both=True)
    _fit(tmp_path, [ema_cb], max_epochs=1)
    ema_cb._module = TinyClassifier()  # even with live references, pickling drops them
    clone = pickle.loads(pickle.dumps(ema_cb))
    assert clone._module is None and _equal(clone.ema_state_dict, ema_cb.ema_state_dict)
    fresh = EMAWeights(decay=0.8)
    fresh.load_state_dict(copy.deepcopy(ema_cb.state_dict()))
    assert fresh.state_dict()["num_updates"] == ema_cb.num_updates == 8
    assert _equal(fresh.state_dict()["ema"], ema_cb.ema_state_dict)
    assert EMAWeights(decay=0.9).state_key != EMAWeights(decay=0.99).state_key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(decay=1.5), "decay"), (dict(update_every_n_steps=0), "update_every_n_steps"),
     (dict(start_step=-1), "start_step"), (dict(evaluate_with="best"), "evaluate_with"),
     (dict(buffers="mean"), "buffers"), (dict(recalibrate_bn_batches=-2), "recalibrate_bn_batches"),
     (dict(half_life_steps=0), "half_life_steps")],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMAWeights(**kwargs)


def test_plain_boring_model(tmp_path: Path) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    ema_cb, probe = EMAWeights(decay=0.5, apply_at_end=False), Probe()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[probe, ema_cb, ckpt], limit_train_batches=4,
                           limit_val_batches=2)
    trainer.fit(BoringModel())
    assert ema_cb.num_updates == 4
    assert _equal(probe.val_weights[-1], ema_cb.ema_state_dict)
    assert _equal(torch.load(tmp_path / "ckpt" / "ema-last.ckpt", weights_only=True)["state_dict"],
                  ema_cb.ema_state_dict)


def test_torchvision_resnet18_on_32x32(tmp_path: Path) -> None:
    tv = pytest.importorskip("torchvision")

    class ResNetModule(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = tv.models.resnet18(num_classes=3)

    class Images(BlobsDataModule):
        def setup(self, stage: str | None = None) -> None:
            g = torch.Generator().manual_seed(0)
            self.train_set = self.val_set = torch.utils.data.TensorDataset(
                torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g))

    ema_cb = EMAWeights(decay=0.5, recalibrate_bn_batches=1, apply_at_end=False)
    model = ResNetModule()
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[ema_cb], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=Images(batch_size=4, shuffle=False))
    assert ema_cb.num_updates == 2
    assert "val/acc" in trainer.callback_metrics
    assert not torch.equal(ema_cb.ema_state_dict["net.fc.weight"], model.net.fc.weight)
