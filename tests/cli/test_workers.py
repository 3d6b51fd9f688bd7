"""``lit-tricks-workers`` without a cluster: the batch script it submits, and every refused input as one line with
nothing written or submitted. The workers on a real (local) SLURM cluster: tests/cluster/test_workers.py."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from lit_tricks.cli import workers

TPE = ("hparams_search=tpe", "hydra.sweeper.n_trials=5")


@pytest.fixture()
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs in ``tmp_path``; the composed sweep directory lands under ``tmp_path/logs``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_TRICKS_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def test_batch_script_runs_one_requeueable_worker_per_array_task(tmp_path: Path) -> None:
    script = workers.sbatch_script("/venv/bin/python", ["hparams_search=tpe", "model.name='a b'"], workers=3,
                                   log_dir=tmp_path / "w", workdir=tmp_path, job_name="lt-workers-s", max_running=2,
                                   partition="gpu", gpus=1, sbatch_args=("--account=me",),
                                   setup=("module load cuda",))
    lines = script.splitlines()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --ntasks=1", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 f"#SBATCH --output={tmp_path}/w/%A_%a.out", f"#SBATCH --chdir={tmp_path}", "#SBATCH --partition=gpu",
                 "#SBATCH --gres=gpu:1", "#SBATCH --account=me", "module load cuda"):
        assert line in lines, (line, script)
    # the worker is the batch shell itself (exec), so SIGUSR1 of --signal=B:... reaches its Preemption callback
    assert shlex.split(lines[-1]) == ["exec", "/venv/bin/python", "-m", "lit_tricks.cli.workers", "--worker",
                                      "hparams_search=tpe", "model.name='a b'"]
    assert lines.index("module load cuda") < len(lines) - 1


def test_plan_defaults_to_a_journal_beside_the_task_sweeps_and_makes_paths_absolute(log_dir: Path) -> None:
    plan = workers.worker_plan(list(TPE))
    assert plan["sweep_dir"] == log_dir / "train" / "multiruns" / "train_tpe"
    assert plan["storage"] == f"journal://{log_dir / 'train' / 'optuna.journal'}"
    assert plan["study_name"] == "train_tpe" and plan["n_trials"] == 5
    assert plan["overrides"][-3:] == ["hydra/launcher=basic", "hydra.sweeper.n_jobs=1",
                                      f"hydra.sweeper.storage={plan['storage']}"]
    relative = workers.worker_plan([*TPE, "hydra.sweeper.storage=journal://studies/s.log"])
    assert relative["storage"] == f"journal://{Path.cwd() / 'studies' / 's.log'}"
    url = "postgresql+psycopg://me@db:5432/optuna"
    assert workers.worker_plan([*TPE, f"hydra.sweeper.storage='{url}'"])["storage"] == url


BAD = [
    (["optimizer.lr=0.1"], "hydra.sweeper is 'hydra._internal.core_plugins.basic_sweeper.BasicSweeper'"),
    ([*TPE, "hydra.sweeper.storage=sqlite:///x.db"], "hydra.sweeper.storage=sqlite:///x.db: SQLite locks"),
    ([*TPE, "hydra.sweeper.heartbeat_interval=null"], "hydra.sweeper.heartbeat_interval=None: workers need"),
    ([*TPE, "hydra/launcher=slurm"], "hydra/launcher=slurm: each worker runs its own trials"),
    ([*TPE, "hydra.sweeper.n_jobs=4"], "hydra.sweeper.n_jobs=4: each worker runs its own trials"),
    ([*TPE, "optimizer=nope"], "optimizer=nope: no such option"),
    ([*TPE, "optimizer.lr=interval(1.0, 0.1)"], "optimizer.lr is not a search space Optuna can sample: low 1.0 > "
                                                "high 0.1 (write interval(low, high)), got 'interval(1.0, 0.1)'"),
    (["hparams_search=tpe", "hydra.sweeper.n_trials=-3"], "hydra.sweeper.n_trials must be an integer in [1, inf), "
                                                          "got -3"),
    ([*TPE, "trainer.max_epochs=abc"], "trainer.max_epochs"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o[-1:]) for o, _ in BAD])
def test_a_bad_sweep_is_refused_in_one_line_before_anything_is_written(
        log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str) -> None:
    assert workers.main(["--workers", "2", "--dry-run", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{workers.PROG}: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no log dir, no script


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "--workers must be an integer in [1, inf), got 0"),
    (["--workers", "2", "--max-running", "0"], "--max-running must be an integer in [1, inf), got 0"),
    (["--workers", "2", "--gpus", "-1"], "--gpus must be an integer in [0, inf), got -1"),
])
def test_bad_options_are_refused_in_one_line(log_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             message: str) -> None:
    assert workers.main([*args, "--dry-run", *TPE]) == 2
    assert capsys.readouterr().err == f"{workers.PROG}: {message}\n"


def test_without_sbatch_nothing_is_written_and_one_line_says_why(
        log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert workers.main(["--workers", "2", *TPE]) == 2
    assert capsys.readouterr().err.startswith(f"{workers.PROG}: sbatch not found")
    assert not log_dir.exists()


def test_dry_run_prints_the_script_and_writes_nothing(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert workers.main(["--workers", "4", "--max-running", "2", "--dry-run", *TPE]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --job-name=lt-workers-train_tpe" in script
    assert f"#SBATCH --chdir={os.getcwd()}" in script
    assert not log_dir.exists()
