"""Hydra-job safety: one Hydra job = one clean multi-process run, and what a failed job hands back to its sweeper.

Lightning's script launcher starts ranks > 0 by re-running ``sys.argv``; under ``-m`` that re-runs the whole sweep
(a second multirun directory, other hyperparameters from an Optuna sampler) and points ``hydra.run.dir`` at the
wrong place. The strategies of :mod:`lit_tricks.trainers.strategies` start each child rank from the job's
*composed* config instead::

    python <script> --config-path <tmp> --config-name config hydra.run.dir=<job dir> hydra.output_subdir=null

so every rank runs exactly the job's config in rank 0's directory, and only rank 0 writes. :func:`job_guard` wraps
one job: it restores ``os.environ`` (``LOCAL_RANK``, ``MASTER_PORT``, ... must not leak into the next job), reaps the
child ranks (killing them when the job failed on rank 0, instead of leaving them in a collective until the timeout)
and destroys the process group, so the next job of a sweep starts clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lit_tricks.hydra_utils import hydra_config

__all__ = ["child_rank_command", "config_hash", "job_guard", "sweep_failure_value", "sweeper_target"]

log = logging.getLogger(__name__)

#: Seconds job_guard waits for child ranks to exit after a successful job before killing them.
CHILD_EXIT_TIMEOUT_S = 120.0


@dataclass
class _JobState:
    """What the current job's launcher needs and what job_guard cleans up."""

    cfg: DictConfig | None = None
    children: list[subprocess.Popen] = field(default_factory=list)
    tmp_dirs: list[str] = field(default_factory=list)


_JOB = _JobState()


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config as sorted YAML (the ``hydra`` node excluded): equal on every rank of a job."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(container, dict):
        container.pop("hydra", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True).encode()).hexdigest()


def _quote(value: str) -> str:
    """Quote a value for Hydra's override grammar (single quotes, escaped backslashes and quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def child_rank_command(local_rank: int, config_dir: str, run_dir: str, job_name: str,
                       chdir: bool = False, job_num: int | None = None) -> list[str]:
    """The command that starts child rank ``local_rank`` of the current script on a saved, composed job config.

    ``config_dir`` holds ``config.yaml`` (the job's composed config); ``run_dir`` is rank 0's output directory.
    Child ranks write nothing through Hydra: no ``.hydra/`` directory, job logging to stdout only.
    """
    from hydra.utils import to_absolute_path

    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", spec.name]
    if spec is not None and spec.name.split(".")[0] in ("loky", "joblib", "multiprocessing"):
        raise RuntimeError(
            f"lit_tricks: cannot start DDP child ranks from a {spec.name} worker (joblib launcher): run multi-process"
            " trainers with hydra/launcher=basic or slurm"
        )
    extra = [] if job_num is None else [f"hydra.job.num={int(job_num)}"]
    return command + [
        "--config-path", config_dir, "--config-name", "config",
        f"hydra.run.dir={_quote(run_dir)}",
        "hydra.output_subdir=null",
        f"hydra.job.name={job_name}_rank{local_rank}",
        f"hydra.job.chdir={str(bool(chdir)).lower()}",
        "hydra/job_logging=stdout",
        *extra,
    ]


def _hydra_child_base() -> tuple[str, str, str, bool, str, int | None] | None:
    """(config dir, run dir, job name, chdir, original cwd, job num) for child ranks; None when Hydra is not in use."""
    hc = hydra_config()
    if hc is None:
        return None
    run_dir = str(hc.runtime.output_dir)
    if _JOB.cfg is not None:
        config_dir = tempfile.mkdtemp(prefix="lit_tricks_ddp_")
        _JOB.tmp_dirs.append(config_dir)
        OmegaConf.save(_JOB.cfg, os.path.join(config_dir, "config.yaml"))
    elif hc.output_subdir is not None and os.path.isfile(os.path.join(run_dir, str(hc.output_subdir), "config.yaml")):
        config_dir = os.path.join(run_dir, str(hc.output_subdir))
    else:
        raise RuntimeError(
            "lit_tricks: cannot start DDP child ranks under Hydra: wrap the job in"
            " lit_tricks.trainers.hydra_job.job_guard(cfg) or keep hydra.output_subdir (the job's .hydra/config.yaml is"
            " what child ranks run)"
        )
    try:
        job_num: int | None = int(hc.job.num)
    except (MissingMandatoryValue, TypeError, ValueError):  # a single run has no job number
        job_num = None
    return config_dir, run_dir, str(hc.job.name), bool(hc.job.chdir), str(hc.runtime.cwd), job_num


def _reap_children(kill: bool) -> None:
    """Wait for (or, after a failure, kill) this job's child ranks so none outlives the job."""
    children, _JOB.children = _JOB.children, []
    for proc in children:
        if proc.poll() is not None:
            continue
        if not kill:
            try:
                proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
                continue
            except subprocess.TimeoutExpired:
                log.warning("child rank pid %d still running %.0f s after the job; killing it",
                            proc.pid, CHILD_EXIT_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def job_guard(cfg: DictConfig) -> Iterator[None]:
    """Wrap one Hydra job: child ranks run ``cfg``; afterwards (also on error) reap them, destroy the process group,
    restore ``os.environ`` and torch's thread count."""
    saved_env = dict(os.environ)
    threads = torch.get_num_threads()
    previous_cfg = _JOB.cfg
    _JOB.cfg = cfg
    ok = False
    try:
        yield
        ok = True
    finally:
        _reap_children(kill=not ok)
        _destroy_process_group()
        for tmp in _JOB.tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)
        _JOB.tmp_dirs = []
        _JOB.cfg = previous_cfg
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)


def sweeper_target() -> str | None:
    """``hydra.sweeper._target_`` of the running Hydra app, or None outside Hydra."""
    hc = hydra_config()
    if hc is None:
        return None
    target = hc.sweeper.get("_target_")
    return None if target is None else str(target)


def sweep_failure_value(err: BaseException) -> float:
    """Return nan for a failed job, or re-raise ``err`` where the sweeper records exceptions itself.

    Hydra's basic sweeper stops the whole sweep when a job raises, so a failed job returns nan. An Optuna sweeper
    (``hydra/sweeper=lit_optuna``) tells the study FAIL with the root error, or PRUNED for ``optuna.TrialPruned``,
    when the job raises, and goes on, so there the error is re-raised.
    """
    target = sweeper_target() or ""
    if "optuna" in target.lower():
        raise err
    return math.nan
