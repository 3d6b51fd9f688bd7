"""The benchmark runner's --quick mode runs end to end and writes every section (numbers are never asserted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow  # the mnist1d section trains through scripts/train.py
@pytest.mark.timeout(120)
def test_quick_benchmarks_write_all_sections(tmp_path: Path) -> None:
    from benchmarks.run_all import BENCHES, main

    out = tmp_path / "RESULTS.md"
    assert main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# lit_tricks benchmarks")
    assert "| torch threads |" in text
    assert text.count("\n## ") == len(BENCHES)
    assert "failed:" not in text
    assert "clip_grad_norm_(foreach=True)" in text and "EMAWeightAveraging" in text


@pytest.mark.timeout(60)
def test_only_replaces_its_sections_and_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `--only mnist1d` once rewrote RESULTS.md with that one section, dropping every other measurement
    import benchmarks.run_all as run_all

    monkeypatch.setitem(run_all.BENCHES, "ema", lambda quick: ("EMA weights", "new ema table"))
    out = tmp_path / "RESULTS.md"
    out.write_text("# lit_tricks benchmarks\n\nmachine\n\n## EMA weights\n\nold ema table\n\n## Gradient clipping\n\n"
                   "clip table\n")
    assert run_all.main(["--only", "ema", "--out", str(out)]) == 0
    text = out.read_text()
    assert "old ema table" not in text and "new ema table" in text and "re-run alone" in text
    assert "## Gradient clipping\n\nclip table" in text and text.index("## EMA weights") < text.index("## Gradient")
    assert text.startswith("# lit_tricks benchmarks\n\nmachine\n")


def test_mnist1d_bench_reuses_a_run_only_while_its_recipe_is_unchanged(tmp_path: Path) -> None:
    """A study directory outlives preset changes (the MNIST-1D recipes were re-chosen): a finished run is reused
    only while the config it saved is what its experiment composes to now."""
    from omegaconf import OmegaConf

    from benchmarks.mnist1d import CONF
    from lit_tricks.sweeps.ablation import compose_train, saved_config_matches

    overrides = ["experiment=mnist1d_fast", "seed=0", "logger=none"]  # what run_recipe passes its run
    run_dir = tmp_path / "runs" / "fast" / "seed0"
    assert not saved_config_matches(run_dir, CONF, overrides)  # nothing saved
    (run_dir / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.create(compose_train(CONF, overrides))
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    assert saved_config_matches(run_dir, CONF, overrides)
    cfg.optimizer.lr = 0.123  # the run trained another recipe
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    assert not saved_config_matches(run_dir, CONF, overrides)


@pytest.mark.slow  # two 2-epoch MNIST-1D runs through scripts/train.py, side by side
@pytest.mark.timeout(300)
def test_posthoc_study_quick_trains_seeds_side_by_side_and_scores_every_length(tmp_path: Path) -> None:
    import json

    from benchmarks.mnist1d_posthoc import SIGMA_RELS, main

    assert main(["--seeds", "2", "--jobs", "2", "--quick", "--out", str(tmp_path),
                 "--table", str(tmp_path / "table.md")]) == 0
    for seed in (0, 1):
        rows = json.loads((tmp_path / f"seed{seed}" / "posthoc_ema" / "posthoc_ema.json").read_text())["rows"]
        assert [r["sigma_rel"] for r in rows] == list(SIGMA_RELS)  # the override reached the evaluation
    text = (tmp_path / "table.md").read_text()
    assert "| recipe EMA (decay 0.999) |" in text and "--jobs 2" in text  # the decay the runs saved


def _posthoc_run(out: Path, seed: int, ema: dict[str, object] | None, quick: bool = False) -> None:
    """A finished run of the post-hoc study as far as its reader goes: metrics.json, config_resolved.yaml, and the
    config the study composes for it (``quick``: the 2-epoch one) as the run's saved ``.hydra/config.yaml``."""
    from benchmarks.mnist1d_posthoc import ROOT, seed_overrides
    from lit_tricks.sweeps.ablation import compose_train

    run = out / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "ok", "metrics": {}}')
    composed = compose_train(ROOT / "conf", seed_overrides(seed, quick))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(composed))
    callbacks = {"clipping": {"_target_": "lit_tricks.callbacks.GradientClipping", "max_norm": 1.0}}
    if ema is not None:
        callbacks["ema"] = {"_target_": "lit_tricks.callbacks.EMAWeights", "half_life_steps": None, **ema}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump({"seed": seed, "callbacks": callbacks}))


