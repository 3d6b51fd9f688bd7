"""PostHocEMA on a real Trainer (CPU): the tracked profiles against the closed form over the raw weights of every
optimizer step (with accumulation), the snapshot files (steps, format, size), a stored profile reconstructed from the
files equals the tracked one, fit == fit-stop-resume from a mid-epoch checkpoint (every snapshot file bitwise),
folders, argument checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from lit_tricks.callbacks import PostHocEMA
from lit_tricks.callbacks.posthoc_ema import SNAPSHOT_FORMAT, list_snapshots
from lit_tricks.functional.posthoc_ema import sigma_rel_to_gamma
from lit_tricks.posthoc.ema import reconstruct_posthoc_ema
from lit_tricks.validation import ArgumentError
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


class StatefulBlobs(BlobsDataModule):
    """Blobs with a resumable train loader (torchdata's StatefulDataLoader): exact mid-epoch resume."""

    def train_dataloader(self) -> Any:
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)


def no_dropout(model: TinyClassifier) -> TinyClassifier:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


class RawSteps(Callback):
    """The raw parameters after each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor]] = []
        self.last = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            self.steps.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def _fit(root: Path, callbacks: list[Callback], ckpt_path: str | None = None, **kw: Any) -> pl.Trainer:
    torch.manual_seed(0)
    trainer = tiny_trainer(root, callbacks=callbacks, limit_val_batches=0, **kw)
    trainer.fit(no_dropout(TinyClassifier()), datamodule=StatefulBlobs(), ckpt_path=ckpt_path)
    return trainer


def test_profiles_follow_the_closed_form_and_snapshots_are_written(tmp_path: Path) -> None:
    cb, raw = PostHocEMA(sigma_rels=[0.05, 0.2], snapshot_every_n_steps=3, dirpath=str(tmp_path / "s")), RawSteps()
    _fit(tmp_path, [cb, raw], max_epochs=2, accumulate_grad_batches=2)  # 8 batches an epoch: 4 steps
    T = len(raw.steps)
    assert T == 8 and cb.profiles.steps == 8
    for gamma, profile in zip(cb.gammas, cb.profiles.profiles()):
        for name, tensor in profile.items():  # ema_T = sum_t ((t/T)^(g+1) - ((t-1)/T)^(g+1)) theta_t
            expected = sum(((t / T) ** (gamma + 1) - ((t - 1) / T) ** (gamma + 1)) * raw.steps[t - 1][name].double()
                           for t in range(1, T + 1))
            torch.testing.assert_close(tensor.double(), expected, rtol=1e-5, atol=1e-6)
    files = list_snapshots(tmp_path / "s")
    assert [s for s, _ in files] == [3, 6, 8]  # every 3 steps, and the end of training
    snap = torch.load(files[-1][1], weights_only=True)
    assert snap["format"] == SNAPSHOT_FORMAT and snap["step"] == 8 and snap["gammas"] == cb.gammas
    assert snap["sigma_rels"] == pytest.approx([0.05, 0.2])
    params = dict(TinyClassifier().named_parameters())
    assert [set(p) for p in snap["ema"]] == [set(params)] * 2
    assert set(snap["buffers"]) == {"net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"}
    for a, b in zip(snap["ema"], cb.profiles.profiles()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stored_profile_reconstructed_from_the_files_equals_the_tracked_ema(tmp_path: Path) -> None:
    """The issue's first oracle: snapshot at the final step, coefficients in float64, 1e-6 relative."""
    cb = PostHocEMA(snapshot_every_n_steps=4, dirpath=str(tmp_path / "s"))
    trainer = _fit(tmp_path, [cb], max_epochs=3)
    assert trainer.global_step == 24
    for sigma_rel, tracked in zip((0.05, 0.10), cb.profiles.profiles()):
        (out,) = reconstruct_posthoc_ema(tmp_path / "s", [sigma_rel])
        for name, t in tracked.items():
            assert float((out[name] - t).norm() / t.norm()) < 1e-6, name
    (by_gamma,) = reconstruct_posthoc_ema(tmp_path / "s", gammas=[sigma_rel_to_gamma(0.10)])
    assert all(torch.equal(by_gamma[k], out[k]) for k in out)
    assert torch.equal(out["net.1.running_mean"], trainer.lightning_module.net[1].running_mean)  # buffers: copied


