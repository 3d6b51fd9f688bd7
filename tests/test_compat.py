"""Every function of :mod:`lit_tricks.compat` against the installed Lightning: when an upgrade moves one of the
private internals it reads, the test of that function fails by name. One tiny fit (module-scoped) feeds the tests
that need a running Trainer."""

from __future__ import annotations

import inspect
import os
import sys
import typing
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import SingleDeviceStrategy

from lit_tricks import compat
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer
from tests.test_architecture import imports_of

pytestmark = pytest.mark.timeout(120)


class _Recorder(Logger):
    """Keeps the ``probe`` values Lightning wrote to the logger."""

    def __init__(self) -> None:
        super().__init__()
        self.probes: list[float] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "probe" in metrics:
            self.probes.append(float(metrics["probe"]))


class _Probe(Callback):
    """Calls the compat functions from inside a fit and records what they answered."""

    def __init__(self) -> None:
        self.logs_at: dict[int, bool] = {}  # global step -> logs_this_step
        self.accumulating: list[tuple[int, bool]] = []  # (batch_idx, inside_accumulation_window)
        self.unwrapped_is_raw: list[bool] = []
        self.trainer_of_module: list[bool] = []
        self.restarted: bool | None = None
        self.rng_moved: bool | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = torch.get_rng_state()
        self.restarted = compat.restart_train_iterator(trainer)
        self.rng_moved = not torch.equal(before, torch.get_rng_state())  # a new iterator draws its base seed

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.trainer_of_module.append(compat.module_trainer(pl_module) is trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.accumulating.append((batch_idx, compat.inside_accumulation_window(trainer)))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self.unwrapped_is_raw.append(compat.unwrap_optimizer(optimizer) is trainer.optimizers[0])
        step = trainer.global_step
        self.logs_at[step] = compat.logs_this_step(trainer)
        pl_module.log("probe", float(step), on_step=True, on_epoch=False)


class _CountingEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping, counting the calls of the private hook lit_tricks' EarlyStopping overrides."""

    def __init__(self) -> None:
        super().__init__(monitor="val/loss", patience=100)
        self.checks = 0

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        self.checks += 1
        super()._run_early_stopping_check(trainer)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.Trainer, _Probe, _Recorder, _CountingEarlyStopping]:
    probe, recorder, stopper = _Probe(), _Recorder(), _CountingEarlyStopping()
    trainer = tiny_trainer(
        tmp_path_factory.mktemp("compat"), max_epochs=2, limit_train_batches=6, limit_val_batches=1,
        accumulate_grad_batches=2, log_every_n_steps=2, logger=recorder, callbacks=[probe, stopper],
        enable_checkpointing=False,
    )
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule(n=192, batch_size=32))
    return trainer, probe, recorder, stopper


def test_the_installed_lightning_is_the_tested_one() -> None:
    assert lightning.__version__.startswith(compat.TESTED_LIGHTNING + "."), lightning.__version__
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"lightning>={compat.TESTED_LIGHTNING},<3"' in pyproject


def test_compat_imports_only_lightning_torch_and_the_standard_library() -> None:
    parts = {"lit_tricks.compat.loops", "lit_tricks.compat.step_log", "lit_tricks.compat.step_log_connector"}
    for module in ("lit_tricks.compat", *sorted(parts)):
        ours, others = imports_of(module)
        assert ours <= parts, module
        assert not others - set(sys.stdlib_module_names) - {"lightning", "torch"}, module


