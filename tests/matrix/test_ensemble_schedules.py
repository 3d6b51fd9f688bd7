"""CheckpointEnsemble, Schedule and ReduceOnPlateau cells. Oracles: Lightning's ModelCheckpoint ranking in the same
run (NaN is the worst score, ties keep the older), the closed form written out, torch's ReduceLROnPlateau fed the
same metric stream."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_tricks.callbacks import CheckpointEnsemble, NaNGuard, RNGState
from lit_tricks.callbacks.ensemble import load_member_state_dict
from lit_tricks.schedules import ReduceOnPlateau, Schedule, lr_scheduler_config
from tests.matrix.cells import cell
from tests.matrix.models import (
    BlobsDataModule,
    MultiValClassifier,
    ScriptedMetric,
    StepRecorder,
    TinyClassifier,
    fit,
    iterable_loader,
    tied_classifier,
    tiny_trainer,
)

NAN = math.nan


def mc_scores(mc: ModelCheckpoint) -> list[float]:
    return sorted(float(v) for v in mc.best_k_models.values())


def top_scores(ens: CheckpointEnsemble) -> list[float]:
    return sorted(float(m["score"]) for m in ens.members if "top_k" in m["tags"])


def reference_top_k(scores: list[float], k: int, mode: str) -> list[float]:
    """ModelCheckpoint's rule: NaN ranks worst; a new score enters only when strictly better than the worst kept."""
    kept: list[float] = []
    worst_key = (lambda s: (math.isnan(s), s)) if mode == "min" else (lambda s: (math.isnan(s), -s))
    for s in scores:
        if len(kept) < k:
            kept.append(s)
            continue
        worst = max(kept, key=worst_key)
        if worst_key(s) < worst_key(worst):
            kept.remove(worst)
            kept.append(s)
    return kept


