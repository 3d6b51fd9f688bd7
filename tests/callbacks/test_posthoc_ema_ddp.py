"""PostHocEMA under DDP with 2 CPU processes (gloo, 60 s timeout), one ``ddp_spawn`` run: both ranks track the same
profiles, only rank 0 writes, and the files hold rank 0's profiles and buffers."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_tricks.callbacks.posthoc_ema import PostHocEMA, list_snapshots
from lit_tricks.trainers.strategies import ddp_strategy
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


class Record(Callback):
    def __init__(self, out: Path, cb: PostHocEMA) -> None:
        self.out, self.cb = out, cb
        self.written: list[str] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if trainer.global_step == 2:  # what a snapshot call does on this rank (None on rank 1)
            self.written.append(str(self.cb.write_snapshot(trainer, pl_module)))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({"ema": self.cb.profiles.profiles(), "steps": self.cb.profiles.steps, "written": self.written,
                    "buffers": {k: v.clone() for k, v in pl_module.named_buffers()}},
                   self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_ddp_spawn_same_profiles_and_rank_zero_writes(tmp_path: Path) -> None:
    cb = PostHocEMA(snapshot_every_n_steps=2, dirpath=str(tmp_path / "s"))
    trainer = tiny_trainer(
        tmp_path, devices=2, max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0,
        strategy=ddp_strategy(start_method="spawn", timeout_s=60),
        callbacks=[cb, Record(tmp_path, cb)],
    )
    torch.manual_seed(0)
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule(n=128))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2  # 128 samples / 2 ranks / batch 32
    for a, b in zip(r0["ema"], r1["ema"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert r1["written"] == ["None"] and r0["written"] != ["None"]
    files = list_snapshots(tmp_path / "s")
    assert [s for s, _ in files] == [2]
    snap = torch.load(files[0][1], weights_only=True)
    for a, b in zip(snap["ema"], r0["ema"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(snap["buffers"][k], r0["buffers"][k]) for k in snap["buffers"])
    assert not torch.equal(snap["buffers"]["net.1.running_mean"], r1["buffers"]["net.1.running_mean"])
