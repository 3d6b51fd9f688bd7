"""How ``lit-tricks-train`` ends on an error: one line and an exit status for a single run, but under ``-m`` a job's
error goes back to the sweeper (an Optuna trial FAIL or PRUNED) instead of ending the whole sweep; a real TPE sweep
with pruned trials through ``scripts/train.py`` finishes with exit status 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import OmegaConf

import lit_tricks.cli.train as cli
from lit_tricks.config_checks import ConfigError, SweepConfigError

ROOT = Path(__file__).resolve().parents[2]
main = cli._hydra_main.__wrapped__  # the function under @hydra.main


class TrialPruned(Exception):  # what optuna.TrialPruned looks like to the cli: any exception type
    pass


@pytest.mark.parametrize("err", [TrialPruned("pruned at epoch 1"), RuntimeError("loss diverged"),
                                 ConfigError(["optimizer.lr=-1: must be > 0"])])
def test_under_multirun_a_jobs_error_goes_back_to_the_sweeper(monkeypatch: pytest.MonkeyPatch, err: Exception) -> None:
    def raise_it(cfg: Any) -> float:
        raise err

    monkeypatch.setattr("lit_tricks.run.train", raise_it)  # what the first job imports (cli._train)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(cli, "is_multirun", lambda: True)
    with pytest.raises(type(err)):
        main(OmegaConf.create({}))
    monkeypatch.setattr(cli, "is_multirun", lambda: False)  # a single run: one line and an exit status
    with pytest.raises(SystemExit) as info:
        main(OmegaConf.create({}))
    assert info.value.code == (2 if isinstance(err, ConfigError) else 1)


def test_a_problem_of_the_whole_sweep_ends_it_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def raise_it(cfg: Any) -> float:
        raise SweepConfigError(["hydra.sweeper.direction=minimize: disagrees with monitor_mode=max"])

    monkeypatch.setattr("lit_tricks.run.train", raise_it)  # what the first job imports (cli._train)
    monkeypatch.setattr(cli, "is_multirun", lambda: True)
    with pytest.raises(SystemExit) as info:
        main(OmegaConf.create({}))
    assert info.value.code == 2 and "direction=minimize" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_asha_sweep_with_pruned_trials_exits_zero(tmp_path: Path) -> None:
    """Regression: a pruned trial's TrialPruned reached the cli's single-run handler, which exited the sweep with 1."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(LIT_TRICKS_LOG_DIR=str(tmp_path / "logs"), OMP_NUM_THREADS="1")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "hparams_search=asha", "hydra.sweeper.n_trials=5",
           "hydra.sweeper.sampler_kwargs.n_startup_trials=5", f"hydra.sweeper.storage={storage}",
           "hydra.sweeper.study_name=prune", "trainer.max_epochs=3", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=1", "logger=none", "test=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="prune", storage=storage)
    assert len(study.trials) == 5 and all(t.state.is_finished() for t in study.trials)
    assert any(t.state.name == "PRUNED" for t in study.trials)  # seeded sampler and training: deterministic
    for t in study.trials:
        record = json.loads((tmp_path / "sweep" / str(t.number) / "metrics.json").read_text())
        assert record["status"] == {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name], record


def test_a_preset_that_cannot_be_built_is_named_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A node that no command-line override set, refused by its constructor: the line names the preset chosen for
    it (``module=trick``), and the run exits non-zero writing nothing."""
    from tests.helpers.cli import run_train_cli

    out = tmp_path / "run"
    code = run_train_cli(monkeypatch, "experiment=mnist1d_tricks", "model=gru_mnist1d", "logger=none",
                         f"hydra.run.dir={out}", f"paths.data_dir={tmp_path / 'data'}")
    err = capfd.readouterr().err
    assert code not in (None, 0)
    line = next(ln for ln in err.splitlines() if "cannot be built" in ln)
    assert "module='module=trick'" in line and "norm=batch" in line, err
    assert not any(p.suffix in (".ckpt", ".json") for p in tmp_path.rglob("*"))


def test_an_argument_of_a_nested_mapping_is_named_by_its_whole_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """``module.norm={kind: batch, layers: [...]}`` with a pattern matching no layer: the line names
    ``module.norm.layers`` (the norm's own argument; ``module.layers`` is no key), and the run exits non-zero writing
    nothing. A class name as the error's owner adds nothing to the key."""
    from lit_tricks.validation import ArgumentError, arg_key
    from tests.helpers.cli import run_train_cli

    out = tmp_path / "run"
    code = run_train_cli(monkeypatch, "experiment=mnist1d_baseline", "module.norm={kind:batch,layers:[head]}",
                         "logger=none", f"hydra.run.dir={out}", f"paths.data_dir={tmp_path / 'data'}")
    err = capfd.readouterr().err
    assert code not in (None, 0)
    assert "module.norm.layers=['head']: pattern 'head' matches none of the model's" in err, err
    assert not any(p.suffix in (".ckpt", ".json") for p in tmp_path.rglob("*"))
    node = OmegaConf.create({"norm": {"kind": "batch"}, "ema": 0.9})
    assert arg_key("module", ArgumentError("layers", [], "", owner="norm"), node) == "module.norm.layers"
    assert arg_key("callbacks.ema", ArgumentError("decay", 2, "", owner="EMAWeights"), node) == "callbacks.ema.decay"
    assert arg_key("module", ArgumentError("layers", [], "", owner="norm")) == "module.layers"  # no node known
