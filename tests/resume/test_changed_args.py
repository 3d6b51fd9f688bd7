"""A callback whose state size follows an argument (a history length, a top-k, a window), resumed with another value
of it, keeps the newest values and never invents any (an invented zero in a percentile window drives the next
clipping threshold to zero). One test per (callback, argument) that sizes state, smaller and larger:
``GradientClipping(history)``, ``CheckpointEnsemble(top_k)``, ``ModelCheckpoint(save_top_k)``,
``NaNGuard(divergence_window, divergence_ref_steps)``. These arguments are not part of the callbacks' ``state_key``,
so a resumed run loads the state (tested through ``Trainer.fit(ckpt_path=...)`` too). ``PostHocEMA(sigma_rels |
gammas)`` is not a size but which profiles exist: a profile not tracked from step 0 cannot be made up, so another
set is refused in one warning line and the callback starts afresh in a snapshot folder of its own.

The state goes through ``state_dict`` -> ``torch.save`` -> ``torch.load(weights_only=True)`` -> ``load_state_dict``
of an instance built with the other value, as a resumed run does.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_tricks.callbacks import CheckpointEnsemble, GradientClipping, ModelCheckpoint, NaNGuard, PostHocEMA
from lit_tricks.fault.state_keys import adopt_resized_state
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


def _reload(state: dict[str, Any], into: Callback) -> Callback:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    into.load_state_dict(torch.load(buffer, weights_only=True))
    return into


def _fit(tmp_path: Path, callback: Callback, batches: int = 6) -> None:
    tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=1, num_sanity_val_steps=0,
                 callbacks=[callback]).fit(TinyClassifier(), datamodule=BlobsDataModule())


@pytest.mark.parametrize("new_history", [3, 9], ids=["smaller", "larger"])
def test_clipping_history(tmp_path: Path, new_history: int) -> None:
    old = GradientClipping(mode="auto", history=5)
    _fit(tmp_path, old, batches=7)  # 7 norms through a ring of 5: the ring has wrapped
    newest = old.filled_history()
    resumed = _reload(old.state_dict(), GradientClipping(mode="auto", history=new_history))
    assert isinstance(resumed, GradientClipping)
    kept = resumed.filled_history()
    assert torch.equal(kept, newest[-min(new_history, newest.numel()):])  # the newest, oldest first, no zeros


@pytest.mark.parametrize("new_top_k", [1, 4], ids=["smaller", "larger"])
def test_ensemble_top_k(tmp_path: Path, new_top_k: int) -> None:
    old = CheckpointEnsemble(top_k=2, monitor="val/loss", keep_inline=True)
    tiny_trainer(tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                 callbacks=[old]).fit(TinyClassifier(), datamodule=BlobsDataModule())
    saved = [(m["epoch"], m["score"]) for m in old.members]
    resumed = _reload(old.state_dict(), CheckpointEnsemble(top_k=new_top_k, monitor="val/loss", keep_inline=True))
    assert isinstance(resumed, CheckpointEnsemble)
    kept = [(m["epoch"], m["score"]) for m in resumed.members]
    best = sorted(saved, key=lambda m: m[1])[:new_top_k]
    assert sorted(kept, key=lambda m: m[1]) == best  # the best saved members, none invented


@pytest.mark.parametrize("new_window", [1, 6], ids=["smaller", "larger"])
def test_nan_guard_divergence_window_and_reference(tmp_path: Path, new_window: int) -> None:
    """NaNGuard's divergence state is counters (a reference sum over the first steps, the run of steps above it):
    resumed with another window or reference length they are kept as saved, nothing is added."""
    old = NaNGuard(divergence_factor=1e9, divergence_ref_steps=3, divergence_window=3)
    _fit(tmp_path, old)
    reference, above = old.reference, old.above
    resumed = _reload(old.state_dict(), NaNGuard(divergence_factor=1e9, divergence_ref_steps=new_window,
                                                 divergence_window=new_window))
    assert isinstance(resumed, NaNGuard)
    assert resumed.reference == reference and resumed.above == above and resumed.ref_count == old.ref_count


def _resume(tmp_path: Path, first: Callback, second: Callback, probe: Callback, epochs: int = 3) -> pl.Trainer:
    """``first`` trained for 2 epochs with a ModelCheckpoint, then ``second`` (other arguments) resumed from its
    ``last.ckpt`` for one more epoch; ``probe`` sees ``second`` at train start (after the restore)."""
    def trainer(callback: Callback, max_epochs: int, *extra: Callback) -> pl.Trainer:
        return tiny_trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=1,
                            num_sanity_val_steps=0, callbacks=[callback, *extra, ModelCheckpoint(
                                dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])

    trainer(first, epochs - 1).fit(TinyClassifier(), datamodule=BlobsDataModule())
    resumed = trainer(second, epochs, probe)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*NOT restored")  # the state is loaded, not started afresh
        resumed.fit(TinyClassifier(), datamodule=BlobsDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    return resumed


class _AtTrainStart(Callback):
    def __init__(self, look: Any) -> None:
        self.look = look
        self.seen: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = self.look()


def test_clipping_history_resumed_through_the_trainer_keeps_the_newest_norms(tmp_path: Path) -> None:
    old, new = GradientClipping(mode="auto", history=5), GradientClipping(mode="auto", history=3)
    probe = _AtTrainStart(lambda: (new.filled_history().clone(), new.steps))
    _resume(tmp_path, old, new, probe)
    assert torch.equal(probe.seen[0], old.filled_history()[-3:]) and probe.seen[1] == 8  # 2 epochs of 4 steps


def test_ensemble_top_k_resumed_smaller_keeps_the_best_members_and_removes_the_others_files(tmp_path: Path) -> None:
    """As Lightning's ModelCheckpoint gives up its worst top-k file, the members beyond the new top_k leave with
    their files (the oracle: the saved members sorted by score)."""
    folder = tmp_path / "members"
    old = CheckpointEnsemble(top_k=2, monitor="val/loss", dirpath=str(folder))
    new = CheckpointEnsemble(top_k=1, monitor="val/loss", dirpath=str(folder))
    probe = _AtTrainStart(lambda: ([m["path"] for m in new.members], sorted(str(p) for p in folder.iterdir())))
    _resume(tmp_path, old, new, probe)
    assert len(old.members) == 2
    best = min(old.members, key=lambda m: m["score"])["path"]
    assert probe.seen == ([best], [best])  # kept: the best member and its file only


def test_a_state_saved_under_a_key_with_the_sizing_argument_is_loaded() -> None:
    """Checkpoints written while ``history`` / ``top_k`` were part of the ``state_key`` load under the new key."""
    state = GradientClipping(mode="auto", history=4).state_dict()
    old_key = ("GradientClipping{'mode': 'auto', 'max_norm': 5.0, 'norm_type': 2.0, 'max_value': None, "
               "'agc_factor': 0.01, 'percentile': 10.0, 'history': 4}")
    new = GradientClipping(mode="auto", history=2)
    checkpoint = {"callbacks": {old_key: state}}
    assert adopt_resized_state(new, checkpoint, sizing=("history",))
    assert checkpoint["callbacks"][new.state_key] is state
    other = GradientClipping(mode="auto", history=2, percentile=50.0)  # an identifying argument changed: not adopted
    assert not adopt_resized_state(other, {"callbacks": {old_key: state}}, sizing=("history",))


def test_posthoc_ema_resumed_with_other_profiles_is_refused_in_one_line_and_keeps_the_old_snapshots(
    tmp_path: Path,
) -> None:
    """``sigma_rels`` is not a size but which profiles exist: a profile not tracked from step 0 cannot be made up from
    the saved ones. The resumed run says so in one line, starts its profiles afresh, and writes its snapshots to a
    folder of its own: the saved run's snapshot files stay as they were."""
    folder = tmp_path / "ckpt" / "posthoc_ema"

    def trainer(callback: Callback, max_epochs: int) -> pl.Trainer:
        return tiny_trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=1,
                            num_sanity_val_steps=0, callbacks=[callback, ModelCheckpoint(
                                dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])

    trainer(PostHocEMA(sigma_rels=[0.05, 0.1], snapshot_every_n_steps=2), 1).fit(
        TinyClassifier(), datamodule=BlobsDataModule())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == [f"posthoc-ema-{s:09d}.pt" for s in (2, 4)]
    resumed = PostHocEMA(sigma_rels=[0.05, 0.2], snapshot_every_n_steps=2)
    with pytest.warns(UserWarning, match="NOT restored") as record:
        trainer(resumed, 2).fit(TinyClassifier(), datamodule=BlobsDataModule(),
                                ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    [message] = [str(w.message) for w in record if "NOT restored" in str(w.message)]
    assert "\n" not in message and "gammas" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert resumed.snapshot_dir is not None and resumed.snapshot_dir.name == "posthoc_ema-v1"


def test_model_checkpoint_save_top_k_resumed_smaller_keeps_the_best_files(tmp_path: Path) -> None:
    """Lightning's ModelCheckpoint keeps every saved top-k entry after a resume with a smaller ``save_top_k`` (and
    then grows past it); lit_tricks' keeps the best ``save_top_k`` by score and removes the others' files."""
    folder = tmp_path / "top"

    def checkpoint(k: int) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=folder, monitor="val/loss", save_top_k=k, filename="{epoch}")

    old, new = checkpoint(3), checkpoint(1)
    probe = _AtTrainStart(lambda: dict(new.best_k_models))  # restored (files go at ModelCheckpoint's train start)
    _resume(tmp_path, old, new, probe, epochs=4)
    saved = {Path(p).name: float(v) for p, v in old.best_k_models.items()}
    assert len(saved) == 3
    best = min(saved, key=saved.__getitem__)
    assert [Path(p).name for p in probe.seen] == [best]
    assert len(new.best_k_models) == 1  # after epoch 3: still one entry, and one file
    assert sorted(p.name for p in folder.iterdir()) == [Path(new.best_model_path).name]