# ---------------------------------------------------------------- CheckpointEnsemble
@cell("CheckpointEnsemble", "monitor")
def test_ensemble_nan_score_ranks_worst_like_model_checkpoint(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(top_k=2, monitor="val/score", mode="min", keep_inline=True)
    mc = ModelCheckpoint(dirpath=tmp_path / "mc", monitor="val/score", mode="min", save_top_k=2)
    fit(tmp_path, lambda: ScriptedMetric([NAN, 1.0, 0.5, 0.3]), [ens, mc], enable_checkpointing=True, max_epochs=4,
        limit_train_batches=1, limit_val_batches=1)
    assert top_scores(ens) == pytest.approx(mc_scores(mc)) and mc_scores(mc) == pytest.approx([0.3, 0.5])


@cell("CheckpointEnsemble", "monitor")
def test_ensemble_train_only_monitor_ranks_like_model_checkpoint(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(top_k=2, monitor="train/score", keep_inline=True)
    mc = ModelCheckpoint(dirpath=tmp_path / "mc", monitor="train/score", save_top_k=2)
    fit(tmp_path, lambda: ScriptedMetric([3.0, 1.0, 2.0, 0.5], train_only=True), [ens, mc], enable_checkpointing=True,
        max_epochs=4, limit_train_batches=1, limit_val_batches=0)
    assert top_scores(ens) == mc_scores(mc) == [0.5, 1.0]


@cell("CheckpointEnsemble", "multi_val")
def test_ensemble_ranks_one_loader_of_several_like_model_checkpoint(tmp_path: Path) -> None:
    class TwoLoaders(BlobsDataModule):
        def val_dataloader(self) -> list:
            return [super().val_dataloader(), super().val_dataloader()]

    key = "val/loss/dataloader_idx_1"
    ens = CheckpointEnsemble(top_k=2, monitor=key, keep_inline=True)
    mc = ModelCheckpoint(dirpath=tmp_path / "mc", monitor=key, save_top_k=2)
    fit(tmp_path, MultiValClassifier, [ens, mc], datamodule=TwoLoaders(n=128), enable_checkpointing=True,
        max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    assert top_scores(ens) == mc_scores(mc) and len(top_scores(ens)) == 2


@cell("CheckpointEnsemble", "val_schedule")
def test_ensemble_check_val_every_2_epochs_like_model_checkpoint(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(top_k=2, monitor="val/score", keep_inline=True)
    mc = ModelCheckpoint(dirpath=tmp_path / "mc", monitor="val/score", save_top_k=2)
    fit(tmp_path, lambda: ScriptedMetric([5.0, 4.0, 3.0, 2.0, 1.0, 0.5]), [ens, mc], enable_checkpointing=True,
        max_epochs=6, limit_train_batches=1, limit_val_batches=1, check_val_every_n_epoch=2)
    assert top_scores(ens) == mc_scores(mc) == [0.5, 2.0]
    assert sorted(m["epoch"] for m in ens.members) == [3, 5]


@cell("CheckpointEnsemble", "accumulation")
def test_ensemble_snapshots_are_the_epoch_end_weights(tmp_path: Path) -> None:
    ens, rec = CheckpointEnsemble(every_n_epochs=1), StepRecorder()
    fit(tmp_path, TinyClassifier, [ens, rec], max_epochs=2, limit_train_batches=3, accumulate_grad_batches=2)
    assert [m["step"] for m in ens.members] == [2, 4]  # the partial last window steps too
    for m, params in zip(ens.members, [rec.params[1], rec.params[3]]):
        sd = load_member_state_dict(m["path"])
        assert all(torch.equal(sd[k], v) for k, v in params.items())


@cell("CheckpointEnsemble", "tied")
def test_ensemble_member_of_tied_model_reloads_tied(tmp_path: Path) -> None:
    ens, rec = CheckpointEnsemble(every_n_epochs=1), StepRecorder()
    model = tied_classifier()
    fit(tmp_path, model, [ens, rec], max_epochs=1, limit_train_batches=2)
    members = ens.members_as_modules(model)
    assert members[0].net.dec.weight is members[0].net.enc.weight
    assert all(torch.equal(p, rec.params[-1][n]) for n, p in members[0].named_parameters())


@cell("CheckpointEnsemble", "second_fit")
def test_ensemble_second_run_keeps_the_first_runs_members(tmp_path: Path) -> None:
    first = CheckpointEnsemble(every_n_epochs=1)
    fit(tmp_path, TinyClassifier, [first], max_epochs=2, limit_train_batches=2)
    saved = {m["path"]: load_member_state_dict(m["path"]) for m in first.members}
    fit(tmp_path, TinyClassifier, [CheckpointEnsemble(every_n_epochs=1)], max_epochs=2, limit_train_batches=2, seed=1)
    for path, sd in saved.items():
        now = load_member_state_dict(path)
        assert all(torch.equal(now[k], v) for k, v in sd.items()), path


@cell("CheckpointEnsemble", "pickle")
def test_ensemble_export_is_picklable(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(every_n_epochs=1)
    model = TinyClassifier()
    fit(tmp_path, model, [ens], max_epochs=2, limit_train_batches=2)
    exported = ens.export(model.eval(), example_input=torch.randn(4, 8))
    buf = io.BytesIO()
    torch.save(exported, buf)
    assert buf.tell() > 0


@cell("CheckpointEnsemble", "load_other_args")
def test_ensemble_load_state_into_other_arguments(tmp_path: Path) -> None:
    src = CheckpointEnsemble(top_k=2, monitor="val/score", keep_inline=True)
    fit(tmp_path, lambda: ScriptedMetric([3.0, 1.0, 2.0]), [src], max_epochs=3, limit_train_batches=1,
        limit_val_batches=1)
    dst = CheckpointEnsemble(top_k=1, monitor="val/score", keep_inline=True, combine="vote")
    dst.load_state_dict(src.state_dict())
    assert len(src.members) == 2 and dst.combine == "vote"  # a smaller top_k keeps the best saved member (1.0)
    assert dst.member_paths() == [min(src.members, key=lambda m: m["score"])["path"]]


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=10), k=st.integers(1, 4),
       mode=st.sampled_from(["min", "max"]))
@cell("CheckpointEnsemble", "properties")
def test_top_k_ranking_matches_model_checkpoint_rule(scores: list[float], k: int, mode: str) -> None:
    """The callback's ranking (driven with a fake trainer, inline members) against ModelCheckpoint's rule."""
    ens = CheckpointEnsemble(top_k=k, monitor="m", mode=mode, keep_inline=True)
    for e, s in enumerate(scores):
        trainer = SimpleNamespace(callback_metrics={"m": torch.tensor(s)}, current_epoch=e, global_step=e,
                                  is_global_zero=True, default_root_dir=".")
        ens._update_top_k(trainer, {"w": torch.tensor([float(e)])})  # type: ignore[arg-type]
    as_logged = [float(torch.tensor(s)) for s in scores]  # metrics are float32 tensors
    assert sorted(top_scores(ens)) == sorted(reference_top_k(as_logged, k, mode))


# ---------------------------------------------------------------- Schedule
class Scheduled(TinyClassifier):
    def __init__(self, **schedule: Any) -> None:
        super().__init__(lr=0.1)
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        partial = functools.partial(Schedule, **self.schedule)
        return {"optimizer": opt, "lr_scheduler": lr_scheduler_config(partial, opt, self.trainer)}


def warmup_cosine(step: int, total: int, warmup: int = 2, base: float = 0.1) -> float:
    if step < warmup:
        return base * (0.01 + 0.99 * step / warmup)
    body = max(1, total - warmup)
    return base * (1 + math.cos(math.pi * min(step - warmup, body) / body)) / 2


@cell("Schedule", "accumulation")
def test_schedule_steps_per_window(tmp_path: Path) -> None:
    rec = StepRecorder()
    fit(tmp_path, lambda: Scheduled(body="cosine", warmup_steps=2), [rec], max_epochs=2, limit_train_batches=3,
        accumulate_grad_batches=2)
    assert len(rec.lrs) == 4  # ceil(3/2) = 2 steps per epoch
    assert [lr[0] for lr in rec.lrs] == pytest.approx([warmup_cosine(s, 4) for s in range(4)], rel=1e-12)


@cell("Schedule", "iterable")
def test_schedule_iterable_with_max_steps_uses_max_steps(tmp_path: Path) -> None:
    rec = StepRecorder()
    pl.seed_everything(0)
    trainer = tiny_trainer(tmp_path, max_steps=5, max_epochs=-1, callbacks=[rec], enable_checkpointing=False,
                           limit_val_batches=0)
    trainer.fit(Scheduled(body="cosine", warmup_steps=2), train_dataloaders=iterable_loader())
    assert [lr[0] for lr in rec.lrs] == pytest.approx([warmup_cosine(s, 5) for s in range(5)], rel=1e-12)


@pytest.mark.parametrize("bound", ["max_epochs", "max_time"])
@cell("Schedule", "iterable", "limitation",
      "Schedule with a decaying body needs a finite total: an IterableDataset bounded by epochs or max_time only "
      "fails at start-up with `needs total_steps (finite)`; set max_steps or total_steps")
def test_schedule_iterable_without_a_step_bound_refuses(tmp_path: Path, bound: str) -> None:
    kw: dict[str, Any] = {"max_epochs": 2} if bound == "max_epochs" else {"max_time": "00:00:01:00", "max_epochs": -1}
    trainer = tiny_trainer(tmp_path, callbacks=[], enable_checkpointing=False, limit_val_batches=0, **kw)
    with pytest.raises(ValueError, match=r"needs total_steps \(finite\)"):
        trainer.fit(Scheduled(body="cosine", warmup_steps=2), train_dataloaders=iterable_loader())


@cell("Schedule", "resume_changed")
def test_schedule_resumed_with_longer_max_epochs_follows_one_rule(tmp_path: Path) -> None:
    """Whichever rule is chosen, every resumed step follows it: all steps the old closed form (total 4) or all the
    new one (total 8)."""
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    fit(tmp_path, lambda: Scheduled(body="cosine", warmup_steps=2), [ck], enable_checkpointing=True, max_epochs=2,
        limit_train_batches=2)
    rec = StepRecorder()
    fit(tmp_path, lambda: Scheduled(body="cosine", warmup_steps=2), [rec], max_epochs=4, limit_train_batches=2,
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    used = [lr[0] for lr in rec.lrs]
    new = [warmup_cosine(s, 8) for s in range(4, 8)]
    old = [warmup_cosine(s, 4) for s in range(4, 8)]
    assert used == pytest.approx(new, rel=1e-9) or used == pytest.approx(old, rel=1e-9), used


@cell("Schedule", "lr_sources")
@cell("NaNGuard", "lr_sources")
def test_schedule_with_nan_guard_rollback_lr_cut(tmp_path: Path) -> None:
    class NaNScheduled(Scheduled):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return super().training_step((x * float("nan"), y) if self.global_step == 3 else (x, y), batch_idx)

    guard, rec = NaNGuard(policy="rollback", lr_factor=0.5), StepRecorder()
    fit(tmp_path, lambda: NaNScheduled(body="cosine", warmup_steps=2), [guard, rec], max_epochs=2,
        limit_train_batches=4)
    assert guard.bad_steps == [3]
    # rollback (and its lr cut) happens right after the bad step's optimizer.step, whose update is dropped: the
    # recorder sees the cut from the next step on
    expected = [warmup_cosine(s, 8) * (0.5 if s > 3 else 1.0) for s in range(8)]
    assert [lr[0] for lr in rec.lrs] == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(total=st.integers(3, 40), warmup=st.integers(0, 5), step=st.integers(0, 50), base=st.floats(1e-4, 1.0))
@cell("Schedule", "properties")
def test_schedule_lr_at_equals_warmup_cosine_formula(total: int, warmup: int, step: int, base: float) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = Schedule(opt, body="cosine", warmup_steps=warmup, total_steps=total)
    assert sched.lr_at(step, base) == pytest.approx(warmup_cosine(step, total, warmup, base), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- ReduceOnPlateau
class Plateau(ScriptedMetric):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        partial = functools.partial(ReduceOnPlateau, monitor="val/score", patience=1, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": lr_scheduler_config(partial, opt, self.trainer)}


def torch_plateau_lrs(scores: list[float]) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    out = []
    for s in scores:
        out.append(opt.param_groups[0]["lr"])
        sched.step(s)
    return out


@cell("ReduceOnPlateau", "monitor")
def test_plateau_with_nan_scores_matches_torch(tmp_path: Path) -> None:
    scores = [3.0, NAN, NAN, 2.0, NAN, NAN]
    rec = StepRecorder()
    fit(tmp_path, lambda: Plateau(scores), [rec], max_epochs=6, limit_train_batches=1, limit_val_batches=1)
    assert [lr[0] for lr in rec.lrs] == pytest.approx(torch_plateau_lrs(scores), rel=1e-12)


@cell("ReduceOnPlateau", "val_schedule")
def test_plateau_every_2_epochs_matches_torch_on_the_validated_epochs(tmp_path: Path) -> None:
    scores = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    rec = StepRecorder()
    fit(tmp_path, lambda: Plateau(scores, by_epoch=False), [rec], max_epochs=6, limit_train_batches=1,
        limit_val_batches=1, check_val_every_n_epoch=2)
    reference = torch_plateau_lrs(scores[:3])  # one plateau step per validation
    assert [lr[0] for lr in rec.lrs] == pytest.approx([r for r in reference for _ in (0, 1)], rel=1e-12)


@cell("ReduceOnPlateau", "lr_sources")
def test_plateau_keeps_nan_guard_lr_cut(tmp_path: Path) -> None:
    class NaNPlateau(Plateau):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return super().training_step((x * float("nan"), y) if self.global_step == 1 else (x, y), batch_idx)

    guard, rec = NaNGuard(policy="rollback", lr_factor=0.5), StepRecorder()
    fit(tmp_path, lambda: NaNPlateau([3.0, 2.0, 1.0, 0.5]), [guard, rec], max_epochs=4, limit_train_batches=1,
        limit_val_batches=1)
    assert guard.bad_steps == [1]
    assert [lr[0] for lr in rec.lrs] == pytest.approx([0.1, 0.1, 0.05, 0.05], rel=1e-12)


class NativePlateau(ScriptedMetric):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/score", "interval": "epoch"}}


def _resumed_lrs(tmp_path: Path, make: Any, scores: list[float]) -> tuple[list, list]:
    kw: dict[str, Any] = dict(limit_train_batches=1, limit_val_batches=1)
    ref = StepRecorder()
    fit(tmp_path / "ref", lambda: make(scores), [ref, RNGState()], max_epochs=6, **kw)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    fit(tmp_path / "run", lambda: make(scores), [ck, RNGState()], enable_checkpointing=True, max_epochs=3, **kw)
    rec = StepRecorder()
    fit(tmp_path / "run", lambda: make(scores), [rec, RNGState()], max_epochs=6,
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"), **kw)
    return ref.lrs, rec.lrs


@cell("ReduceOnPlateau", "resume_changed", "limitation",
      "a checkpoint written at train-epoch end precedes that epoch's plateau step, and Lightning does not replay "
      "plateau steps when restarting: a resumed run lacks one plateau step (Lightning + torch's own "
      "ReduceLROnPlateau behave the same; the test checks ReduceOnPlateau matches them)")
def test_plateau_resume_matches_lightning_with_torch_plateau(tmp_path: Path) -> None:
    scores = [3.0, 3.0, 3.0, 2.0, 2.0, 2.0]
    ref_ours, resumed_ours = _resumed_lrs(tmp_path / "ours", Plateau, scores)
    ref_torch, resumed_torch = _resumed_lrs(tmp_path / "torch", NativePlateau, scores)
    assert ref_ours == ref_torch and resumed_ours == resumed_torch
    assert resumed_ours != ref_ours[3:]  # the documented lost step
