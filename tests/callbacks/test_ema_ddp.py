"""EMAWeights and EarlyStopping under DDP with 2 CPU processes (gloo, 60 s timeout), in one ``ddp_spawn`` run.

Checks, per rank (written by a recorder callback inside the workers): EMA identical on both ranks (with BatchNorm
recalibration), the same
early-stopping decision on both ranks although only rank 1's metric says stop, the same restored weights; and in
the parent: EMAWeights pickles into the spawned workers (Lightning's EMAWeightAveraging does not: "Can't pickle
local object 'get_ema_avg_fn.<locals>.ema_update'") and writes the raw checkpoint plus its ``ema-`` twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_tricks.callbacks.early_stopping import EarlyStopping
from lit_tricks.callbacks.ema import EMAWeights
from lit_tricks.trainers.strategies import ddp_strategy
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

TIMEOUT_S = 60.0  # lit_tricks' ddp_strategy destroys the gloo group at exit (tests/trainers/test_process_group_exit.py)


class RankScore(TinyClassifier):
    """Rank 0's score improves every epoch; rank 1's never does after epoch 0 (deliberately not synced)."""

    def on_validation_epoch_end(self) -> None:
        score = -float(self.current_epoch) if self.global_rank == 0 else float(self.current_epoch)
        self.log("val/score", score, sync_dist=False)


class SeenEMA(EMAWeights):
    """Keeps the batches its BatchNorm recalibration ran on (module level: pickled into the spawned workers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bn_batches: list[torch.Tensor] = []

    def bn_forward(self, pl_module: pl.LightningModule, batch: Any) -> None:
        self.bn_batches.append(batch[0].detach().cpu().clone())
        super().bn_forward(pl_module, batch)


class Record(Callback):
    """Saves, on each rank at fit end, what the test compares across ranks."""

    def __init__(self, out: Path, ema: EMAWeights, es: EarlyStopping) -> None:
        self.out, self.ema, self.es = out, ema, es

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(
            {"ema": self.ema.ema_state_dict, "num_updates": self.ema.num_updates,
             "bn_batches": list(getattr(self.ema, "bn_batches", [])),
             "stopped_epoch": self.es.stopped_epoch, "best_epoch": self.es.best_epoch,
             "epoch": trainer.current_epoch, "should_stop": trainer.should_stop,
             "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}},
            self.out / f"rank{trainer.global_rank}.pt",
        )


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_ddp_spawn_ema_identical_and_same_stop_on_both_ranks(tmp_path: Path) -> None:
    # BatchNorm recalibrated before each validation: both ranks draw the same batches (sampled_batches), so the EMA's
    # recalibrated statistics agree as its weights do
    ema = SeenEMA(decay=0.9, warmup=True, apply_at_end=False, recalibrate_bn_batches=2)
    es = EarlyStopping("val/score", patience=2, restore_best_weights=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(
        tmp_path, devices=2, strategy=ddp_strategy(start_method="spawn", timeout_s=TIMEOUT_S), max_epochs=10,
        num_sanity_val_steps=0, callbacks=[ema, es, Record(tmp_path, ema, es), ckpt],
    )
    torch.manual_seed(0)
    trainer.fit(RankScore(), datamodule=BlobsDataModule(n=128))

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["num_updates"] == r1["num_updates"] == 6  # 3 epochs x 128 samples / 2 ranks / batch 32
    assert _equal(r0["ema"], r1["ema"])  # parameters and (synced) BatchNorm buffers
    assert len(r0["bn_batches"]) == len(r1["bn_batches"]) == 2 * 3  # 2 batches before each of the 3 validations
    assert all(torch.equal(a, b) for a, b in zip(r0["bn_batches"], r1["bn_batches"]))  # the same on both ranks
    # only rank 1 wants to stop after epoch 2 (patience 2); both ranks stop there
    assert r0["stopped_epoch"] == r1["stopped_epoch"] == 2
    assert r0["epoch"] == r1["epoch"] == 3 and r0["should_stop"] and r1["should_stop"]
    # best weights follow rank 0's decision on every rank (its score improved at epoch 2)
    assert r0["best_epoch"] == r1["best_epoch"] == 2
    params = [k for k in r0["weights"] if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in params)

    # the parent got the checkpoints: raw weights + EMA state, and the EMA-only twin
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    twin = torch.load(tmp_path / "ckpt" / "ema-last.ckpt", weights_only=True)
    state = last["callbacks"][ema.state_key]
    assert state["num_updates"] == last["global_step"] == 6
    assert _equal(twin["state_dict"], state["ema"])
    assert _equal(state["ema"], r0["ema"])
    assert not torch.equal(twin["state_dict"]["net.0.weight"], last["state_dict"]["net.0.weight"])
