"""Sweep reports on real Hydra multiruns (a fast stand-in app for scripts/train.py) and on synthetic sweep dirs."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from lit_tricks.sweeps.report import aggregate_folds, build_report, load_jobs, write_report
from tests.sweeps.sweep_app.app import objective

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "sweep_app" / "app.py"
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml")
           if p.stem != "bagging")  # bagging: Hydra's basic sweeper over seeds (tests/sweeps/test_bagging.py)


def run_sweep(tmp_path: Path, *overrides: str) -> Path:
    """Run the stand-in app as a multirun; returns its (only) new multirun directory."""
    log_dir = tmp_path / "logs"
    before = set(log_dir.glob("**/multiruns/*"))
    env = {**os.environ, "SWEEP_APP_LOG_DIR": str(log_dir), "HYDRA_FULL_ERROR": "1", "PYTHONPATH": str(ROOT),
           "LIT_TRICKS_LOG_DIR": str(log_dir)}  # lit_optuna presets: <log dir>/<task>/multiruns/<study name>
    proc = subprocess.run([sys.executable, str(APP), "-m", *overrides], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = {p for p in log_dir.glob("**/multiruns/*") if p.is_dir()} - before
    assert len(new) == 1
    return new.pop()


def write_job(sweep: Path, num: int, params: dict[str, Any], objective_value: float | None,
              status: str = "ok", error: str | None = None, sweeper_params: dict[str, str] | None = None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in params.items()]))
    if sweeper_params is not None:
        hydra = {"hydra": {"sweeper": {"direction": "maximize", "params": sweeper_params}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if objective_value is not None or status != "ok":
        record = {"objective": objective_value if objective_value is not None else math.nan, "status": status,
                  "error": error, "monitor": "val/acc", "metrics": {}, "best_ckpt": ""}
        (job / "metrics.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_random_lr_sweep_report_then_narrowed_stage_runs(tmp_path: Path) -> None:
    # the acceptance sweep's shape: hparams_search=random_lr with 4 trials; lr > 0.0015 "diverges" (job fails; with seed
    # 42 the per-trial seeded sampler draws lr 0.00139, 0.00144, 0.00173, 2.5e-05)
    sweep = run_sweep(tmp_path, "hparams_search=random_lr", "hydra.sweeper.n_trials=4", "fail_above_lr=0.0015")
    assert build_report(sweep).narrowed == {}  # 3 ranked jobs for 2 hyperparameters: too little to narrow
    assert "Too little evidence to narrow: 3 ranked job(s) for 2" in build_report(sweep).markdown()
    report = build_report(sweep, jobs_per_dim=1)
    paths = write_report(report)
    jobs = load_jobs(sweep)
    assert len(report.jobs) == 4 == len(jobs)
    # every row's objective is what the job returned (its metrics.json), which is the closed form of its params
    for job in report.ok_jobs:
        record = json.loads((job.dir / "metrics.json").read_text())
        assert job.objective == record["objective"]
        assert job.objective == pytest.approx(objective(job.params["optimizer.lr"],
                                                        job.params["module.weight_decay"], -1.5))
    values = [j.objective for j in report.ok_jobs]
    assert values == sorted(values, reverse=True)  # the direction follows the app's monitor_mode=max: best first
    assert report.failed_jobs and all(j.params["optimizer.lr"] > 0.0015 for j in report.failed_jobs)
    md = report.markdown()
    assert "loss diverged" in md and "## Jobs not ranked" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    assert len(table) == 4
    csv_rows = paths["csv"].read_text().strip().splitlines()
    assert len(csv_rows) == 5 and csv_rows[0].startswith("rank,job,status,objective,optimizer.lr,module.weight_decay")
    assert paths["plot"].stat().st_size > 1000 and paths["plot"].read_bytes()[:4] == b"\x89PNG"
    assert report.dims["optimizer.lr"].log and report.dims["module.weight_decay"].log

    # the narrowed ranges, printed as one override, parse with Hydra's parser and run the next stage
    args = shlex.split(report.overrides())
    parsed = OverridesParser.create().parse_overrides(args)
    assert [o.get_key_element() for o in parsed] == ["hydra.sweeper.params"]
    fine = run_sweep(tmp_path, "hparams_search=fine", "hydra.sweeper.n_trials=2", *args)
    fine_report = build_report(fine)
    assert fine_report.dims == report.narrowed
    lr = report.narrowed["optimizer.lr"]
    assert all(lr.low <= j.params["optimizer.lr"] <= lr.high for j in fine_report.jobs)  # type: ignore[operator]
    assert all(j.metrics["epochs"] == 5 for j in fine_report.ok_jobs)  # stage 2 trains longer


def test_border_warning_fires_when_best_is_at_the_edge(tmp_path: Path) -> None:
    space = {"optimizer.lr": "tag(log, interval(1e-4, 1.0))"}
    for num, (lr, acc) in enumerate([(1e-3, 0.5), (1e-2, 0.7), (0.9, 0.9), (0.1, 0.8)]):
        write_job(tmp_path / "edge", num, {"optimizer.lr": lr}, acc, sweeper_params=space)
    edge = build_report(tmp_path / "edge", jobs_per_dim=1)
    assert edge.best is not None and edge.best.params["optimizer.lr"] == 0.9
    assert any("optimizer.lr" in w and "upper border" in w and "search above 1.0 too" in w for w in edge.warnings)
    assert edge.narrowed["optimizer.lr"].high == 1.0  # never beyond what was searched: the warning says look there
    for num, (lr, acc) in enumerate([(1e-3, 0.5), (1e-2, 0.9), (0.9, 0.6), (0.1, 0.8)]):
        write_job(tmp_path / "inner", num, {"optimizer.lr": lr}, acc, sweeper_params=space)
    inner = build_report(tmp_path / "inner")
    assert inner.warnings == [] and "WARNING" not in inner.markdown()


def test_failed_and_missing_jobs_are_listed_not_ranked(tmp_path: Path) -> None:
    write_job(tmp_path, 0, {"optimizer.lr": 0.1}, 0.8)
    write_job(tmp_path, 1, {"optimizer.lr": 1.0}, None, status="failed", error="FloatingPointError: loss is nan")
    write_job(tmp_path, 2, {"optimizer.lr": 0.01}, None)  # crashed before writing metrics.json
    report = build_report(tmp_path)
    assert [j.num for j in report.ok_jobs] == [0]
    assert {j.num: j.status for j in report.failed_jobs} == {1: "failed", 2: "missing"}
    md = report.markdown()
    assert "job 1 (failed): FloatingPointError: loss is nan" in md and "no metrics.json" in md


def test_fold_sweeps_are_aggregated_to_the_mean(tmp_path: Path) -> None:
    num = 0
    for lr, accs in ((0.1, [0.8, 0.9, 0.7]), (0.01, [0.6, 0.6, 0.9])):
        for fold, acc in enumerate(accs):
            write_job(tmp_path, num, {"optimizer.lr": lr, "data.fold": fold}, acc)
            num += 1
    merged = aggregate_folds(load_jobs(tmp_path))
    assert len(merged) == 2
    report = build_report(tmp_path)
    assert [round(j.objective, 6) for j in report.jobs] == [0.8, 0.7]
    assert report.jobs[0].params == {"optimizer.lr": 0.1} and report.jobs[0].metrics["folds"] == 3
    assert "data.fold" not in report.param_names


def test_minimize_direction_sorts_ascending(tmp_path: Path) -> None:
    space = {"optimizer.lr": "interval(0.0, 1.0)"}
    for num, (lr, loss) in enumerate([(0.2, 0.5), (0.5, 0.1), (0.8, 0.3)]):
        write_job(tmp_path, num, {"optimizer.lr": lr}, loss, sweeper_params=space)
    for job in tmp_path.iterdir():
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"sweeper": {"direction": "minimize", "params": space}}}))
    assert [j.objective for j in build_report(tmp_path).jobs] == [0.1, 0.3, 0.5]


def test_sweep_report_script_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import sweep_report
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    sweep = tmp_path / "train" / "multiruns" / "2026-01-01_00-00-00"
    for num, lr in enumerate([1e-3, 1e-2, 1e-1]):
        write_job(sweep, num, {"optimizer.lr": lr, "module.weight_decay": 1e-4}, 0.5 + num / 10)
    assert sweep_report.main(["--latest", "--log-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 2 | ok | 0.7 | 0.1 |" in out
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file() and (sweep / "objective.png").is_file()
    assert sweep_report.main([str(tmp_path / "nope")]) == 2


@pytest.mark.parametrize("preset", PRESETS)
def test_hparams_search_presets_compose_seeded(preset: str) -> None:
    # a preset that selects its own experiment (hparams_search=mnist1d_tricks) needs the real train config
    own_experiment = "override /experiment" in (ROOT / "conf" / "hparams_search" / f"{preset}.yaml").read_text()
    conf_dir, name = (ROOT / "conf", "train") if own_experiment else (APP.parent / "conf", "app")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(name, overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    assert sweeper.params, f"{preset} sweeps nothing"
    # lit_optuna presets: seeded, so a re-run (or another process) proposes the same trials; direction = monitor_mode
    assert sweeper._target_.endswith("LitOptunaSweeper")
    assert sweeper.seed == cfg.seed and sweeper.direction == cfg.monitor_mode and sweeper.storage is None
    if preset in ("random_lr", "coarse"):
        assert sweeper.sampler == "random"
        assert sweeper.params["optimizer.lr"] == "tag(log, interval(1e-6, 10.0))"
        assert sweeper.params["module.weight_decay"] == "tag(log, interval(1e-6, 10.0))"


def test_monitor_mode_ranks_even_when_the_sweeper_minimized(tmp_path: Path) -> None:
    """An Optuna preset minimized val/acc (monitor_mode=max): the report ranks by monitor_mode and says so."""
    space = {"optimizer.lr": "interval(0.0, 1.0)"}
    for num, (lr, acc) in enumerate([(0.2, 0.5), (0.5, 0.9), (0.8, 0.7)]):
        write_job(tmp_path, num, {"optimizer.lr": lr}, acc, sweeper_params=space)
        job = tmp_path / str(num)
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"sweeper": {"direction": "minimize", "params": space}}}))
        record = json.loads((job / "metrics.json").read_text())
        (job / "metrics.json").write_text(json.dumps({**record, "monitor_mode": "max"}))
    report = build_report(tmp_path)
    assert report.direction == "maximize"
    assert [j.objective for j in report.jobs] == [0.9, 0.7, 0.5]
    assert any("direction was minimize but monitor_mode=max" in w for w in report.warnings)


def test_pruned_jobs_are_counted_as_pruned_not_failed(tmp_path: Path) -> None:
    for num in range(6):
        pruned = num % 2 == 1
        write_job(tmp_path, num, {"optimizer.lr": 10.0 ** -num}, None if pruned else 0.5 + num / 100,
                  status="pruned" if pruned else "ok", error="TrialPruned: pruned at epoch 1" if pruned else None)
    report = build_report(tmp_path)
    md = report.markdown()
    assert "6 jobs: 3 ok, 0 failed, 3 pruned" in md and report.failed_jobs == []
    assert "jobs failed" not in md and "## Failed jobs" not in md
    assert md.count("(pruned): TrialPruned: pruned at epoch 1") == 3


def test_narrowed_ranges_follow_the_evidence(tmp_path: Path) -> None:
    # seen: after 3 random trials the report proposed weight decay in interval(6.21e-05, 562.0), beyond the searched
    # upper bound 10; and for a grid lr=0.3,0.1 it said "widen upwards" and proposed the same choices again
    space = {"optimizer.lr": "tag(log, interval(1e-6, 10.0))", "module.weight_decay": "tag(log, interval(1e-6, 10.0))"}
    for num, (lr, wd, acc) in enumerate([(1e-3, 5.0, 0.9), (1e-2, 1e-4, 0.8), (1e-5, 1e-6, 0.1)]):
        write_job(tmp_path / "few", num, {"optimizer.lr": lr, "module.weight_decay": wd}, acc, sweeper_params=space)
    few = build_report(tmp_path / "few")
    assert few.narrowed == {} and "Too little evidence to narrow: 3 ranked job(s)" in few.markdown()
    for dims in build_report(tmp_path / "few", jobs_per_dim=1).narrowed.values():  # forced: still inside
        assert 1e-6 <= dims.low and dims.high <= 10.0  # type: ignore[operator]
    for num, (lr, acc) in enumerate([(0.3, 0.9), (0.1, 0.8), (0.3, 0.7), (0.1, 0.6)]):
        write_job(tmp_path / "grid", num, {"optimizer.lr": lr}, acc, sweeper_params={"optimizer.lr": "0.3,0.1"})
    grid = build_report(tmp_path / "grid", jobs_per_dim=1)
    assert grid.narrowed == {} and "No narrower range follows" in grid.markdown()
    assert any("add values above 0.3 to the choices" in w for w in grid.warnings)