def test_resume_state_functions_in_a_fit(tmp_path: Path) -> None:
    """The fit-loop state of :mod:`lit_tricks.compat.loops` read where exact resume reads it: batch ends followed by a
    validation (every 2nd batch) are no resume points; a batch end has one step row still to log; the epoch's
    aggregates and the callback metrics survive a round trip; a fresh fit has no stashed loader state and skipped no
    epoch start."""
    seen: dict[str, list[Any]] = {"resumable": [], "rows": [], "skipped": [], "pending": []}

    class Look(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen["pending"].append(compat.apply_pending_train_loader_state(trainer))
            seen["skipped"].append(compat.epoch_start_skipped(trainer))

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            seen["resumable"].append(compat.batch_end_is_resumable(trainer))
            seen["rows"].append(compat.rows_logged_after_save(trainer))
            if trainer.global_step == 3:
                results, metrics = compat.epoch_results_state(trainer), compat.logged_metrics_state(trainer)
                expected = {k: v.clone() for k, v in trainer.callback_metrics.items()}
                trainer.fit_loop.epoch_loop._results.clear()
                trainer._logger_connector._callback_metrics.clear()
                compat.restore_epoch_results(trainer, results)
                compat.restore_logged_metrics(trainer, metrics)
                assert [e["key"] for e in compat.epoch_results_state(trainer)] == [e["key"] for e in results]
                assert all(torch.equal(trainer.callback_metrics[k], v) for k, v in expected.items())

    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=1, val_check_interval=2,
                           num_sanity_val_steps=0, logger=CSVLogger(str(tmp_path)), log_every_n_steps=1,
                           callbacks=[Look()])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert seen["resumable"] == [True, False, True, False]
    assert seen["rows"] == [1, 1, 1, 1] and seen["pending"] == [False] and seen["skipped"] == [False]


def test_private_overrides_still_exist_in_lightning() -> None:
    for cls, names in compat.PRIVATE_OVERRIDES.items():
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__qualname__}.{name} is gone"
    es = EarlyStopping
    assert list(inspect.signature(es._run_early_stopping_check).parameters) == ["self", "trainer"]
    assert list(inspect.signature(es._should_skip_check).parameters) == ["self", "trainer"]
    assert isinstance(inspect.getattr_static(es, "_log_info"), staticmethod)
    assert list(inspect.signature(es._log_info).parameters) == ["trainer", "message", "log_rank_zero_only"]


def test_lightning_calls_the_overridden_early_stopping_check(fitted: Any) -> None:
    trainer, _, _, stopper = fitted
    assert trainer.current_epoch == 2
    assert stopper.checks == 2  # once per validation (every epoch)
    assert stopper.best_score is not None and torch.isfinite(stopper.best_score)


def test_unwrap_optimizer() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert compat.unwrap_optimizer(LightningOptimizer(opt)) is opt
    assert compat.unwrap_optimizer(opt) is opt


def test_unwrap_optimizer_in_a_hook(fitted: Any) -> None:
    _, probe, _, _ = fitted
    assert probe.unwrapped_is_raw and all(probe.unwrapped_is_raw)


def test_module_trainer(fitted: Any) -> None:
    _, probe, _, _ = fitted
    assert probe.trainer_of_module and all(probe.trainer_of_module)
    module = TinyClassifier()
    assert compat.module_trainer(module) is None
    with pytest.raises(RuntimeError):
        _ = module.trainer  # the public property raises when none is attached
    assert compat.module_trainer(torch.nn.Linear(2, 2)) is None


def test_logs_this_step_says_when_step_metrics_reach_the_logger(fitted: Any) -> None:
    _, probe, recorder, _ = fitted
    logged = {int(v) for v in recorder.probes}
    said = {step for step, yes in probe.logs_at.items() if yes}
    assert said == logged
    assert said and said != set(probe.logs_at)  # log_every_n_steps=2: some steps log, some do not


def test_inside_accumulation_window(fitted: Any) -> None:
    _, probe, _, _ = fitted
    assert len(probe.accumulating) == 12
    assert all(acc == ((i + 1) % 2 != 0) for i, acc in probe.accumulating), probe.accumulating


def test_restart_train_iterator(fitted: Any) -> None:
    _, probe, _, _ = fitted
    assert probe.restarted is True
    assert probe.rng_moved is True


def test_time_based_validation(tmp_path: Path) -> None:
    assert compat.time_based_validation(tiny_trainer(tmp_path, val_check_interval={"minutes": 1})) is True
    assert compat.time_based_validation(tiny_trainer(tmp_path, val_check_interval=0.5)) is False


