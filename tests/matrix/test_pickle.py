"""Every callback, after a fit with all of them, pickles (what ddp_spawn and multirun launchers do) and its
``state_dict`` loads with ``torch.load(weights_only=True)`` (checkpoints hold plain types and tensors only)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from tests.matrix import allfit
from tests.matrix.cells import CALLBACKS, cell
from tests.matrix.models import BlobsDataModule, tiny_trainer

NAMES = [c for c in CALLBACKS if c not in ("Schedule", "ReduceOnPlateau")]


def _pickle_cells(fn: Any) -> Any:
    for name in NAMES:
        fn = cell(name, "pickle")(fn)
    return fn


@_pickle_cells
def test_every_callback_pickles_after_a_fit(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    callbacks = allfit.all_callbacks(tmp_path)
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=2)
    trainer.fit(allfit.AllModel(nan_step=-1), datamodule=BlobsDataModule(n=128))
    ours = {type(c).__name__: c for c in callbacks if type(c).__module__.startswith("lit_tricks")}
    assert sorted(ours) == sorted(NAMES)
    for name, callback in ours.items():
        clone = pickle.loads(pickle.dumps(callback))
        assert type(clone) is type(callback), name
        buf = io.BytesIO()
        torch.save(callback.state_dict(), buf)
        buf.seek(0)
        assert isinstance(torch.load(buf, weights_only=True), dict), name
    sched = trainer.lr_scheduler_configs[0].scheduler
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["last_epoch"] == trainer.global_step
