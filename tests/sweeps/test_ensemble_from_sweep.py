"""Members of a sweep ensemble: the top-k ok jobs with a checkpoint file, in objective order; their config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_tricks.fault.ema_checkpoint import ema_checkpoint_path
from lit_tricks.sweeps.ensemble import ensemble_members, job_config
from lit_tricks.sweeps.report import build_report


def make_job(sweep: Path, num: int, lr: float, acc: float | None, ckpt: bool = True) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": num, "optimizer": {"lr": lr}}))
    path = job / "checkpoints" / "best.ckpt"
    if ckpt:
        path.parent.mkdir()
        torch.save({"state_dict": {}, "loops": {}, "optimizer_states": []}, path)  # a training checkpoint
    record = {"objective": acc, "status": "ok" if acc is not None else "failed", "best_ckpt": str(path),
              "error": None if acc is not None else "RuntimeError: boom", "metrics": {"test/acc": acc or 0.0}}
    (job / "metrics.json").write_text(json.dumps(record))


def test_members_are_the_best_ok_jobs_with_checkpoints(tmp_path: Path) -> None:
    make_job(tmp_path, 0, 0.1, 0.7)
    make_job(tmp_path, 1, 0.3, 0.9)
    make_job(tmp_path, 2, 1.0, None)  # failed
    make_job(tmp_path, 3, 0.03, 0.95, ckpt=False)  # best score but no checkpoint file
    make_job(tmp_path, 4, 0.01, 0.5)
    report = build_report(tmp_path)
    members = ensemble_members(report, top_k=2)
    assert [m.num for m in members] == [1, 0]
    assert [m.num for m in ensemble_members(report, top_k=10)] == [1, 0, 4]
    assert job_config(members[0]).optimizer.lr == 0.3
    (members[0].dir / "config_resolved.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": 0.25}}))
    assert job_config(members[0]).optimizer.lr == 0.25  # lit_tricks.run's resolved copy wins
    with pytest.raises(ValueError, match="top_k"):
        ensemble_members(report, top_k=0)


def test_ema_evaluated_jobs_contribute_their_ema_twins(tmp_path: Path) -> None:
    """An old record names the raw checkpoint of a job that evaluated the EMA: the member is the -ema twin."""
    make_job(tmp_path, 0, 0.1, 0.7)
    make_job(tmp_path, 1, 0.3, 0.9)
    job = tmp_path / "1"
    torch.save({"state_dict": {}}, ema_checkpoint_path(job / "checkpoints" / "best.ckpt"))  # weights only
    cfg = {"seed": 1, "callbacks": {"ema": {"_target_": "lit_tricks.callbacks.ema.EMAWeights",
                                            "evaluate_with": "ema"}}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    # a twin, but job 0 evaluated the raw weights
    torch.save({"state_dict": {}}, ema_checkpoint_path(tmp_path / "0" / "checkpoints" / "best.ckpt"))
    members = ensemble_members(build_report(tmp_path), top_k=2)
    assert [Path(m.best_ckpt) for m in members] == [ema_checkpoint_path(job / "checkpoints" / "best.ckpt"),
                                                    tmp_path / "0" / "checkpoints" / "best.ckpt"]
    # a record that names the twin already (this lit_tricks) keeps it
    record = json.loads((job / "metrics.json").read_text())
    (job / "metrics.json").write_text(json.dumps({**record, "best_ckpt": str(members[0].best_ckpt)}))
    assert ensemble_members(build_report(tmp_path), top_k=1)[0].best_ckpt == members[0].best_ckpt
