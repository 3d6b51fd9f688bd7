"""EMAWeights over several fits and with its should_update hook; oracles: the hand-written EMA recurrence over the
optimizer steps, and Lightning's own EMAWeightAveraging where the two agree (one fit, the first update a copy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor

from lit_tricks.callbacks.ema import EMAWeights
from tests.callbacks.test_ema import Probe, no_dropout
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

D = 0.8


def _params(sd: dict[str, Tensor], module: TinyClassifier) -> dict[str, Tensor]:
    names = {n for n, _ in module.named_parameters()}
    return {k: v for k, v in sd.items() if k in names}


def _recurrence(start: dict[str, Tensor], steps: list[dict[str, Tensor]], updates: list[bool]) -> dict[str, Tensor]:
    ema = {k: v.clone() for k, v in start.items()}
    for raw, update in zip(steps, updates):
        if update:
            ema = {k: D * ema[k] + (1 - D) * raw[k] for k in ema}
    return ema


def _fit(tmp_path: Path, model: TinyClassifier, callbacks: list[Any], **kw: Any) -> None:
    kw = {"max_epochs": 1, "limit_train_batches": 4, "limit_val_batches": 0, "enable_checkpointing": False, **kw}
    tiny_trainer(tmp_path, callbacks=callbacks, **kw).fit(model, BlobsDataModule())


def test_second_fit_with_a_new_trainer_and_accumulation_continues_the_ema(tmp_path: Path) -> None:
    model = no_dropout(TinyClassifier())
    start = _params({k: v.clone() for k, v in model.state_dict().items()}, model)
    ema = EMAWeights(decay=D, apply_at_end=False)
    first, second = Probe(), Probe()
    _fit(tmp_path / "a", model, [ema, first])  # 4 optimizer steps
    _fit(tmp_path / "b", model, [ema, second], accumulate_grad_batches=2)  # 2 more, a new Trainer
    steps = [_params(s, model) for s in first.steps + second.steps]
    assert len(steps) == 6 and ema.steps == 6 and ema.num_updates == 6
    expected = _recurrence(start, steps, [True] * 6)
    got = _params(ema.ema_state_dict, model)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)


def test_a_fit_of_another_module_starts_a_new_ema(tmp_path: Path) -> None:
    ema = EMAWeights(decay=D, apply_at_end=False)
    _fit(tmp_path / "a", no_dropout(TinyClassifier()), [ema])
    torch.manual_seed(1)
    other = no_dropout(TinyClassifier())
    start = _params({k: v.clone() for k, v in other.state_dict().items()}, other)
    probe = Probe()
    _fit(tmp_path / "b", other, [ema, probe], limit_train_batches=2)
    assert ema.steps == 2 and ema.num_updates == 2
    expected = _recurrence(start, [_params(s, other) for s in probe.steps], [True, True])
    got = _params(ema.ema_state_dict, other)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)


class EveryThird(EMAWeights):
    def should_update(self, step_idx: int, epoch_idx: int) -> bool:
        return step_idx % 3 == 2


def test_should_update_hook_decides_which_steps_update(tmp_path: Path) -> None:
    model = no_dropout(TinyClassifier())
    start = _params({k: v.clone() for k, v in model.state_dict().items()}, model)
    ema, probe = EveryThird(decay=D, apply_at_end=False), Probe()
    _fit(tmp_path, model, [ema, probe], limit_train_batches=7)
    updates = [i % 3 == 2 for i in range(7)]
    assert ema.num_updates == sum(updates) == 2
    expected = _recurrence(start, [_params(s, model) for s in probe.steps], updates)
    got = _params(ema.ema_state_dict, model)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)


def test_one_fit_with_accumulation_equals_lightning_ema_weight_averaging(tmp_path: Path) -> None:
    # Lightning's first update copies the weights; ours follows the raw weights until start_step (=1): the same
    model = no_dropout(TinyClassifier())
    ours = EMAWeights(decay=D, start_step=1, apply_at_end=False)
    theirs = EMAWeightAveraging(decay=D, use_buffers=False)
    _fit(tmp_path, model, [ours, theirs], limit_train_batches=6, accumulate_grad_batches=2)
    assert theirs._average_model is not None
    averaged = dict(theirs._average_model.module.named_parameters())
    got = _params(ours.ema_state_dict, model)
    assert got.keys() == averaged.keys()
    for k in got:
        torch.testing.assert_close(got[k], averaged[k].detach(), rtol=1e-5, atol=1e-6)


class TwinRecorder(EMAWeights):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.twins: list[str] = []

    def write_ema_twin(self, checkpoint: dict[str, Any], path: Any) -> None:
        self.twins.append(Path(path).name)
        super().write_ema_twin(checkpoint, path)


def test_ema_twin_writing_is_an_explicit_hook_and_the_checkpoint_io_is_unwrapped_after_fit(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    ema = TwinRecorder(decay=D)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[ema, ckpt])
    original = trainer.strategy.checkpoint_io
    trainer.fit(no_dropout(TinyClassifier()), BlobsDataModule())
    assert "last.ckpt" in ema.twins and (tmp_path / "ckpt" / "ema-last.ckpt").exists()
    assert trainer.strategy.checkpoint_io is original
    off = TwinRecorder(decay=D, save_ema_checkpoint=False)
    trainer = tiny_trainer(tmp_path / "off", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                           callbacks=[off, ModelCheckpoint(dirpath=tmp_path / "off", save_last=True)])
    trainer.fit(no_dropout(TinyClassifier()), BlobsDataModule())
    assert off.twins == [] and not (tmp_path / "off" / "ema-last.ckpt").exists()


def test_sharded_strategies_but_model_parallel_are_refused_at_setup_with_one_line() -> None:
    from types import SimpleNamespace

    import pytest
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    with pytest.raises(ValueError, match="under sharding needs ModelParallelStrategy") as err:
        EMAWeights().setup(SimpleNamespace(strategy=FSDPStrategy()), TinyClassifier(), "fit")  # type: ignore[arg-type]
    assert "FSDPStrategy" in str(err.value) and "\n" not in str(err.value)
    from lit_tricks.compat import sharded_strategy_name as _sharded_strategy

    assert _sharded_strategy(DDPStrategy()) is None
