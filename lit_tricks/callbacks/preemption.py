"""Preemption: on SIGTERM / SIGUSR1 save a checkpoint at the next safe point and exit with code 0."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_tricks.compat import (
    batch_end_is_resumable,
    cluster_environment,
    inside_accumulation_window,
    keep_signal_handlers_after_fit,
)
from lit_tricks.fault.state_keys import cached_state_key

__all__ = ["Preemption"]

log = logging.getLogger(__name__)


#: Signals caught by default (those of them the platform has): SLURM sends SIGUSR1 ahead of time, SIGTERM at the end.
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preemption(Callback):
    """Turn a preemption signal into a checkpoint at the next exact resume point and a clean exit (code 0).

    From ``on_train_start`` to the end of fit, the handlers of ``signals`` only note the signal. At the end of the
    running training batch (after every other callback, ModelCheckpoint included, ran its ``on_train_batch_end``: the
    same point an interval checkpoint is taken) the ranks agree (any rank signalled), every rank takes part in
    ``trainer.save_checkpoint(<dirpath>/<filename>)``, and fit ends at the next batch start (after Lightning logged
    the saved batch's metrics) by raising Lightning's ``SIGTERMException`` (a ``SystemExit`` with code 0). Restart with
    ``resume=auto`` or ``trainer.fit(ckpt_path="last")`` (the default file name starts with ``last``) to go on.

    Not every batch end is an exact resume point (:func:`lit_tricks.compat.batch_end_is_resumable`): when a
    validation or the epoch end follows the batch (its last batch, or ``val_check_interval``), Lightning would resume
    past them, so the save waits for the end of that validation (``on_validation_end``, after ModelCheckpoint and
    EarlyStopping), or without one for the next batch end; when fit ends first, nothing is saved and fit ends
    normally. With gradient accumulation the checkpoint waits for the end of the current window (the accumulated
    gradients of a half-done window are in no checkpoint).

    ``dirpath``: default the first ModelCheckpoint's directory, else ``<default_root_dir>/checkpoints``.
    ``requeue``: ``"auto"`` requeues the SLURM job (``scontrol requeue``, once, from rank 0) when running under SLURM
    and the signal was one of ``requeue_signals`` (SLURM's time-limit warning, ``sbatch --signal=USR1@<s>``); a
    SIGTERM under SLURM means SLURM itself ends the job (``scancel``, ``scontrol requeue``, preemption), which
    requeues it or not by itself. ``True`` requeues on every signal, ``False`` never. After a requeue the ranks keep
    ``signals`` handled (ignored) until their process exits, instead of restoring the previous handlers: the requeue
    makes SLURM send SIGTERM to every task of the job, which would otherwise kill a rank in the middle of its exit
    work (loggers' last flush, the run's record); SLURM still kills what is left after its ``KillWait``.

    One signal owner: while this callback is attached, Lightning's own SLURM auto-requeue (``SLURMEnvironment``'s
    ``auto_requeue``: an hpc checkpoint saved inside the signal handler, in the middle of a step, and a second
    ``scontrol requeue``) is switched off at ``setup``, so a job is saved and requeued exactly once.
    """

    def __init__(
        self,
        signals: tuple[str, ...] | list[str] | str | None = None,
        dirpath: str | None = None,
        filename: str = "last-preempted.ckpt",
        requeue: bool | str = "auto",
        requeue_signals: tuple[str, ...] | list[str] | str | None = None,
    ) -> None:
        super().__init__()
        valid = {s.name for s in signal.valid_signals() if isinstance(s, signal.Signals)} - {"SIGKILL", "SIGSTOP"}
        if signals is None:  # the defaults this platform has (Windows has no SIGUSR1)
            signals = tuple(name for name in DEFAULT_SIGNALS if name in valid)
        names = [signals] if isinstance(signals, str) else list(signals)
        for name in names:
            if name not in valid:
                raise ValueError(f"signals: each must be a catchable signal name like 'SIGTERM', got {name!r}")
        if requeue not in (True, False, "auto"):
            raise ValueError(f"requeue: expected true, false or 'auto', got {requeue!r}")
        if not filename.endswith(".ckpt"):
            raise ValueError(f"filename: must end with '.ckpt' (resume=auto looks for *.ckpt), got {filename!r}")
        if requeue_signals is None:  # SLURM's time-limit warning, where the platform has it
            requeue_signals = tuple(name for name in ("SIGUSR1",) if name in valid)
        requeue_names = [requeue_signals] if isinstance(requeue_signals, str) else list(requeue_signals)
        for name in requeue_names:
            if name not in valid:
                raise ValueError(f"requeue_signals: each must be a catchable signal name like 'SIGUSR1', got {name!r}")
        self.signals = tuple(names)
        self.requeue_signals = tuple(requeue_names)
        self.dirpath = dirpath
        self.filename = filename
        self.requeue = requeue
        self.received: int | None = None
        self.saved_path: str | None = None
        self._waiting = False  # a signal arrived at a batch end that is no exact resume point
        self._previous: dict[int, Any] = {}
        self._requeued = False  # rank 0 requeued this SLURM job: SLURM will end every task of it

    @property
    def state_key(self) -> str:
        return cached_state_key(self, filename=self.filename)

    # ---- signal handling -------------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:  # the first signal decides (SLURM's SIGTERM may follow its SIGUSR1)
            self.received = signum

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("Preemption: not in the main thread, signal handlers not installed")
            return
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    @staticmethod
    def _ending(signum: int, frame: FrameType | None) -> None:
        """After a requeue: SLURM's SIGTERM to every task of the job must not cut a rank's exit work short."""

    def _keep_through_exit(self, trainer: pl.Trainer) -> None:
        """A requeued job's ranks leave ``signals`` handled (ignored) for the rest of the process instead
        of restoring the previous handlers: ``scontrol requeue`` makes SLURM send SIGTERM to every task, and with
        the default action a rank still unwinding (loggers' last flush, the run's record, other callbacks'
        ``on_exception``) would die on the spot. SLURM still kills what has not exited after ``KillWait``."""
        if threading.current_thread() is not threading.main_thread():
            return
        keep_signal_handlers_after_fit(trainer, dict.fromkeys(self._previous, self._ending))
        self._previous = {}

    # ---- hooks -----------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # runs before Lightning registers its signal handlers (Trainer._run): one owner of USR1/TERM, this callback
        # where Lightning's signal connector looks (a single-device strategy has no cluster_environment of its own)
        environment = cluster_environment(trainer)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            log.info("Preemption: Lightning's SLURM auto-requeue switched off (Preemption saves and requeues)")
            environment.auto_requeue = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received, self.saved_path, self._waiting, self._requeued = None, None, False, False
        # run after every other callback at batch end (Lightning puts checkpoint callbacks last; we go after them).
        # A new list, so the loop now iterating the old one is not disturbed.
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]  # type: ignore[attr-defined]
        self._install()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.saved_path is not None:  # saved at the end of the previous batch, whose hooks and logs all ran
            raise SIGTERMException()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if _inside_accumulation_window(trainer, pl_module):
            return  # the window's gradients are in no checkpoint: save when its optimizer step is done
        if not self._signalled(trainer):
            return
        if not batch_end_is_resumable(trainer):  # the same on every rank: the batch position decides
            if not self._waiting:
                log.warning("Preemption: signal %s received; the validation or epoch end due after this batch "
                            "runs first (a checkpoint here would resume past it)", self.received)
                self._waiting = True
            return
        self._save(trainer)
        # exit at the next batch start, before any other callback's hook (this batch's logging still happens)
        trainer.callbacks = [self] + [c for c in trainer.callbacks if c is not self]  # type: ignore[attr-defined]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._signalled(trainer):
            return
        self._save(trainer)  # after the other callbacks' on_validation_end (ModelCheckpoint, EarlyStopping)
        raise SIGTERMException()

    def _signalled(self, trainer: pl.Trainer) -> bool:
        """Whether any rank received a signal (the ranks agree, so they save together)."""
        signalled = self.received is not None
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        return signalled

    def _save(self, trainer: pl.Trainer) -> None:
        path = str(Path(self._dirpath(trainer)) / self.filename)
        log.warning("Preemption: signal %s received; saving %s at step %d and exiting",
                    self.received, path, trainer.global_step)
        trainer.save_checkpoint(path)
        self.saved_path = path
        # the ranks agree on requeueing too (a signal may have reached only some ranks)
        requeue = self._should_requeue()
        if trainer.world_size > 1:
            requeue = trainer.strategy.reduce_boolean_decision(requeue, all=False)
        if requeue:  # the same on every rank, so every rank takes part in the collective below
            requeued = self._requeue() if trainer.is_global_zero else False
            if trainer.world_size > 1:  # rank 0's `scontrol requeue` succeeded: SLURM will end every task
                requeued = trainer.strategy.reduce_boolean_decision(requeued, all=False)
            self._requeued = requeued

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._uninstall()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._requeued and isinstance(exception, SIGTERMException):  # the exit after a save and a requeue
            self._keep_through_exit(trainer)
        else:
            self._uninstall()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._uninstall()

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _dirpath(self, trainer: pl.Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        ckpt = trainer.checkpoint_callback
        dirpath = getattr(ckpt, "dirpath", None)
        return str(dirpath) if dirpath else os.path.join(trainer.default_root_dir, "checkpoints")

    def _should_requeue(self) -> bool:
        if self.requeue == "auto":
            requeue_signums = {int(getattr(signal, name)) for name in self.requeue_signals}
            return SLURMEnvironment.detect() and self.received in requeue_signums
        return bool(self.requeue)

    @staticmethod
    def _requeue() -> bool:
        """``scontrol requeue`` this SLURM job; whether it was requeued."""
        job_id = _slurm_job_id()
        if not job_id:
            log.warning("Preemption: requeue asked but SLURM_JOB_ID is not set; not requeued")
            return False
        try:
            result = subprocess.call(["scontrol", "requeue", job_id])
        except FileNotFoundError:
            log.warning("Preemption: scontrol not found; job %s not requeued", job_id)
            return False
        if result == 0:
            log.info("Preemption: requeued SLURM job %s", job_id)
            return True
        log.warning("Preemption: scontrol requeue %s failed with code %d", job_id, result)
        return False


def _slurm_job_id() -> str | None:
    """This job's id for ``scontrol requeue`` (an array task's ``<array job>_<task>``), None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")


def _inside_accumulation_window(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether this batch ended inside a gradient-accumulation window (its optimizer step is still to come).

    The same on every rank (it depends on the batch position only), so the ranks still agree on when to save.
    """
    if not pl_module.automatic_optimization or trainer.accumulate_grad_batches <= 1:
        return False
    return inside_accumulation_window(trainer)