def test_cluster_environment(tmp_path: Path) -> None:
    assert isinstance(compat.cluster_environment(tiny_trainer(tmp_path)), LightningEnvironment)
    slurm = SLURMEnvironment(auto_requeue=True)
    trainer = tiny_trainer(tmp_path, plugins=[slurm])
    assert compat.cluster_environment(trainer) is slurm


def test_installed_checkpoint_io() -> None:
    strategy = SingleDeviceStrategy(torch.device("cpu"))
    assert compat.installed_checkpoint_io(strategy) is None  # looking creates nothing
    assert compat.installed_checkpoint_io(strategy) is None
    io = TorchCheckpointIO()
    strategy.checkpoint_io = io
    assert compat.installed_checkpoint_io(strategy) is io


def test_saves_distributed_checkpoint() -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    assert compat.saves_distributed_checkpoint(ModelParallelStrategy())
    assert not compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=False))
    assert not compat.saves_distributed_checkpoint(SingleDeviceStrategy(torch.device("cpu")))


def test_legacy_state_key_and_state_key_args() -> None:
    stopper = EarlyStopping(monitor="val/acc", mode="max")
    assert compat.legacy_state_key(stopper) is EarlyStopping
    key = stopper._generate_state_key(monitor="val/acc", mode="max", n=3)
    assert compat.state_key_args(key, "EarlyStopping") == {"monitor": "val/acc", "mode": "max", "n": 3}
    assert compat.state_key_args(stopper.state_key, "EarlyStopping") == {"monitor": "val/acc", "mode": "max"}
    assert compat.state_key_args(key, "ModelCheckpoint") is None
    assert compat.state_key_args("EarlyStopping{'x': object()}", "EarlyStopping") is None


def test_csv_logger_version(tmp_path: Path) -> None:
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    logger = CSVLogger(tmp_path)
    assert compat.csv_logger_version(logger) is None
    assert compat.csv_logger_version(CSVLogger(tmp_path, version=4)) == 4
    compat.pin_csv_logger_version(logger, 0)
    assert compat.csv_logger_version(logger) == 0
    assert logger.version == 0  # not the next free one (1)
    assert Path(logger.log_dir).name == "version_0"


def test_checkpoint_path_type() -> None:
    assert set(typing.get_args(compat.CheckpointPath)) == {str, Path}


def test_basic_subprocess_cmd() -> None:
    cmd = list(compat.basic_subprocess_cmd())
    assert cmd[0] == sys.executable
    assert cmd[len(cmd) - (len(sys.argv) - 1):] == sys.argv[1:]  # the same arguments again


def test_set_num_threads_if_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        compat.set_num_threads_if_needed(2)
        expected = max(1, len(os.sched_getaffinity(0)) // 2) if hasattr(os, "sched_getaffinity") else None
        assert os.environ["OMP_NUM_THREADS"] == str(torch.get_num_threads())
        if expected is not None:
            assert torch.get_num_threads() == expected
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(threads)
        compat.set_num_threads_if_needed(1)  # set already: left alone
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)


def test_set_strategy_launcher_through_the_hydra_safe_strategy(tmp_path: Path) -> None:
    from lit_tricks.trainers.strategies import _HydraSafeLauncher, ddp_strategy

    strategy = ddp_strategy(process_group_backend="gloo")
    tiny_trainer(tmp_path, devices=2, strategy=strategy)  # configures the launcher; launches nothing before fit
    assert type(strategy.launcher) is _HydraSafeLauncher
    assert isinstance(strategy.launcher, compat.SubprocessScriptLauncher)
    marker = object()
    compat.set_strategy_launcher(strategy, marker)
    assert strategy.launcher is marker


