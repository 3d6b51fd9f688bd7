"""NaNGuard, RNGState and Preemption on the tiny model, in-process (the subprocess battery is tests/fault/battery/)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_tricks.callbacks.nan_guard import NaNGuard, NonFiniteCheckpointError
from lit_tricks.callbacks.preemption import Preemption
from lit_tricks.callbacks.rng_state import RNGState
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"policy": "ignore"}, "policy"), ({"lr_factor": 0.0}, "lr_factor"),
    ({"snapshot_every_n_steps": 0}, "snapshot_every_n_steps"), ({"max_consecutive": 0}, "max_consecutive"),
])
def test_nan_guard_validates_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        NaNGuard(**kwargs)


def test_nan_guard_refuses_to_save_non_finite_weights() -> None:
    guard = NaNGuard()
    trainer: Any = SimpleNamespace(global_step=7)
    good = {"state_dict": {"w": torch.ones(3)}, "optimizer_states": [{"state": {0: {"m": torch.zeros(3)}}}]}
    guard.on_save_checkpoint(trainer, None, good)  # type: ignore[arg-type]
    bad = {"state_dict": {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}, "optimizer_states": []}
    with pytest.raises(NonFiniteCheckpointError, match=r"state_dict\.w"):
        guard.on_save_checkpoint(trainer, None, bad)  # type: ignore[arg-type]
    NaNGuard(check_on_save=False).on_save_checkpoint(trainer, None, bad)  # type: ignore[arg-type]


def test_nan_guard_state_round_trip_loads_weights_only() -> None:
    guard = NaNGuard(policy="rollback")
    guard.bad_steps, guard.rollbacks, guard.lr_scale = [3, 9], 2, 0.25
    buffer = io.BytesIO()
    torch.save(guard.state_dict(), buffer)
    buffer.seek(0)
    other = NaNGuard(policy="rollback")
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.state_dict() == guard.state_dict()
    assert NaNGuard(policy="stop").state_key != guard.state_key


class _NaNAt(Callback):
    """Turns the loss of one optimizer step into NaN by poisoning the gradients."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.fill_(float("nan"))


def test_skip_step_keeps_weights_finite_and_checkpoint_good(tmp_path: Path) -> None:
    guard = NaNGuard(policy="skip_step")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_last=True)
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[_NaNAt(2), guard, ckpt])
    model = TinyClassifier()
    trainer.fit(model, datamodule=BlobsDataModule(n=128))
    assert guard.bad_steps == [2]
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    last = torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())


def test_rng_state_round_trip_restores_at_train_start() -> None:
    callback = RNGState()
    torch.manual_seed(5)
    state = callback.state_dict()
    expected = torch.rand(3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = RNGState()
    other.load_state_dict(torch.load(buffer, weights_only=True))
    torch.manual_seed(99)
    epochs = SimpleNamespace(processed=0, started=1)  # resumed inside epoch 0 (no new iterator to create)
    trainer: Any = SimpleNamespace(
        fit_loop=SimpleNamespace(restarting=False, restarted_mid_epoch=False,
                                 epoch_progress=SimpleNamespace(current=epochs)),
        _logger_connector=SimpleNamespace(_callback_metrics={}, _logged_metrics={}),
        strategy=SimpleNamespace(root_device=torch.device("cpu")))
    other.on_train_start(trainer, None)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(3), expected)


def test_preemption_validates_arguments() -> None:
    with pytest.raises(ValueError, match="signals"):
        Preemption(signals=("SIGKILL",))
    with pytest.raises(ValueError, match="requeue"):
        Preemption(requeue="sometimes")
    with pytest.raises(ValueError, match="filename"):
        Preemption(filename="preempted.pt")


class _SignalAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_preemption_saves_at_batch_end_and_exits_zero(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    preemption = Preemption(signals=("SIGUSR1",), requeue=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=100)
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[preemption, _SignalAt(3), ckpt])
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(TinyClassifier(), datamodule=BlobsDataModule(n=256))
    assert exit_info.value.code in (None, 0)
    saved = tmp_path / "c" / "last-preempted.ckpt"
    assert preemption.saved_path == str(saved)
    assert torch.load(saved, weights_only=True)["global_step"] == 4  # the signalled step completed, then saved
    assert signal.getsignal(signal.SIGUSR1) == before, "the previous handler is back"


@pytest.mark.parametrize(("requeue", "scontrol_rc"), [(True, 0), (False, 0), (True, 1)])
def test_a_requeued_rank_outlives_slurms_sigterm_while_it_exits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               requeue: bool, scontrol_rc: int) -> None:
    """After the save and ``scontrol requeue``, SLURM sends SIGTERM to every task of the job; a rank still unwinding
    must not die of it (it did: the handlers were restored at on_exception, so the default action killed it)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    calls: list[list[str]] = []
    monkeypatch.setattr("lit_tricks.callbacks.preemption.subprocess.call",
                        lambda cmd: calls.append(cmd) or scontrol_rc)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    preemption = Preemption(requeue=requeue)  # SIGTERM and SIGUSR1
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[preemption, _SignalAt(3)], plugins=[SLURMEnvironment()])
    try:
        with pytest.raises(SystemExit):
            trainer.fit(TinyClassifier(), datamodule=BlobsDataModule(n=256))
        assert calls == ([["scontrol", "requeue", "7"]] if requeue else [])
        if not requeue or scontrol_rc:  # not requeued (not asked, or scontrol failed): the previous handlers are back
            assert {s: signal.getsignal(s) for s in before} == before
            return
        assert signal.getsignal(signal.SIGTERM) == Preemption._ending  # still handled after the fit ended
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM ending the requeued job's tasks: this process goes on
        assert preemption.saved_path is not None
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_preemption_owns_slurm_signals_and_requeues_only_on_the_requeue_signal(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    with pytest.raises(ValueError, match="requeue_signals"):
        Preemption(requeue_signals=("SIGKILL",))
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    preemption = Preemption()
    environment = SLURMEnvironment()
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[preemption], plugins=[environment])
    preemption.setup(trainer, TinyClassifier(), "fit")
    assert environment.auto_requeue is False  # Lightning's SLURM handlers are not registered
    preemption.received = int(signal.SIGTERM)
    assert not preemption._should_requeue()  # SLURM's own SIGTERM: SLURM requeues or cancels by itself
    preemption.received = int(signal.SIGUSR1)
    assert preemption._should_requeue()
