"""hydra/launcher=slurm: the sbatch script submitit's launcher would submit, generated without a cluster.

The real SlurmLauncher.launch runs up to ``sbatch``; a fake ``srun`` on PATH passes submitit's cluster check and the
submission command is intercepted, so the test reads the exact script text (partition, GPUs, nodes, time, signal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

APP_CONF = Path(__file__).resolve().parents[1] / "sweeps" / "sweep_app" / "conf"


class Captured(Exception):
    """Carries the sbatch script text out of submitit instead of running sbatch."""


def sbatch_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> tuple[str, Any]:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import get_class
    from submitit.slurm.slurm import SlurmExecutor

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("SWEEP_APP_LOG_DIR", str(tmp_path / "logs"))

    def intercept(self: Any, path: Path) -> list[str]:
        raise Captured(Path(path).read_text())

    monkeypatch.setattr(SlurmExecutor, "_make_submission_command", intercept)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(APP_CONF), version_base="1.3"):
            cfg = compose("app", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        assert isinstance(params, dict)
        launcher = get_class(params.pop("_target_"))(**params)  # the class the preset names (LitSlurmLauncher)
        launcher.config, launcher.task_function, launcher.hydra_context = cfg, (lambda c: 0.0), None
        with pytest.raises(Captured) as captured:
            launcher.launch([["optimizer.lr=0.1"], ["optimizer.lr=0.2"]], initial_job_idx=0)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]  # other tests must not see this job
        GlobalHydra.instance().clear()
    return str(captured.value.args[0]), cfg


def test_slurm_launcher_script_has_partition_gpus_nodes_time_and_requeue_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not HydraConfig.initialized()
    text, cfg = sbatch_text(tmp_path, monkeypatch, [
        "hydra.launcher.partition=gpu", "+trainer=multinode", "hydra.launcher.timeout_min=90",
        "hydra.launcher.setup=[module load cuda]",
    ])
    lines = set(text.splitlines())
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --ntasks-per-node=4" in lines  # one task (rank) per GPU, as Lightning's SLURMEnvironment expects
    assert "#SBATCH --nodes=2" in lines  # follows trainer.num_nodes
    assert "#SBATCH --time=90" in lines
    # Lightning's auto-requeue listens for SIGUSR1; submitit's own USR2 signal is replaced
    assert "#SBATCH --signal=USR1@120" in lines and not any("USR2" in ln for ln in lines)
    assert "#SBATCH --array=0-1%2" in lines  # the two jobs of the sweep as one array
    assert "module load cuda" in lines
    assert any(ln.startswith("srun ") and "submitit.core._submit" in ln for ln in lines)
    assert cfg.trainer.devices == cfg.hydra.launcher.gpus_per_node
    assert cfg.trainer.num_nodes == cfg.hydra.launcher.nodes
    assert not HydraConfig.initialized()


def test_a_lost_job_is_a_failed_job_return_and_the_batch_is_still_collected(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from hydra_plugins.lit_submitit_launcher.lit_submitit_launcher import LostJobError, collect

    class FakeJob:
        """What ``collect`` uses of a submitit job: ``results()``, ``job_id``, ``watcher``, ``paths.stderr``."""

        def __init__(self, job_id: str, outcome: Any) -> None:
            self.job_id, self.outcome = job_id, outcome
            self.watcher = type("W", (), {"get_state": staticmethod(lambda job_id, mode: "FAILED")})()
            self.paths = type("P", (), {"stderr": tmp_path / f"{job_id}_log.err"})()

        def results(self) -> list[Any]:
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return [self.outcome]

    ok = JobReturn(overrides=["x=3"], status=JobStatus.COMPLETED, _return_value=0.5)
    jobs = [FakeJob("7_0", UncompletedJobError("has not produced any output (state: FAILED)")),
            FakeJob("7_1", FailedJobError("Traceback (most recent call last):\n  ...\nEOFError: Ran out of input\n")),
            FakeJob("7_2", ok)]
    returns = collect(jobs, [["x=1"], ["x=2"], ["x=3"]])
    assert [r.status for r in returns] == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.COMPLETED]
    assert [r.overrides for r in returns] == [["x=1"], ["x=2"], ["x=3"]]
    assert returns[2] is ok
    lost, raised = returns[0]._return_value, returns[1]._return_value
    assert isinstance(lost, LostJobError) and isinstance(raised, LostJobError)
    assert str(lost) == (f"SLURM job 7_0 ended FAILED without a result (killed, out of memory, node lost or "
                         f"cancelled); log: {tmp_path / '7_0_log.err'}")
    assert str(raised) == "SLURM job 7_1 raised outside its task: EOFError: Ran out of input"
    with pytest.raises(LostJobError):  # Hydra's basic sweeper reads return_value and raises it, as for any failure
        _ = returns[0].return_value


def test_slurm_launcher_defaults_to_one_node_without_multinode_trainer() -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(APP_CONF), version_base="1.3"):
            cfg = compose("app", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        assert cfg.hydra.launcher.partition is None
        assert cfg.hydra.launcher.nodes == 1  # no trainer.num_nodes: one node
    finally:
        GlobalHydra.instance().clear()
