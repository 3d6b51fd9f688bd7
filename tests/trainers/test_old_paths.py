"""Saved configs name the old ``lit_tricks.sweeps.ddp`` / ``sweeps.jobs`` targets: they still instantiate, with a
DeprecationWarning, to the objects of :mod:`lit_tricks.trainers`."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lit_tricks.trainers import build, jobs, strategies

#: A trainer node as a saved ``.hydra/config.yaml`` from before the move holds it (conf/trainer/ddp_cpu.yaml).
OLD_SAVED = """
trainer:
  accelerator: cpu
  devices: 2
  max_epochs: 1
  strategy:
    _target_: lit_tricks.sweeps.ddp.ddp_strategy
    process_group_backend: gloo
    timeout_s: 120
"""


def test_old_saved_config_with_old_targets_instantiates(tmp_path: Path) -> None:
    cfg = OmegaConf.create(OLD_SAVED)
    with pytest.warns(DeprecationWarning, match="lit_tricks.trainers.strategies.ddp_strategy"):
        strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, strategies.HydraSafeDDPStrategy)
    with pytest.warns(DeprecationWarning):
        trainer = build.build_trainer(OmegaConf.create({"trainer": {**cfg.trainer, "devices": 1, "strategy": {
            "_target_": "lit_tricks.sweeps.ddp.ddp_strategy", "process_group_backend": "gloo"}},
            "paths": {"output_dir": str(tmp_path)}}), [], False)
    assert isinstance(trainer, pl.Trainer) and isinstance(trainer.strategy, strategies.HydraSafeDDPStrategy)


@pytest.mark.parametrize(("old", "name", "new"), [
    ("lit_tricks.sweeps.ddp", "build_trainer", build),
    ("lit_tricks.sweeps.ddp", "fsdp_strategy", strategies),
    ("lit_tricks.sweeps.ddp", "scale_learning_rates", strategies),
    ("lit_tricks.sweeps.ddp", "job_guard", jobs),
    ("lit_tricks.sweeps.ddp", "config_hash", jobs),
    ("lit_tricks.sweeps.jobs", "sweep_failure_value", jobs),
])
def test_old_import_paths_return_the_moved_objects(old: str, name: str, new: object) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved"):
        obj = getattr(module, name)
    assert obj is getattr(new, name)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
