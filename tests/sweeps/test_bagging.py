"""Bagging in one command (scripts/bag.py) and scripts/ensemble_from_sweep.py end to end on the same tiny real sweep:
B=3 digits members on bootstrap resamples; the bag's and the members' test accuracies checked against predictions
recomputed here from the member checkpoints (hand-written majority vote / mean of probabilities)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lit_tricks.builders import build_datamodule, build_model, build_module
from lit_tricks.cli.bag import main as bag_main
from lit_tricks.cli.ensemble import main as ensemble_main
from lit_tricks.data import DigitsDataModule
from lit_tricks.records import read_record
from lit_tricks.sweeps.bagging import bagging_command
from lit_tricks.sweeps.ensemble import job_config
from lit_tricks.sweeps.report import JobResult, build_report

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=mlp", "model.hidden=[32]", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "callbacks=minimal", "logger=none"]


def run_main(main: Callable[[list[str]], int], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command's ``main`` in this process (scripts/*.py only call it; the bag's multirun is still a child process),
    with the script's environment and working directory; its exit status and output as a CompletedProcess."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.chdir(cwd)
        mp.setenv("LIT_TRICKS_LOG_DIR", str(cwd / "logs"))
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        code = main(list(args))
    return subprocess.CompletedProcess([main.__module__, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("bag")
    out = tmp / "sweep"
    proc = run_main(bag_main, "--bags", "3", "--combine", "vote", "--out", str(out), *TINY, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def member_logits(job: JobResult) -> tuple[np.ndarray, np.ndarray]:
    """Test-split logits of one member, rebuilt from its resolved config and its best checkpoint; and the labels."""
    cfg = job_config(job)
    record = read_record(job.dir / "metrics.json")
    pl.seed_everything(int(cfg.seed), verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("test")
    module = build_module(cfg, build_model(cfg, dm), dm)
    state = torch.load(record["best_ckpt"], map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])  # its own preprocessing buffers (fit on its own resample) included
    module.eval()
    xs, ys = zip(*dm.test_dataloader(), strict=True)
    with torch.no_grad():
        logits = torch.cat([module(x) for x in xs])
    return logits.numpy(), torch.cat(ys).numpy()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bag_trains_three_bootstrap_members_and_reports_member_vs_bag_accuracy(
        bag: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = bag
    result = json.loads((out / "bag.json").read_text())
    jobs = sorted(p for p in out.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2"] and result["bags_ok"] == 3 and result["combine"] == "vote"
    configs = [job_config(m) for m in build_report(out).ok_jobs]
    assert sorted(int(c.seed) for c in configs) == [0, 1, 2] and all(c.data.bootstrap for c in configs)
    # different resamples: each seed draws its own bag of the same training split (with repeats)
    trains = [DigitsDataModule(bootstrap=True, bootstrap_seed=s) for s in (0, 1, 2)]
    for dm in trains:
        dm.setup("fit")
    indices = [dm.split_indices["train"] for dm in trains]
    assert len({tuple(i.tolist()) for i in indices}) == 3 and all(i.unique().numel() < i.numel() for i in indices)

    logits, labels = {}, None
    for job in build_report(out).ok_jobs:
        logits[job.num], labels = member_logits(job)
    assert labels is not None
    for member in result["members"]:  # each member's own test accuracy, recomputed from its checkpoint
        own = float((logits[member["job"]].argmax(1) == labels).mean())
        assert member["test/acc"] == pytest.approx(own, abs=1e-6)
    votes = np.stack([np.bincount(row, minlength=10) for row in np.stack([v.argmax(1) for v in logits.values()]).T])
    bag_acc = float((votes.argmax(1) == labels).mean())  # plurality vote, ties to the lower class
    assert result["test/acc_ensemble"] == pytest.approx(bag_acc, abs=1e-6)
    accs = [m["test/acc"] for m in result["members"]]
    assert result["member_acc_mean"] == pytest.approx(float(np.mean(accs)))
    assert result["member_acc_best"] == pytest.approx(max(accs))
    report = (out / "bag.md").read_text()
    assert f"| bag | {bag_acc:.4f} |" in report and f"| members (mean) | {np.mean(accs):.4f} |" in report
    assert report in proc.stdout

    # scripts/ensemble_from_sweep.py on the same sweep: the 2 best jobs by objective, mean of probabilities
    ens = run_main(ensemble_main, str(out), "--top-k", "2", cwd=out.parent)
    assert ens.returncode == 0, ens.stderr[-3000:]
    written = json.loads((out / "ensemble.json").read_text())
    best_two = [j.num for j in build_report(out).ok_jobs[:2]]
    assert [m["job"] for m in written["members"]] == best_two
    probs = np.mean([np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
                     for z in (logits[j] for j in best_two)], axis=0)
    assert written["test/acc_ensemble"] == pytest.approx(float((probs.argmax(1) == labels).mean()), abs=1e-6)
    assert written["test/acc"] == pytest.approx(float((logits[best_two[0]].argmax(1) == labels).mean()), abs=1e-6)
    assert f"test/acc_ensemble {written['test/acc_ensemble']:.4f}" in ens.stdout


def test_bagging_command_and_bad_bag_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cmd = bagging_command(4, tmp_path / "s", first_seed=10, overrides=["model=mlp"])
    assert cmd[1:] == ["-m", "lit_tricks.cli.train", "-m", "hparams_search=bagging", "seed=10,11,12,13",
                       f"hydra.sweep.dir={tmp_path / 's'}", "model=mlp"]
    with pytest.raises(ValueError, match=r"bags: expected an int >= 2"):
        bagging_command(1, tmp_path)
    assert bag_main(["--bags", "3", "--eval-only", "--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-tricks-bag: sweep_dir=") and "is not a directory" in err


def test_bagging_preset_is_a_basic_multirun_over_seeds_with_bootstrap() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["hparams_search=bagging"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    assert cfg.hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert cfg.hydra.sweeper.params == {"seed": "range(0,5)"}
    assert cfg.data.bootstrap is True and cfg.data.bootstrap_seed is None and cfg.task_name == "bagging"