def test_keep_signal_handlers_after_fit(tmp_path: Path) -> None:
    import signal

    def kept(signum: int, frame: Any) -> None: ...

    before = signal.getsignal(signal.SIGUSR2)

    class Keep(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            compat.keep_signal_handlers_after_fit(trainer, {signal.SIGUSR2: kept})
            assert signal.getsignal(signal.SIGUSR2) is kept

    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[Keep()])
    try:
        trainer.fit(TinyClassifier(), datamodule=BlobsDataModule(n=64))
        assert signal.getsignal(signal.SIGUSR2) is kept  # not put back by Lightning's teardown
        plain = tiny_trainer(tmp_path / "plain", max_epochs=1)
        signal.signal(signal.SIGUSR2, kept)
        plain.fit(TinyClassifier(), datamodule=BlobsDataModule(n=64))
        assert signal.getsignal(signal.SIGUSR2) is kept  # the oracle: Lightning restores what it found at fit start
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_step_values_held_back_are_logged_when_the_fit_stops_or_a_validation_follows(tmp_path: Path) -> None:
    """``log_step_value(read=False)`` logs nothing at the batch, and logs the value at the end of the batch when
    ``should_stop`` was set in a later hook of it (the logger's row and ``callback_metrics`` get that batch's value)
    or a validation follows (``validation_follows``: every 2nd batch); ``step_value_read`` counts the steps of a
    checkpoint naming its file after the value (every 3rd step) and any step of a timed one."""
    seen: dict[str, list[Any]] = {"follows": [], "at_batch_end": [], "read": [], "timed": []}

    class Hold(Callback):
        def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            seen["read"].append(compat.step_value_read(trainer, ("probe",)))
            compat.log_step_value(pl_module, False, "probe", torch.tensor(float(trainer.global_step + 1)),
                                  on_step=True, on_epoch=False)

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            seen["follows"].append(compat.validation_follows(trainer))
            # the dict as the last batch end left it: reading trainer.callback_metrics would log the held value
            # (tests/test_step_logging_without_logger.py::test_a_reader_without_monitor_sees_every_steps_values)
            seen["at_batch_end"].append(float(trainer._logger_connector._callback_metrics.get("probe", -1.0)))
            trainer.should_stop = trainer.global_step == 5

    recorder = _Recorder()
    named = ModelCheckpoint(tmp_path, "{probe}", every_n_train_steps=3, save_top_k=-1)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=6, limit_val_batches=1, val_check_interval=2,
                           num_sanity_val_steps=0, logger=recorder, log_every_n_steps=50, callbacks=[named, Hold()])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert trainer.global_step == 5 and seen["follows"] == [False, True, False, True, False]
    # logged after the hooks of batches 2 and 4 (a validation follows; seen in the next batch's) and 5 (the stop),
    # and at batch 3 when the checkpoint read callback_metrics to name its file (Hold ignores step_value_read)
    assert seen["at_batch_end"] == [-1.0, -1.0, 2.0, 3.0, 4.0] and float(trainer.callback_metrics["probe"]) == 5.0
    assert (tmp_path / "probe=3.0.ckpt").exists()
    assert recorder.probes == [5.0]  # the stop's row (Lightning writes one at a stop) holds the stop batch's value
    assert seen["read"] == [False, False, True, False, False]  # the checkpoint saves (and names its file) at step 3
    timed = ModelCheckpoint(tmp_path / "timed", "{probe}", train_time_interval=timedelta(hours=1))
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, log_every_n_steps=50,
                           val_check_interval=timedelta(hours=1), num_sanity_val_steps=0, callbacks=[timed, Hold()])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert seen["read"][5:] == [True, True, True]  # a timed checkpoint may save at any step
    assert seen["follows"][5:] == [True, True, True]  # time-based validation: the time may be up when Lightning asks


class _ManualTiny(TinyClassifier):
    """Manual optimization, asking ``step_value_read`` after its step (as TrickModule's full-batch methods log)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.read: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt: Any = self.optimizers()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.manual_backward(loss)
        opt.step()
        self.read.append(compat.step_value_read(self.trainer, ("probe",)))
        return loss


def test_step_value_read_after_a_manual_step_counts_the_checkpoints_step(tmp_path: Path) -> None:
    module = _ManualTiny()
    named = ModelCheckpoint(tmp_path, "{probe}", every_n_train_steps=3, save_top_k=-1)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=7, limit_val_batches=0, log_every_n_steps=50,
                           callbacks=[named])
    trainer.fit(module, datamodule=BlobsDataModule())
    assert module.read[2] and module.read[5] and not all(module.read)  # the saves after batches 3 and 6
