"""Ablation logic with a fake run_fn (paired seeds, CIs, table, plot) and a 1-seed smoke run of scripts/ablate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lit_tricks.sweeps.ablation import (
    DEFAULT_ABLATIONS,
    ablation_bar_plot,
    ablation_markdown,
    build_variants,
    relative_cut,
    run_ablation,
    summarize_ablation,
)
from lit_tricks.sweeps.stats import bootstrap_ci, paired_bootstrap_ci

ROOT = Path(__file__).resolve().parents[2]

# test accuracy of the fake runs: baseline 98.6%, all tricks 99.3%, dropping augmentation costs 0.4 points
ACC = {"experiment=baseline": 0.986, "experiment=tricks": 0.993}


def fake_run(overrides: list[str]) -> dict[str, float]:
    seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
    acc = ACC["experiment=baseline"] if "experiment=baseline" in overrides else ACC["experiment=tricks"]
    if "augment=none" in overrides:
        acc -= 0.004
    noise = 0.002 * np.sin(seed + 1.0)  # shared by every variant of a seed: paired noise
    return {"test/acc": acc + noise, "val/acc": acc}


def test_variants_paired_seeds_table_and_plot(tmp_path: Path) -> None:
    variants = build_variants({"augmentation": ["augment=none"], "momentum": ["optimizer.momentum=0.0"]})
    assert list(variants) == ["baseline", "tricks", "tricks - augmentation", "tricks - momentum"]
    assert variants["tricks - augmentation"] == ["experiment=tricks", "augment=none"]
    calls: list[list[str]] = []

    def run(overrides: list[str]) -> dict[str, float]:
        calls.append(overrides)
        return fake_run(overrides)

    errors = run_ablation(run, variants, seeds=range(5), extra_overrides=["trainer.max_epochs=3"])
    assert len(calls) == 20 and calls[0] == ["experiment=baseline", "seed=0", "trainer.max_epochs=3"]
    assert [c[-2] for c in calls[:4]] == ["seed=0"] * 4  # the seed loop is outermost
    rows = {r.name: r for r in summarize_ablation(errors, n_boot=2000)}
    assert rows["baseline"].mean == pytest.approx(0.014 - 0.002 * np.mean(np.sin(np.arange(5) + 1.0)))
    assert rows["baseline"].low <= rows["baseline"].mean <= rows["baseline"].high
    # paired: the shared seed noise cancels, so the difference is exact and its CI has zero width
    assert rows["tricks - augmentation"].delta == pytest.approx(0.004)
    assert rows["tricks - augmentation"].delta_high - rows["tricks - augmentation"].delta_low < 1e-12
    assert rows["tricks - momentum"].delta == pytest.approx(0.0)
    est, low, high = relative_cut(errors, n_boot=2000)
    assert low <= est <= high and 0.45 < est < 0.6
    table = ablation_markdown(list(rows.values()), errors)
    assert "| tricks - augmentation | 5 |" in table and "+0.40" in table and "Tricks cut the baseline" in table
    assert "target" not in table
    assert "meets a 45% cut" in ablation_markdown(list(rows.values()), errors, target_cut=0.45)
    png = ablation_bar_plot(list(rows.values()), tmp_path / "ablation.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_missing_metric_and_bootstrap_edges() -> None:
    with pytest.raises(KeyError, match="test/acc"):
        run_ablation(lambda o: {"val/acc": 1.0}, {"baseline": []}, seeds=[0])
    with pytest.raises(ValueError, match="seeds"):
        run_ablation(fake_run, {"baseline": []}, seeds=[])
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=4000)
    assert 1.0 <= low < 2.5 < high <= 4.0
    assert paired_bootstrap_ci([1.0, 2.0], [0.5, 1.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap_ci([1.0], [1.0, 2.0])
    assert "augmentation" in DEFAULT_ABLATIONS and "EMA of weights" in DEFAULT_ABLATIONS


def _experiments_compose() -> str | None:
    if not (ROOT / "scripts" / "train.py").is_file():
        return "scripts/train.py is absent"
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            for exp in ("baseline", "tricks"):
                compose("train", overrides=[f"experiment={exp}"])
    except Exception as err:
        return f"experiment configs do not compose yet: {str(err).splitlines()[0]}"
    finally:
        GlobalHydra.instance().clear()
    return None


@pytest.mark.slow
@pytest.mark.timeout(240)  # two train.py processes (fast_dev_run); ~75 s on a busy 2-core machine
def test_ablate_script_smoke(tmp_path: Path) -> None:
    reason = _experiments_compose()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "abl"
    cmd = [sys.executable, str(ROOT / "scripts" / "ablate.py"), "--seeds", "1", "--quick", "--variants",
           "baseline,tricks", "--out", str(out), "--n-boot", "200", "--jobs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "ablation.json").read_text())
    assert set(record["errors"]) >= {"baseline", "tricks"}
    assert all(0.0 <= e[0] <= 1.0 for e in record["errors"].values())
    assert "| baseline | 1 |" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", sorted(__import__("lit_tricks.sweeps.ablation", fromlist=["x"]).MNIST1D_ABLATIONS))
def test_every_mnist1d_ablation_changes_the_tricks_recipe(name: str) -> None:
    """Each ``--set mnist1d`` variant composes on ``experiment=mnist1d_tricks`` and changes it (scripts/ablate.py
    would otherwise skip it): an ablation that silently trains the full recipe would report a zero effect."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from lit_tricks.sweeps.ablation import MNIST1D_ABLATIONS

    def composed(overrides: list[str]) -> object:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return OmegaConf.to_container(compose("train", overrides=["experiment=mnist1d_tricks", *overrides]))

    assert composed(MNIST1D_ABLATIONS[name]) != composed([])


def test_a_finished_run_is_reused_only_while_its_config_is_what_the_overrides_compose_to(tmp_path: Path) -> None:
    """scripts/ablate.py reuses a run directory whose metrics.json says ok; after a preset changes (as the MNIST-1D
    recipe did), the old result must not stand for the new recipe."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("ablate_script", ROOT / "scripts" / "ablate.py")
    assert spec is not None and spec.loader is not None
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    overrides = ["experiment=mnist1d_fast", "seed=0", "logger=none"]
    run_dir = tmp_path / "seed0"
    assert not ablate.same_config(run_dir, overrides)  # nothing saved: run it
    (run_dir / ".hydra").mkdir(parents=True)
    saved = ablate.compose(overrides)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**saved, "task_name": "x"}))
    assert ablate.same_config(run_dir, overrides)
    saved["optimizer"]["lr"] = 0.123  # the preset the run trained with differed
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert not ablate.same_config(run_dir, overrides)
