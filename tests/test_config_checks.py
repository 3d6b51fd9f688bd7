"""Bad config values fail at start-up, every problem at once, each naming the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lit_tricks.config_checks import ConfigError, check_config

GOOD = {
    "seed": 1,
    "optimizer": {"lr": 0.1, "momentum": 0.9},
    "module": {"weight_decay": 5e-4, "dropout": 0.2, "norm": "group:8", "init": "kaiming_normal",
               "label_smoothing": 0.1, "l1": 0.0},
    "data": {"_target_": "lit_tricks.data.DigitsDataModule", "batch_size": 64, "num_workers": 0},
    "trainer": {"max_epochs": 3},
}


def test_good_config_passes() -> None:
    check_config(OmegaConf.create(GOOD))


def test_every_problem_is_reported_at_once() -> None:
    bad = OmegaConf.merge(GOOD, {
        "optimizer": {"lr": -0.1},
        "module": {"weight_decay": -1.0, "dropout": 1.0, "norm": "batchy", "init": "glorot"},
        "data": {"batch_size": 0},
    })
    with pytest.raises(ConfigError) as info:
        check_config(bad)
    problems = info.value.problems
    keys = [p.split("=", 1)[0] for p in problems]
    assert keys == ["optimizer.lr", "module.weight_decay", "module.dropout", "module.norm", "module.init",
                    "data.batch_size"]
    assert "optimizer.lr=-0.1" in problems[0] and "(0, inf)" in problems[0]
    assert "'batchy'" in problems[3] and "group" in problems[3]
    assert len(str(info.value).splitlines()) == 1 + len(problems)


def test_non_numeric_number_is_named() -> None:
    with pytest.raises(ConfigError, match=r"optimizer.lr='abc': must be a number"):
        check_config(OmegaConf.merge(GOOD, {"optimizer": {"lr": "abc"}}))


def test_decay_in_optimizer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"module\.weight_decay instead"):
        check_config(OmegaConf.merge(GOOD, {"optimizer": {"weight_decay": 0.01}}))


def test_missing_dataset_directory(tmp_path: Path) -> None:
    cfg = OmegaConf.merge(GOOD, {"data": {"_target_": "lit_tricks.data.MNISTDataModule",
                                          "data_dir": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"data.data_dir=.*nope.*directory not found"):
        check_config(cfg)
