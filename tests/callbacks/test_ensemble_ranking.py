"""CheckpointEnsemble ranks top-k members as Lightning's ModelCheckpoint does: NaN is the worst score, ±inf are
ordinary; oracle: Lightning's own ModelCheckpoint.check_monitor_top_k/_update_best_and_save driven with the same
scores (no Trainer), and a real fit with scores nan, 1.0, 0.5, 0.3."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_tricks.callbacks.ensemble import CheckpointEnsemble, top_k_decision
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


def _lightning_kept(scores: list[float], k: int, mode: str) -> list[int]:
    """Indices kept by Lightning's ModelCheckpoint fed ``scores`` one by one (saving and file names stubbed)."""
    ckpt = ModelCheckpoint(monitor="m", mode=mode, save_top_k=k)
    trainer: Any = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda x, **kw: x))
    names = iter(range(len(scores)))
    ckpt._save_checkpoint = lambda *a, **kw: None  # type: ignore[method-assign]
    ckpt._should_remove_checkpoint = lambda *a, **kw: False  # type: ignore[method-assign]
    ckpt._get_metric_interpolated_filepath_name = lambda *a, **kw: str(next(names))  # type: ignore[method-assign]
    for i, score in enumerate(scores):
        current = torch.tensor(score, dtype=torch.float64)  # float32 would round tiny scores to 0
        if ckpt.check_monitor_top_k(trainer, current):
            ckpt._update_best_and_save(current, trainer, {"epoch": torch.tensor(i), "step": torch.tensor(i)})
        else:
            next(names)
    return sorted(int(p) for p in ckpt.best_k_models)


def _ours_kept(scores: list[float], k: int, mode: str) -> list[int]:
    kept: list[tuple[int, float]] = []
    for i, score in enumerate(scores):
        enters, drop, stored = top_k_decision([v for _, v in kept], score, k, mode)
        if enters:
            if drop is not None:
                kept.pop(drop)
            kept.append((i, stored))
    return sorted(i for i, _ in kept)


_SCORES = st.lists(
    st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, 1.0]),
              st.floats(-3, 3, allow_nan=False)),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(scores=_SCORES, k=st.integers(1, 4), mode=st.sampled_from(["min", "max"]))
def test_top_k_ranking_with_nan_and_inf_matches_lightning_model_checkpoint(scores: list[float], k: int,
                                                                           mode: str) -> None:
    assert _ours_kept(scores, k, mode) == _lightning_kept(scores, k, mode)


class _Scripted(TinyClassifier):
    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/score", torch.tensor(self.scores[self.current_epoch]))


@pytest.mark.parametrize("mode,scores,kept_epochs", [
    ("min", [float("nan"), 1.0, 0.5, 0.3], [2, 3]),
    ("max", [float("nan"), 0.1, 0.5, float("nan")], [1, 2]),
])
def test_nan_score_is_the_worst_top_k_member_in_a_fit(tmp_path: Path, mode: str, scores: list[float],
                                                      kept_epochs: list[int]) -> None:
    ens = CheckpointEnsemble(top_k=2, monitor="val/score", mode=mode, keep_inline=True)
    trainer = tiny_trainer(tmp_path, max_epochs=4, limit_train_batches=1, limit_val_batches=1, callbacks=[ens],
                           enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(_Scripted(scores), BlobsDataModule())
    assert sorted(m["epoch"] for m in ens.members) == kept_epochs
    assert sorted(m["epoch"] for m in ens.members) == _lightning_kept(scores, 2, mode)


class _TrainScripted(TinyClassifier):
    """Logs ``train/score`` in its own ``on_train_epoch_end`` (Lightning calls it after the non-monitoring
    callbacks' hooks, CheckpointEnsemble's included)."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def on_train_epoch_end(self) -> None:
        self.log("train/score", torch.tensor(self.scores[self.current_epoch]))


@pytest.mark.parametrize("limit_val_batches", [0, 1])
def test_train_only_metric_ranks_without_model_checkpoint(tmp_path: Path, limit_val_batches: int) -> None:
    """No ModelCheckpoint to rank at: the epoch's candidate is ranked at the next epoch start / at train end, on the
    epoch's own score (not the previous epoch's, still in callback_metrics at that epoch's end)."""
    scores = [3.0, 1.0, 2.0, 0.5]
    ens = CheckpointEnsemble(top_k=2, monitor="train/score", keep_inline=True)
    trainer = tiny_trainer(tmp_path, max_epochs=4, limit_train_batches=1, limit_val_batches=limit_val_batches,
                           callbacks=[ens], enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(_TrainScripted(scores), BlobsDataModule())
    assert sorted((m["epoch"], m["score"]) for m in ens.members) == [(1, 1.0), (3, 0.5)]
    assert sorted(m["epoch"] for m in ens.members) == _lightning_kept(scores, 2, "min")


def test_two_fits_in_one_root_dir_keep_their_own_member_files(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = TinyClassifier()
        model.net[3].p = 0.0
        ens = CheckpointEnsemble(every_n_epochs=1)
        tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[ens],
                     enable_checkpointing=False).fit(model, BlobsDataModule())
        runs.append((ens, {k: v.clone() for k, v in model.state_dict().items()}))
    (first, first_weights), (second, second_weights) = runs
    assert Path(first.member_paths()[0]).parent == tmp_path / "ensemble"
    assert Path(second.member_paths()[0]).parent == tmp_path / "ensemble-v1"
    for ens, weights in runs:  # each run's file still holds that run's weights
        stored = ens.member_state_dicts()[0]
        assert all(torch.equal(stored[k], weights[k]) for k in weights)
    assert not torch.equal(first_weights["net.0.weight"], second_weights["net.0.weight"])


def test_default_member_folder_is_under_the_logger_version(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    ens = CheckpointEnsemble(every_n_epochs=1)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[ens],
                           enable_checkpointing=False, logger=CSVLogger(tmp_path))
    trainer.fit(TinyClassifier(), BlobsDataModule())
    assert Path(ens.member_paths()[0]).parent == Path(trainer.log_dir) / "ensemble"
    assert Path(trainer.log_dir).name == "version_0"


def test_export_saves_and_reloads_with_equal_predictions(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(every_n_epochs=1, keep_inline=True)
    model = TinyClassifier()
    tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[ens],
                 enable_checkpointing=False).fit(model, BlobsDataModule())
    x = torch.randn(5, 8)
    expected = ens.predict_proba(x, model)
    program = ens.export(model, example_input=x)
    assert isinstance(program, torch.export.ExportedProgram)
    torch.export.save(program, tmp_path / "ens.pt2")
    torch.save(ens.export(model), tmp_path / "ens.pt")  # without example_input: an fx GraphModule
    with torch.no_grad():
        for reloaded in (torch.export.load(tmp_path / "ens.pt2").module(),
                         torch.load(tmp_path / "ens.pt", weights_only=False)):
            torch.testing.assert_close(reloaded(x), expected, rtol=1e-6, atol=1e-7)