def test_posthoc_study_labels_the_recipe_ema_with_the_decay_its_runs_saved(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.mnist1d_posthoc import main, recipe_ema_label

    for seed, ema in enumerate([{"decay": 0.99}, {"decay": 0.99}, {"decay": 0.5, "half_life_steps": 250},
                                {"decay": 0.999}]):
        _posthoc_run(tmp_path, seed, ema)
    runs = [tmp_path / f"seed{s}" for s in range(4)]
    assert recipe_ema_label(runs[:2]) == "recipe EMA (decay 0.99)"  # a changed recipe changes the label
    assert recipe_ema_label(runs[2:3]) == "recipe EMA (half-life 250 steps)"
    with pytest.raises(ValueError, match=r"disagree .*decay 0\.99 in seed0, seed1; decay 0\.999 in seed3$"):
        recipe_ema_label([*runs[:2], runs[3]])
    _posthoc_run(tmp_path / "none", 0, None)
    with pytest.raises(ValueError, match="0 EMAWeights callbacks, expected 1"):
        recipe_ema_label([tmp_path / "none" / "seed0"])
    # main refuses in one line before scoring or writing anything (the finished runs are not retrained)
    assert main(["--seeds", "4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mnist1d_posthoc: the runs disagree on the recipe EMA" in err
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "seed0" / "soup").exists()


def test_posthoc_study_retrains_a_seed_whose_run_trained_another_config(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished seed is reused only while its saved config is what the study composes now: a run of another config
    (here the 2-epoch ``--quick`` one) is retrained, and its soups (derived from its members) are dropped first."""
    import subprocess

    from benchmarks import mnist1d_posthoc

    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: calls.append(cmd))
    _posthoc_run(tmp_path, 0, {"decay": 0.999})
    _posthoc_run(tmp_path, 1, {"decay": 0.999}, quick=True)
    (tmp_path / "seed1" / "soup").mkdir()
    for seed in (0, 1):
        mnist1d_posthoc.train_seed(seed, tmp_path, quick=False)
    assert len(calls) == 1 and "seed=1" in calls[0] and f"hydra.run.dir={tmp_path / 'seed1'}" in calls[0]
    assert "trainer.max_epochs=2" not in calls[0] and not (tmp_path / "seed1" / "soup").exists()


def _stepper(setup_s: float, step_s: float, optimizers: int = 1) -> Callable[[int], None]:
    """A runner that burns ``setup_s`` CPU seconds before its first step, then ``step_s`` per step."""
    import torch

    def burn(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def run(steps: int) -> None:
        burn(setup_s)
        opts = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1) for _ in range(optimizers)]
        for _ in range(steps):
            burn(step_s)
            for opt in opts:
                opt.step()
        burn(setup_s)  # a test pass after the last step

    return run


@pytest.mark.timeout(60)
def test_step_cost_times_the_steps_and_not_the_set_up_or_the_test_pass() -> None:
    # the per-step window is read from a global optimizer-step hook: a set-up 100x a step's cost, before the first
    # step and after the last, must not reach the estimate (CPU-time clock: bounds, not exact values)
    from benchmarks.step_cost import per_step_costs

    costs = per_step_costs({"cheap": _stepper(0.2, 0.002), "dear": _stepper(0.2, 0.006)}, short=5, long=25,
                           repeats=2)
    assert all(1.5 <= c <= 4.0 for c in costs["cheap"]), costs
    assert all(4.5 <= c <= 12.0 for c in costs["dear"]), costs
    from torch.optim.optimizer import _global_optimizer_post_hooks

    assert not _global_optimizer_post_hooks  # the hook is removed


@pytest.mark.timeout(60)
def test_step_cost_refuses_a_runner_that_does_not_step_once_per_step() -> None:
    from benchmarks.step_cost import per_step_costs

    with pytest.raises(RuntimeError, match="two: 50 optimizer steps in a 25-step run"):
        per_step_costs({"two": _stepper(0.0, 0.0, optimizers=2)}, short=5, long=25, repeats=1)
