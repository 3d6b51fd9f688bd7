"""Exact mid-epoch resume of the data: after a restart from a mid-epoch checkpoint the remaining batches (order and
augmentation) and the final weights equal the uninterrupted run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_tricks.data.digits import DigitsDataModule
from tests.helpers.tiny import tiny_trainer


def jitter(x: torch.Tensor) -> torch.Tensor:
    """An augmentation that draws from the RNG: random flip plus noise (module level: picklable for workers)."""
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x + 0.05 * torch.randn_like(x)


class Recorder(pl.LightningModule):
    """Linear softmax classifier that records every training batch (no dropout: weights depend on data only)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.batches.append((x.clone(), y.clone()))
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class ValidatingRecorder(Recorder):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))


def fit(tmp_path: Path, num_workers: int, ckpt_path: str | None = None, every: int | None = None,
        validate: bool = False, max_epochs: int = 2) -> Recorder:
    pl.seed_everything(7)
    dm = DigitsDataModule(batch_size=100, num_workers=num_workers, train_transform=jitter,
                          val_fraction=0.1 if validate else 0.0)
    model = ValidatingRecorder() if validate else Recorder()
    callbacks: list[pl.Callback] = []
    if every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1))
    if validate:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True))
    trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=bool(callbacks),
                           limit_val_batches=1.0 if validate else 0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def assert_same_batches(a: list[tuple[torch.Tensor, torch.Tensor]],
                        b: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("num_workers", "resume_steps"),
                         [(0, (5, 20)), pytest.param(1, (20,), marks=pytest.mark.slow)])  # 1: a worker process
def test_mid_epoch_resume_replays_the_remaining_batches(tmp_path: Path, num_workers: int,
                                                        resume_steps: tuple[int, ...]) -> None:
    """The uninterrupted run saves a checkpoint every 5 steps (13 per epoch: steps 5 and 20 are mid-epoch 0 and 1);
    a fresh process-like restart from each must see exactly the batches the uninterrupted run saw after it."""
    full = fit(tmp_path / "full", num_workers, every=5)
    steps_per_epoch = 13  # ceil(1258 / 100): the 70% non-test pool trains when val_fraction=0
    assert len(full.batches) == 2 * steps_per_epoch
    # epochs differ (seed + epoch) and augmentation is applied (inputs leave the raw [0, 1] range)
    assert not torch.equal(full.batches[0][1], full.batches[steps_per_epoch][1])
    assert full.batches[0][0].min() < 0
    for k in resume_steps:
        ckpt = next((tmp_path / "full").glob(f"*step={k}.ckpt"))
        state = torch.load(ckpt, weights_only=True)  # the loader state is plain types and tensors
        assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        resumed = fit(tmp_path / f"resume{k}", num_workers, ckpt_path=str(ckpt))
        assert_same_batches(resumed.batches, full.batches[k:])
        for p, q in zip(resumed.parameters(), full.parameters()):
            assert torch.equal(p, q)


@pytest.mark.timeout(120)
def test_resume_from_checkpoints_at_the_epoch_boundary(tmp_path: Path) -> None:
    """Two boundary cases: a step checkpoint at the epoch's last batch (Lightning then fetches the next epoch from
    the restored, exhausted iterator: without care the whole next epoch is skipped), and the usual last.ckpt written
    after validation at the end of an epoch."""
    full = fit(tmp_path / "full", 0, every=13, max_epochs=3)
    ckpt = next((tmp_path / "full").glob("*step=13.ckpt"))
    assert_same_batches(fit(tmp_path / "r13", 0, ckpt_path=str(ckpt), max_epochs=3).batches, full.batches[13:])
    first = fit(tmp_path / "one", 0, validate=True, max_epochs=1)
    full = fit(tmp_path / "two", 0, validate=True, max_epochs=2)
    resumed = fit(tmp_path / "r", 0, ckpt_path=str(tmp_path / "one" / "last.ckpt"), validate=True, max_epochs=2)
    assert_same_batches(resumed.batches, full.batches[len(first.batches):])


@pytest.mark.slow  # DataLoader worker processes
def test_augmentation_does_not_depend_on_workers_or_global_rng(tmp_path: Path) -> None:
    """Per-sample seeds: the same batches with 0 or 2 workers; the global RNG moves as without augmentation."""
    batches, states = [], []
    for workers, transform in ((0, jitter), (2, jitter), (0, None)):
        dm = DigitsDataModule(batch_size=256, num_workers=workers, train_transform=transform, seed=3)
        dm.setup("fit")
        torch.manual_seed(0)
        batches.append([b for _, b in zip(range(2), dm.train_dataloader())])
        states.append(torch.get_rng_state())
    assert_same_batches(batches[0], batches[1])
    assert not torch.equal(batches[0][0][0], batches[2][0][0])
    assert torch.equal(states[0], states[2])


def test_eval_loaders_are_not_augmented() -> None:
    calls: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x + 1.0

    dm = DigitsDataModule(batch_size=512, train_transform=counting)
    dm.setup("fit")
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        x, _ = next(iter(loader))
        assert x.max() <= 1.0
    assert calls == []
    x, _ = next(iter(dm.train_dataloader()))
    assert x.min() >= 1.0 and len(calls) == 512


def test_plain_dataloader_fallback_without_torchdata(monkeypatch: pytest.MonkeyPatch) -> None:
    import lit_tricks.data.sampling as sampling

    monkeypatch.setattr(sampling, "StatefulDataLoader", None)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert type(loader) is torch.utils.data.DataLoader
    monkeypatch.undo()
    stateful = dm.train_dataloader()
    assert type(stateful) is not torch.utils.data.DataLoader and hasattr(stateful, "state_dict")
    assert_same_batches([next(iter(loader))], [next(iter(stateful))])  # same order either way
