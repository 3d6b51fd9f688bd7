"""Every bad input the sweeper, the launchers and the commands read is answered in at most 3 lines naming the key and
the value, a non-zero exit, and nothing written. One table; each row runs the command's ``main`` in this process
(a Hydra composition, no subprocess), with the log directory in a fresh temporary folder."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra

from lit_tricks.cli import bag, curves, ensemble, report, train

TRAIN = "lit-tricks-train"
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "logger=none"]
SWEEP = ["-m", "hparams_search=tpe", "hydra.sweeper.n_trials=1", "trainer.fast_dev_run=true"]


def _sweep_dir(tmp_path: Path) -> Path:
    """A finished sweep's directory: one job with a record, a study file (for the report and ensemble rows)."""
    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"status": "ok", "objective": 0.5, "monitor": "val/loss"}))
    return tmp_path / "sweep"


# (id, command, argv, needles: the key and the value the error must name, setup(tmp_path) -> extra argv)
ROWS: list[tuple[str, str, list[str], list[str]]] = [
    ("sampler", TRAIN, [*SWEEP, "hydra.sweeper.sampler=tpee"], ["hydra.sweeper.sampler", "'tpee'"]),
    ("pruner", TRAIN, [*SWEEP, "hydra.sweeper.pruner=medain"], ["hydra.sweeper.pruner", "'medain'"]),
    ("sqlite-url", TRAIN, [*SWEEP, "hydra.sweeper.storage='sqlite:/tmp/x.db'"],
     ["hydra.sweeper.storage", "'sqlite:/tmp/x.db'"]),
    ("sqlite-no-file", TRAIN, [*SWEEP, "hydra.sweeper.storage='sqlite://x.db'"],
     ["hydra.sweeper.storage", "'sqlite://x.db'", "names no database file"]),
    ("mysql", TRAIN, [*SWEEP, "hydra.sweeper.storage='mysql://me@localhost/optuna'"],
     ["hydra.sweeper.storage", "mysql://me@localhost/optuna", "driver"]),
    ("postgres-down", TRAIN, [*SWEEP, "hydra.sweeper.storage='postgresql+psycopg://me:secret@127.0.0.1:9/optuna'"],
     ["hydra.sweeper.storage", "postgresql+psycopg://me:***@127.0.0.1:9/optuna", "cannot be reached"]),
    ("direction", TRAIN, [*SWEEP, "hydra.sweeper.direction=max"],
     ["hydra.sweeper.direction", "'max'", "monitor_mode=min"]),
    ("reversed-interval", TRAIN, [*SWEEP, "optimizer.lr=interval(1.0,0.0001)"],
     ["optimizer.lr", "'interval(1.0,0.0001)'", "low 1.0 > high 0.0001"]),
    ("log-interval-at-0", TRAIN, [*SWEEP, "optimizer.lr=tag(log,interval(0.0,1.0))"],
     ["optimizer.lr", "'tag(log,interval(0.0,1.0))'"]),
    ("grid-over-interval", TRAIN, ["-m", "hparams_search=grid", "optimizer.lr=interval(0.01,0.1)"],
     ["hydra.sweeper.sampler", "'grid'", "optimizer.lr"]),
    ("grid-too-many", TRAIN, ["-m", "hparams_search=grid", "hydra.sweeper.n_trials=50"],
     ["hydra.sweeper.n_trials", "50", "12 points"]),
    ("heartbeat", TRAIN, [*SWEEP, "hydra.sweeper.heartbeat_interval=-5"],
     ["hydra.sweeper.heartbeat_interval", "-5"]),
    ("grace", TRAIN, [*SWEEP, "hydra.sweeper.grace_period=30", "hydra.sweeper.heartbeat_interval=60"],
     ["hydra.sweeper.grace_period", "30"]),
    ("min-resource", TRAIN, ["-m", "hparams_search=asha", "hydra.sweeper.pruner_kwargs.min_resource=0"],
     ["hydra.sweeper.pruner_kwargs", "'min_resource': 0"]),
    ("n_trials-negative", TRAIN, [*SWEEP[:2], "hydra.sweeper.n_trials=-3"], ["hydra.sweeper.n_trials", "-3"]),
    ("n_jobs-0", TRAIN, [*SWEEP, "hydra.sweeper.n_jobs=0"], ["hydra.sweeper.n_jobs", "0"]),
    ("n_trials-abc", TRAIN, [*SWEEP[:2], "hydra.sweeper.n_trials=abc"], ["hydra.sweeper.n_trials", "'abc'"]),
    ("study_name-empty", TRAIN, [*SWEEP, "hydra.sweeper.study_name=''"], ["hydra.sweeper.study_name", "''"]),
    ("sweep-monitor_mode", TRAIN, [*SWEEP, "monitor_mode=maximum"], ["monitor_mode", "'maximum'"]),
    ("sweep-typo", TRAIN, [*SWEEP, "optimizer.lrr=0.1,0.3"], ["optimizer.lrr", "optimizer.lrr=0.1"]),
    ("launcher-slurm", TRAIN, ["-m", "hydra/launcher=slurm", "optimizer.lr=0.1,0.3"],
     ["hydra/launcher", "'slurm'", "srun"]),
    ("model.width", TRAIN, ["model.width=-4", *QUICK], ["model", "model.width=-4"]),
    ("monitor_mode", TRAIN, ["monitor_mode=maximum", *QUICK], ["monitor_mode='maximum'"]),
    ("monitor", TRAIN, ["monitor=val/accuracy", *QUICK[:-1]], ["monitor='val/accuracy'", "'val/acc'"]),
    ("early_stopping-without-option", TRAIN, ["+callbacks.early_stopping.patience=5", *QUICK],
     ["callbacks.early_stopping", "'patience': 5", "callbacks=[default,early_stopping]"]),
    ("resume-missing", TRAIN, ["resume=/nonexistent/last.ckpt", *QUICK], ["resume='/nonexistent/last.ckpt'"]),
    ("report-missing-dir", "lit-tricks-report", ["{tmp}/nope"], ["sweep_dir=", "nope"]),
    ("report-top-fraction", "lit-tricks-report", ["{sweep}", "--top-fraction", "2"], ["--top-fraction", "'2'"]),
    ("report-study-file", "lit-tricks-report", ["{sweep}", "<study>"], ["optuna_study.json", "study file"]),
    ("ensemble-top-k", "lit-tricks-ensemble", ["{sweep}", "--top-k", "0"], ["--top-k", "'0'"]),
    ("ensemble-combine", "lit-tricks-ensemble", ["{sweep}", "--combine", "avg"], ["--combine", "'avg'"]),
    ("bag-bags", "lit-tricks-bag", ["--bags", "1"], ["--bags", "'1'"]),
    ("curves-smoothing", "lit-tricks-curves", ["{sweep}", "--smoothing", "1.5"], ["--smoothing", "1.5"]),
    ("curves-no-csv", "lit-tricks-curves", ["{sweep}"], ["path=", "no metrics.csv"]),
]

