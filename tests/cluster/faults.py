"""Faults a Hydra job of the cluster tests injects into itself (added with ``+callbacks.<name>._target_=...``)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class NaNGradAt(Callback):
    """Every gradient of optimizer step ``step`` becomes NaN (as a diverged step's would); -1 = never."""

    def __init__(self, step: int = -1) -> None:
        self.step = int(step)

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step == self.step:
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))


class StallTrial(Callback):
    """In the job of sweep trial ``trial`` only (``hydra.sweeper.trial``): at the end of its first training batch,
    write ``<job dir>/stalled`` (JSON: this process's pid, the SLURM job id) and wait there up to ``seconds`` or until
    SIGTERM or SIGUSR1 arrives (passed on to the handler before, e.g. the Preemption callback's). The trial is then
    reliably mid-training while a test kills, cancels or preempts it; every other trial runs as usual."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, trial: int, seconds: float = 300.0) -> None:
        self.trial, self.seconds = int(trial), float(seconds)
        self._done = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if self._done or hc.sweeper.get("trial") != self.trial:
            return
        self._done = True
        env = os.environ
        job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_JOB_ID" in env
               else env.get("SLURM_JOB_ID"))
        marker = Path(hc.runtime.output_dir) / "stalled"
        marker.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid(), "job": job}))
        marker.with_suffix(".tmp").replace(marker)
        arrived: list[int] = []
        previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}

        def note(signum: int, frame: Any) -> None:
            arrived.append(signum)
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)

        for signum in self.SIGNALS:
            signal.signal(signum, note)
        try:
            deadline = time.monotonic() + self.seconds
            while not arrived and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for signum in arrived:  # nobody else handles it: end as that signal would
            if previous[signum] == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
