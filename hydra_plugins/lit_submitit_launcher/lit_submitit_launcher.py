"""``hydra/launcher=slurm`` (and ``slurm_local``): hydra-submitit-launcher's ``SlurmLauncher``, except that it refuses
a machine without SLURM at ``setup`` and a job that ends without a result comes back as a failed job instead of ending
the whole sweep.

At ``setup`` (before the sweep writes anything), without ``sbatch`` and ``srun`` on PATH (not a SLURM machine) the
sweep is refused in one line naming the launcher, instead of submitit's traceback (``Could not detect "srun"``) at
the first launch after the sweep directory was made.

Upstream collects the batch with ``[job.results()[0] for job in jobs]``: the first job killed from outside (``kill``,
the out-of-memory killer, a lost node, ``scancel``) raises submitit's ``UncompletedJobError`` there, the jobs after it
are never collected (they keep running on the cluster) and the sweep stops. Here every job of the batch is waited
for; a lost one becomes ``JobReturn(status=FAILED)`` holding a :class:`LostJobError` that names the job, the state
SLURM accounting gives it and its log, so the sweeper records that job failed and goes on (``lit_optuna``: a FAIL
trial with that reason; Hydra's basic sweeper raises it after the batch, as for any failed job).

submitit learns that a job ended from ``sacct``: without SLURM accounting a killed job looks pending forever (the
local cluster of ``make cluster-up`` has accounting, docs/cluster.md). ``launch`` is upstream's (1.2.0) apart from
the collection at its end. Needs the ``cluster`` extra; without it the launcher says so when a config names it (Hydra
imports this module in every app).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

__all__ = ["LitSlurmLauncher", "LostJobError"]

log = logging.getLogger(__name__)


class _NoClusterExtra:
    """Stands in for submitit's ``SlurmLauncher`` without the ``cluster`` extra: building the launcher says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("hydra/launcher=slurm needs the cluster extra: pip install 'lit_tricks[cluster]'")


try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # no cluster extra; Hydra imports every plugin module in every app, so this one must import
    SlurmLauncher = _NoClusterExtra  # type: ignore[misc,assignment]


class LostJobError(RuntimeError):
    """A SLURM job of the sweep ended without writing its result (killed, out of memory, node lost, cancelled)."""


def collect(jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
    """Every job's ``JobReturn``, in order; a job without a result (submitit's ``UncompletedJobError``) becomes a
    failed ``JobReturn`` holding a :class:`LostJobError`."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    returns: list[JobReturn] = []
    for job, overrides in zip(jobs, job_overrides):
        try:
            returns.append(job.results()[0])
        except FailedJobError as err:  # submitit's own code raised in the job (the task's errors are in its JobReturn)
            last = ([ln for ln in str(err).splitlines() if ln.strip()] or [repr(err)])[-1]
            lost = LostJobError(f"SLURM job {job.job_id} raised outside its task: {last}")
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=lost))
        except UncompletedJobError:
            state = job.watcher.get_state(job.job_id, mode="cache")
            lost = LostJobError(f"SLURM job {job.job_id} ended {state} without a result (killed, out of memory, "
                                f"node lost or cancelled); log: {job.paths.stderr}")
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=lost))
        else:
            continue
        log.warning("%s", lost)
    return returns


class LitSlurmLauncher(SlurmLauncher):
    """submitit's SLURM launcher; ``setup`` refuses a machine without SLURM's commands, and a lost job is a failed job
    of the sweep (see the module docstring)."""

    def setup(self, **kwargs: Any) -> None:
        missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
        if missing:
            from lit_tricks.validation import ArgumentError

            raise ArgumentError("hydra/launcher", "slurm", f"needs SLURM, but {' and '.join(missing)} is not on PATH "
                                "(not a SLURM machine): run it on the cluster's login node, start a local cluster "
                                "(make cluster-up), or use hydra/launcher=basic")
        super().setup(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        assert self.config is not None
        assert len(job_overrides) > 0
        params = self.params
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]})
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items() if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return collect(jobs, job_overrides)
