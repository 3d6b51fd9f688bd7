"""Bad config values fail at start-up, every problem at once, each naming the key, the value and what is allowed.

Each component checks its own arguments; ``check_config`` lets each one check its node and prefixes its key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from lit_tricks.config_checks import ConfigError, check_config
from tests.conf.effective import composed


def cfg_with(*overrides: str) -> DictConfig:
    """The default train config with ``overrides`` (a writable copy)."""
    cfg = OmegaConf.merge(composed(()), OmegaConf.from_dotlist(list(overrides)))
    assert isinstance(cfg, DictConfig)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def problems_of(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_config(cfg_with(*overrides))
    assert len(str(info.value).splitlines()) == 1 + len(info.value.problems)
    return info.value.problems


def test_good_config_passes() -> None:
    check_config(cfg_with())
    check_config(cfg_with("module.norm=group:8", "module.init=kaiming_normal", "module.dropout=null"))


def test_every_problem_is_reported_at_once_with_the_component_key() -> None:
    problems = problems_of("optimizer.lr=-0.1", "module.weight_decay=-1.0", "module.dropout=1.0",
                           "data.batch_size=0", "data.num_workers=-1", "callbacks.ema.decay=1.5", "seed=-1")
    assert problems[:2] == ["optimizer.lr=-0.1: must be a number in (0, inf)",
                            "seed=-1: must be an integer in [0, inf)"]
    assert "data.batch_size=0: must be an integer in [1, inf)" in problems
    assert "data.num_workers=-1: must be an integer in [0, inf)" in problems
    assert "module.weight_decay=-1.0: must be a number in [0, inf)" in problems  # TrickModule's own check
    assert "module.dropout=1.0: must be a number in [0, 1)" in problems  # ... every bad argument of it at once
    assert any(p.startswith("callbacks.ema") and "1.5" in p for p in problems)  # EMAWeights' own check
    assert len(problems) == 7, problems


@pytest.mark.parametrize(("override", "needle"), [
    ("module.norm=batchy", "module.norm='batchy': must be one of"),
    ("module.init=glorot", "glorot"),
    ("module.loss=hinge", "module.loss='hinge': must be one of"),
    ("scheduler.warmup=sideways", "scheduler: warmup: expected one of"),
    ("augment.steps=[{spin: {}}]", "augment:"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2: must be an integer in [-1, inf)"),
    ("optimizer.lr=abc", "optimizer.lr='abc': must be a number"),
    ("optimizer.momentum=1.5", "optimizer.momentum=1.5: must be a number in [0, 1)"),
])
def test_each_component_names_its_key(override: str, needle: str) -> None:
    problems = problems_of(override)
    assert len(problems) == 1 and needle in problems[0], problems


def test_decay_in_optimizer_is_refused_once_by_the_module() -> None:
    problems = problems_of("optimizer.weight_decay=0.01")
    assert len(problems) == 1 and problems[0].startswith("module: optimizer: weight_decay=0.01"), problems
    assert "module weight_decay instead" in problems[0]


def test_sync_batchnorm_on_cpu_is_named_once() -> None:
    problems = problems_of("trainer.sync_batchnorm=true")
    assert problems == ["trainer.sync_batchnorm=True: needs GPUs (torch's SyncBatchNorm only runs on CUDA modules); "
                        "with accelerator=cpu set it false, or use trainer=ddp"]


def test_missing_dataset_directory(tmp_path: Path) -> None:
    cfg = cfg_with(f"data.data_dir={tmp_path / 'nope'}")
    cfg.data._target_ = "lit_tricks.data.MNISTDataModule"
    with pytest.raises(ConfigError, match=r"data.data_dir=.*nope.*directory not found") as info:
        check_config(cfg)
    assert len(info.value.problems) == 1  # the DataModule is not built on a missing directory