def test_fit_equals_fit_stop_resume_from_a_mid_epoch_checkpoint_bitwise(tmp_path: Path) -> None:
    """8 steps an epoch; the interrupted run saves at step 10 (mid-epoch 1), goes on to step 14 (snapshot 12 and an
    end-of-fit snapshot 14 that the uninterrupted run never writes), then resumes from step 10 to 24."""
    def make(d: Path) -> PostHocEMA:
        return PostHocEMA(sigma_rels=[0.05, 0.1], snapshot_every_n_steps=4, dirpath=str(d))

    _fit(tmp_path / "a", [make(tmp_path / "a" / "s")], max_epochs=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b" / "ckpt", every_n_train_steps=10, save_top_k=-1, filename="s{step}",
                           auto_insert_metric_name=False)
    _fit(tmp_path / "b", [make(tmp_path / "b" / "s"), ckpt], max_steps=14)
    assert [s for s, _ in list_snapshots(tmp_path / "b" / "s")] == [4, 8, 12, 14]
    resumed = make(tmp_path / "b" / "s")
    _fit(tmp_path / "b", [resumed], max_epochs=3, ckpt_path=str(tmp_path / "b" / "ckpt" / "s10.ckpt"))
    a, b = list_snapshots(tmp_path / "a" / "s"), list_snapshots(tmp_path / "b" / "s")
    assert [s for s, _ in a] == [s for s, _ in b] == [4, 8, 12, 16, 20, 24]
    for (_, pa), (_, pb) in zip(a, b):
        sa, sb = torch.load(pa, weights_only=True), torch.load(pb, weights_only=True)
        assert sa["step"] == sb["step"]
        for da, db in zip([*sa["ema"], sa["buffers"]], [*sb["ema"], sb["buffers"]]):
            assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da), pa.name


def test_default_folder_is_beside_the_checkpoints_and_versioned(tmp_path: Path) -> None:
    first = PostHocEMA(snapshot_every_n_steps=4)
    _fit(tmp_path, [first, ModelCheckpoint(dirpath=tmp_path / "ckpt")], max_epochs=1)
    assert first.snapshot_dir == tmp_path / "ckpt" / "posthoc_ema"
    second = PostHocEMA(snapshot_every_n_steps=4)
    _fit(tmp_path, [second, ModelCheckpoint(dirpath=tmp_path / "ckpt")], max_epochs=1)
    assert second.snapshot_dir == tmp_path / "ckpt" / "posthoc_ema-v1"
    assert [s for s, _ in list_snapshots(second.snapshot_dir)] == [4, 8]
    with pytest.raises(ValueError, match="already holds snapshots of another run"):
        _fit(tmp_path, [PostHocEMA(snapshot_every_n_steps=4, dirpath=str(first.snapshot_dir))], max_epochs=1)
    assert [s for s, _ in list_snapshots(first.snapshot_dir)] == [4, 8]  # nothing removed


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(sigma_rels=[0.3]), "sigma_rels must be a number in"),
    (dict(sigma_rels=[]), "at least one"),
    (dict(sigma_rels=[0.05], gammas=[3.0]), "one or the other"),
    (dict(gammas=[-1.0]), "gammas must be a number in"),
    (dict(sigma_rels=[0.05, 0.05]), "distinct"),
    (dict(snapshot_every_n_steps=0), "snapshot_every_n_steps"),
    (dict(snapshot_every_n_steps=10, update_every_n_steps=3), "multiple of update_every_n_steps=3"),
])
def test_bad_arguments_raise_one_line(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ArgumentError, match=match) as err:
        PostHocEMA(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith("PostHocEMA: ")


def test_a_second_fit_continues_the_profiles_and_its_snapshots(tmp_path: Path) -> None:
    cb = PostHocEMA(snapshot_every_n_steps=3, dirpath=str(tmp_path / "s"))
    model = no_dropout(TinyClassifier())
    tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[cb]).fit(model, datamodule=StatefulBlobs())
    assert [s for s, _ in list_snapshots(tmp_path / "s")] == [3, 6, 8]
    tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[cb]).fit(model, datamodule=StatefulBlobs())
    assert cb.profiles.steps == 16  # a new Trainer starts at global_step 0; the profiles' time goes on
    assert [s for s, _ in list_snapshots(tmp_path / "s")] == [3, 6, 9, 12, 15, 16]  # 8 was the first fit's end


class Tied(TinyClassifier):
    """The last layer's weight is tied to a second head (one tensor, two state_dict keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.head2 = nn.Linear(16, 3)
        self.head2.weight = self.net[4].weight


def test_tied_weights_are_tracked_once_and_loaded_under_every_name(tmp_path: Path) -> None:
    from lit_tricks.posthoc.evaluate import load_weights_

    cb = PostHocEMA(snapshot_every_n_steps=4, dirpath=str(tmp_path / "s"))
    model = Tied()
    tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[cb]).fit(model, datamodule=StatefulBlobs())
    assert "head2.weight" not in cb.profiles.names and "net.4.weight" in cb.profiles.names
    (ema,) = reconstruct_posthoc_ema(tmp_path / "s", [0.1])
    fresh = Tied()
    load_weights_(fresh, ema)
    assert fresh.head2.weight is fresh.net[4].weight and torch.equal(fresh.net[4].weight, ema["net.4.weight"])


def test_sharded_strategies_other_than_model_parallel_are_refused_in_one_line() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="needs ModelParallelStrategy") as err:
        PostHocEMA().setup(SimpleNamespace(strategy=FSDPStrategy()), TinyClassifier(), "fit")  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
