"""EMAWeights cells. Oracles: Lightning's EMAWeightAveraging on the same seeded run, and the hand-written recurrence
``ema_k = d * ema_{k-1} + (1 - d) * w_k`` over the weights a recorder saw after each optimizer step."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch import Tensor

from lit_tricks.callbacks import EMAWeights, RNGState
from lit_tricks.functional.ema import ema_update_, warmup_decay
from tests.matrix.cells import cell
from tests.matrix.models import (
    BlobsDataModule,
    ManualClassifier,
    StepRecorder,
    TinyClassifier,
    TwoOptimizerClassifier,
    fit,
    float_params,
    iterable_loader,
    tied_classifier,
)


def recurrence(start: dict[str, Tensor], steps: list[dict[str, Tensor]], decay: float) -> dict[str, Tensor]:
    ema = {k: v.clone() for k, v in start.items()}
    for w in steps:
        ema = {k: decay * ema[k] + (1 - decay) * w[k] for k in ema}
    return ema


def assert_close(ema: dict[str, Tensor], oracle: dict[str, Tensor], rtol: float = 1e-5) -> None:
    assert oracle, "nothing to compare"
    for k, v in oracle.items():
        torch.testing.assert_close(ema[k], v, rtol=rtol, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def accumulation_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[EMAWeights, EMAWeightAveraging, int]:
    """One seeded run with EMAWeights, the same with Lightning's EMAWeightAveraging: 7 batches/epoch, windows of 3
    (the last window of an epoch is partial), 2 epochs."""
    kw = dict(max_epochs=2, accumulate_grad_batches=3, limit_train_batches=7, datamodule=BlobsDataModule(n=256))
    ours = EMAWeights(decay=0.8, start_step=1, buffers="average", apply_at_end=False, evaluate_with="raw")
    t1 = fit(tmp_path_factory.mktemp("ours"), TinyClassifier, [ours], **kw)
    theirs = EMAWeightAveraging(decay=0.8)
    kw["datamodule"] = BlobsDataModule(n=256)
    fit(tmp_path_factory.mktemp("theirs"), TinyClassifier, [theirs], **kw)
    return ours, theirs, t1.global_step


@cell("EMAWeights", "accumulation")
def test_ema_accumulation_matches_lightning_ema_weight_averaging(accumulation_pair: tuple) -> None:
    ours, theirs, steps = accumulation_pair
    assert steps == 6 and ours.num_updates == steps - 1  # one update per window; start_step=1 copies the first
    reference = {k[len("module."):]: v for k, v in theirs._average_model.state_dict().items()
                 if k.startswith("module.") and v.is_floating_point()}
    assert_close(ours.ema_state_dict, reference)


@cell("EMAWeights", "tied")
def test_ema_tied_parameters_recurrence(tmp_path: Path) -> None:
    ema, rec = EMAWeights(decay=0.7, apply_at_end=False), StepRecorder()
    fit(tmp_path, tied_classifier(), [ema, rec], max_epochs=1, limit_train_batches=3)
    assert "net.dec.weight" not in ema.ema_state_dict  # one EMA tensor per shared parameter
    assert_close(ema.ema_state_dict, recurrence(rec.start, rec.params, 0.7))


@cell("EMAWeights", "tied")
def test_ema_twin_checkpoint_of_tied_model_loads_the_ema(tmp_path: Path) -> None:
    ema = EMAWeights(decay=0.7, apply_at_end=False)
    fit(tmp_path, tied_classifier(), [ema, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_checkpointing=True, max_epochs=1, limit_train_batches=3)
    twin = torch.load(tmp_path / "ckpt" / "ema-last.ckpt", weights_only=True)["state_dict"]
    fresh = tied_classifier()
    fresh.load_state_dict(twin)
    assert fresh.net.dec.weight is fresh.net.enc.weight
    assert_close(float_params(fresh), {k: v for k, v in ema.ema_state_dict.items() if k in float_params(fresh)})


@cell("EMAWeights", "tied")
def test_ema_raw_checkpoint_after_apply_at_end_of_tied_model_is_raw(tmp_path: Path) -> None:
    ema = EMAWeights(decay=0.7, apply_at_end=True, save_ema_checkpoint=False)
    model = tied_classifier()
    trainer = fit(tmp_path, model, [ema], max_epochs=1, limit_train_batches=3)
    ema.restore_raw_weights(model)
    raw = float_params(model)
    ema._swap_in(model, recalibrate=False)  # the state apply_at_end leaves the model in
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    fresh = tied_classifier()
    fresh.load_state_dict(torch.load(tmp_path / "after.ckpt", weights_only=True)["state_dict"])
    for k, v in float_params(fresh).items():
        assert torch.equal(v, raw[k]), k


@cell("EMAWeights", "manual")
def test_ema_manual_optimization_recurrence(tmp_path: Path) -> None:
    ema, rec = EMAWeights(decay=0.6, apply_at_end=False), StepRecorder()
    fit(tmp_path, ManualClassifier(), [ema, rec], max_epochs=1, limit_train_batches=4)
    assert ema.num_updates == 4
    assert_close(ema.ema_state_dict, recurrence(rec.start, rec.params, 0.6))


@cell("EMAWeights", "two_optimizers")
def test_ema_two_optimizers_one_update_per_batch(tmp_path: Path) -> None:
    """Both optimizers step on every batch (global_step += 2): one EMA update per batch, after both steps."""
    ema, rec = EMAWeights(decay=0.6, apply_at_end=False), StepRecorder()
    trainer = fit(tmp_path, TwoOptimizerClassifier(), [ema, rec], max_epochs=1, limit_train_batches=3)
    assert trainer.global_step == 6 and ema.num_updates == 3
    assert_close(ema.ema_state_dict, recurrence(rec.start, rec.params, 0.6))


@cell("EMAWeights", "bf16")
def test_ema_bf16_mixed_keeps_fp32_average(tmp_path: Path) -> None:
    ema, rec = EMAWeights(decay=0.6, apply_at_end=False), StepRecorder()
    fit(tmp_path, TinyClassifier, [ema, rec], precision="bf16-mixed", max_epochs=1, limit_train_batches=3)
    assert all(v.dtype == torch.float32 for v in ema.ema_state_dict.values() if v.is_floating_point())
    assert_close(ema.ema_state_dict, recurrence(rec.start, rec.params, 0.6))


@cell("EMAWeights", "second_fit")
def test_ema_second_fit_continues_the_average(tmp_path: Path) -> None:
    ema = EMAWeights(decay=0.6, apply_at_end=False)
    model = TinyClassifier()
    fit(tmp_path / "a", model, [ema], max_epochs=1, limit_train_batches=3)
    before = {k: v.clone() for k, v in ema.ema_state_dict.items()}
    rec = StepRecorder()
    fit(tmp_path / "b", model, [ema, rec], max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2)
    assert ema.num_updates == 3 + 2
    assert_close(ema.ema_state_dict, recurrence({k: before[k] for k in rec.start}, rec.params, 0.6))


@cell("EMAWeights", "resume_changed")
def test_ema_resume_with_longer_max_epochs_equals_uninterrupted(tmp_path: Path) -> None:
    ema_ref = EMAWeights(decay=0.7, apply_at_end=False)
    fit(tmp_path / "ref", TinyClassifier, [ema_ref, RNGState()], max_epochs=3, limit_train_batches=3)
    first = EMAWeights(decay=0.7, apply_at_end=False)
    fit(tmp_path / "run", TinyClassifier, [first, RNGState(), ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)],
        enable_checkpointing=True, max_epochs=2, limit_train_batches=3)
    resumed = EMAWeights(decay=0.7, apply_at_end=False)
    fit(tmp_path / "run", TinyClassifier, [resumed, RNGState()], max_epochs=3, limit_train_batches=3,
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert resumed.num_updates == ema_ref.num_updates == 9
    for k, v in ema_ref.ema_state_dict.items():
        assert torch.equal(resumed.ema_state_dict[k], v), k


@cell("EMAWeights", "resume_changed")
def test_ema_resume_with_changed_decay_says_so(tmp_path: Path) -> None:
    fit(tmp_path, TinyClassifier, [EMAWeights(decay=0.7), ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)],
        enable_checkpointing=True, max_epochs=1, limit_train_batches=2)
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit(tmp_path, TinyClassifier, [EMAWeights(decay=0.5)], max_epochs=2, limit_train_batches=2,
                ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
        except (ValueError, RuntimeError) as err:  # refusing is fine too, if it says why
            said.append(str(err))
    said += [str(w.message) for w in caught]
    assert any("EMAWeights" in s and "decay" in s and "0.5" in s for s in said), said  # names the change


@cell("EMAWeights", "iterable")
def test_ema_iterable_dataset_max_steps(tmp_path: Path) -> None:
    ema, rec = EMAWeights(decay=0.6, apply_at_end=False), StepRecorder()
    pl_model = TinyClassifier()
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    from tests.helpers.tiny import tiny_trainer

    trainer = tiny_trainer(tmp_path, max_steps=5, max_epochs=-1, callbacks=[ema, rec], enable_checkpointing=False,
                           limit_val_batches=0)
    trainer.fit(pl_model, train_dataloaders=iterable_loader())
    assert trainer.global_step == 5 and ema.num_updates == 5
    assert_close(ema.ema_state_dict, recurrence(rec.start, rec.params, 0.6))


@cell("EMAWeights", "multi_val")
def test_ema_evaluates_every_validation_loader_with_the_average(tmp_path: Path) -> None:
    from tests.matrix.models import MultiValClassifier

    class TwoLoaders(BlobsDataModule):
        def val_dataloader(self) -> list:
            return [super().val_dataloader(), super().val_dataloader()]

    ema = EMAWeights(decay=0.6, apply_at_end=False)
    model = MultiValClassifier()
    trainer = fit(tmp_path, model, [ema], datamodule=TwoLoaders(n=128), max_epochs=1, limit_train_batches=3,
                  limit_val_batches=1)
    dm = TwoLoaders(n=128)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()[0]))
    with ema.ema_weights(model), torch.no_grad():
        model.eval()
        expected = torch.nn.functional.cross_entropy(model(x), y)
    for i in (0, 1):
        torch.testing.assert_close(trainer.callback_metrics[f"val/loss/dataloader_idx_{i}"], expected)


@cell("EMAWeights", "val_schedule")
def test_ema_mid_epoch_validation_does_not_disturb_training(tmp_path: Path) -> None:
    """val_check_interval=0.5 + check_val_every_n_epoch: swaps in and back; raw training = a run without EMA."""
    ema, rec = EMAWeights(decay=0.6, apply_at_end=False), StepRecorder()
    kw = dict(max_epochs=2, limit_train_batches=4, val_check_interval=0.5)
    fit(tmp_path / "a", TinyClassifier, [ema, rec], **kw)
    plain = StepRecorder()
    fit(tmp_path / "b", TinyClassifier, [plain], **kw)
    for got, want in zip(rec.params, plain.params, strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert_close(ema.ema_state_dict, recurrence(rec.start, rec.params, 0.6))


@cell("EMAWeights", "load_other_args")
def test_ema_load_state_into_other_arguments(tmp_path: Path) -> None:
    src = EMAWeights(decay=0.9, apply_at_end=False)
    model = TinyClassifier()
    fit(tmp_path, model, [src], max_epochs=1, limit_train_batches=2)
    dst = EMAWeights(decay=0.5, update_every_n_steps=2)
    dst.load_state_dict(src.state_dict())
    dst._ensure(model)  # matches the loaded tensors to the model
    assert dst.num_updates == src.num_updates == 2
    assert all(torch.equal(dst.ema_state_dict[k], v) for k, v in src.ema_state_dict.items())
    assert dst.decay_at(dst.num_updates) == 0.5  # the new instance's own decay from here on


@settings(max_examples=40, deadline=None)
@given(accumulate=st.integers(1, 4), every=st.integers(1, 3), start=st.integers(0, 4), batches=st.integers(1, 14),
       decay=st.floats(0.0, 1.0), warm=st.booleans())
@cell("EMAWeights", "properties")
def test_ema_schedule_of_updates_matches_recurrence(accumulate: int, every: int, start: int, batches: int,
                                                    decay: float, warm: bool) -> None:
    """The callback's batch-end logic driven by a fake trainer (no Trainer run): accumulation windows, update_every,
    start_step and warm-up against the recurrence written out by hand."""
    model = torch.nn.Linear(2, 1)
    ema = EMAWeights(decay=decay, update_every_n_steps=every, start_step=start, warmup=warm)
    ema._ensure(model)  # type: ignore[arg-type]
    oracle, t, step = model.weight.detach().clone(), 0, 0
    for b in range(batches):
        if (b + 1) % accumulate == 0:  # an optimizer step ends this window
            step += 1
            with torch.no_grad():
                model.weight.add_(torch.randn_like(model.weight))
        ema.on_train_batch_end(SimpleNamespace(global_step=step, current_epoch=0), model, None, None, b)  # type: ignore[arg-type]
        if (b + 1) % accumulate == 0:
            w = model.weight.detach()
            if step <= start:
                oracle = w.clone()
            elif (step - start) % every == 0:
                d = warmup_decay(decay, t) if warm else decay
                oracle = d * oracle + (1 - d) * w
                t += 1
    assert ema.num_updates == t
    torch.testing.assert_close(ema.ema_state_dict["weight"], oracle, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(decay=st.floats(0.0, 1.0), n=st.integers(1, 5))
def test_ema_update_equals_torch_swa_ema(decay: float, n: int) -> None:
    """functional ema_update_ vs torch.optim.swa_utils.get_ema_multi_avg_fn."""
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    g = torch.Generator().manual_seed(n)
    ema = [torch.randn(3, generator=g) for _ in range(n)]
    cur = [torch.randn(3, generator=g) for _ in range(n)]
    ref = [e.clone() for e in ema]
    get_ema_multi_avg_fn(decay)(ref, cur, torch.tensor(1))
    ema_update_(ema, cur, decay)
    for a, b in zip(ema, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
