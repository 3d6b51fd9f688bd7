"""From Hydra and from the command line: ``callbacks=[default,posthoc_ema]`` snapshots during the run and
reconstructs at its end (metrics in metrics.json, files in <run>/posthoc_ema); ``lit-tricks-posthoc-ema RUN_DIR``
gives the same numbers afterwards; bad values fail before training, bad input exits 2 with one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from lit_tricks.callbacks.posthoc_ema import list_snapshots
from lit_tricks.cli.posthoc_ema import main
from lit_tricks.run import train
from lit_tricks.sweeps.posthoc_rows import SIGMA_REL, sigma_rel_rows
from lit_tricks.sweeps.results import JobResult

CONF = Path(__file__).resolve().parents[2] / "conf"


def _cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[
            "callbacks=[default,posthoc_ema]", "callbacks.posthoc_ema.snapshot_every_n_steps=3",
            "+posthoc_ema.sigma_rels=[0.05,0.15]", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
            f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", "logger=none", *overrides,
        ])


@pytest.mark.timeout(300)
def test_hydra_run_reconstructs_at_the_end_and_the_cli_agrees(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(_cfg(tmp_path))
    assert [s for s, _ in list_snapshots(tmp_path / "checkpoints" / "posthoc_ema")] == [3, 6, 8]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    report = json.loads((tmp_path / "posthoc_ema" / "posthoc_ema.json").read_text())
    best = report["best"]
    assert metrics["posthoc_ema/sigma_rel"] == best["sigma_rel"] and metrics["posthoc_ema/val/acc"] == best["val/acc"]
    assert metrics["posthoc_ema/sigma_rel=0.15/test/acc"] == report["rows"][1]["test/acc"]
    assert "posthoc_ema/final/test/acc" in metrics and (tmp_path / "posthoc_ema" / "posthoc-ema-best.ckpt").is_file()
    # the sweep report reads these metrics as one row per length (the run monitors val/loss: no rows, said once)
    record = json.loads((tmp_path / "metrics.json").read_text())
    job = JobResult(0, tmp_path, {}, "ok", record["objective"], metrics=metrics, monitor=record["monitor"])
    assert sigma_rel_rows([job])[0] == [job] and "monitoring val/loss" in str(sigma_rel_rows([job])[1])
    rows = sigma_rel_rows([replace(job, monitor="val/acc")])[0][1:]
    expected = [(r["sigma_rel"], r["val/acc"]) for r in report["rows"]]
    assert [(r.params[SIGMA_REL], r.objective) for r in rows] == expected
    assert [r.best_ckpt is not None for r in rows] == [r["sigma_rel"] == best["sigma_rel"] for r in report["rows"]]

    assert main([str(tmp_path), "--sigma-rel", "0.05,0.15", "--out", str(tmp_path / "cli")]) == 0
    again = json.loads((tmp_path / "cli" / "posthoc_ema.json").read_text())
    assert again["rows"] == report["rows"]  # rebuilt from config_resolved.yaml: the same numbers
    assert f"best sigma_rel={best['sigma_rel']:g}" in capsys.readouterr().out

    for argv, match in ([str(tmp_path / "nope")], "no such directory"), \
                       ([str(tmp_path), "--sigma-rel", "0.5"], "sigma_rels must be a number in"):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--sigma-rel", "a,b"])


def test_a_bad_value_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="posthoc_ema: sigma_rels must be a number in"):
        train(_cfg(tmp_path, "++posthoc_ema.sigma_rels=[0.5]"))
    assert not (tmp_path / "checkpoints").exists()