MAINS: dict[str, Callable[[list[str]], Any]] = {
    "lit-tricks-report": report.main, "lit-tricks-ensemble": ensemble.main, "lit-tricks-bag": bag.main,
    "lit-tricks-curves": curves.main,
}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("command", "argv", "needles"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_a_nonzero_exit_and_nothing_written(
        command: str, argv: list[str], needles: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    monkeypatch.setenv("LIT_TRICKS_LOG_DIR", str(logs))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no srun/sbatch: a machine without SLURM
    monkeypatch.setattr("lit_tricks.optuna_job.open_storage", _no_storage)  # a refusal never opens the storage
    sweep = _sweep_dir(tmp_path)
    if "<study>" in argv:
        (sweep / "optuna_study.json").write_text("{not json")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{sweep}", str(sweep)) for a in argv if a != "<study>"]
    before = _files(tmp_path)
    capfd.readouterr()
    code: Any = None
    try:
        if command == TRAIN:
            monkeypatch.setattr(sys, "argv", [TRAIN, *argv])
            GlobalHydra.instance().clear()
            train.main()
        else:
            code = MAINS[command](argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        GlobalHydra.instance().clear()
    err = capfd.readouterr().err
    report_lines = _error_lines(err, command)
    assert code not in (0, None), err[-2000:]
    assert 1 <= len(report_lines) <= 3, err[-2000:]
    text = " ".join(report_lines)
    for needle in needles:
        assert needle in text, (needle, text)
    assert "Traceback" not in err
    assert _files(tmp_path) == before, [str(p) for p in set(_files(tmp_path)) - set(before)]


def _error_lines(err: str, command: str) -> list[str]:
    """The command's report: from its first own line on (Lightning's start-up lines before it are not errors)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    prefixes = ("lit_tricks:", f"{command}:") if command == TRAIN else (f"{command}:",)
    first = next((i for i, ln in enumerate(lines) if ln.startswith(prefixes)), len(lines))
    return lines[first:]


def _no_storage(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a refused sweep must not open (or retry opening) its storage")


def test_a_sweep_without_optuna_names_the_packages_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_tricks.sweeps.checks import check_sweeper_args
    from lit_tricks.validation import ArgumentError

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError, as without the sweep extra
    with pytest.raises(ArgumentError, match=r"^hydra/sweeper needs Optuna .*pip install 'optuna>=4,<6'"):
        check_sweeper_args(direction="min", n_trials=1, n_jobs=1, sampler="tpe", sampler_kwargs={}, seed=0,
                           pruner=None, pruner_kwargs={}, storage=None, study_name="s", heartbeat_interval=60,
                           grace_period=180, poll_interval=5, params={}, trial=None, resume_key="resume")
