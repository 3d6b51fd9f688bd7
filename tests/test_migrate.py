"""A saved run folder whose config names an old ``_target_``: a one-line error naming the new path, and
``lit-tricks-migrate RUN_DIR`` rewrites it to the public package paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lit_tricks.callbacks import EMAWeights
from lit_tricks.cli.migrate import main
from lit_tricks.config_checks import ConfigError, check_config
from lit_tricks.migrate import MOVED, new_target
from lit_tricks.trainers import HydraSafeDDPStrategy

#: Parts of a .hydra/config.yaml saved before 0.1.0: a removed shim path and a module path.
OLD_SAVED = """
seed: 0
callbacks:
  ema:
    _target_: lit_tricks.callbacks.ema.EMAWeights
    decay: 0.99
trainer:
  accelerator: cpu
  devices: 1
  strategy:
    _target_: lit_tricks.sweeps.ddp.ddp_strategy
    process_group_backend: gloo
    timeout_s: 120
"""


def saved_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(OLD_SAVED)
    (run / "config_resolved.yaml").write_text(OLD_SAVED)
    return run


def test_old_target_is_one_line_naming_the_new_path_and_the_command(tmp_path: Path) -> None:
    cfg = OmegaConf.load(saved_run(tmp_path) / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)  # type: ignore[arg-type]
    assert err.value.problems == [
        "trainer.strategy._target_=lit_tricks.sweeps.ddp.ddp_strategy: moved to lit_tricks.trainers.ddp_strategy; "
        "migrate a saved run folder with `lit-tricks-migrate RUN_DIR`"]


def test_migrate_rewrites_every_saved_config_to_public_paths(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = saved_run(tmp_path)
    assert main([str(run), "--dry-run"]) == 0
    assert "lit_tricks.callbacks.ema.EMAWeights" in (run / ".hydra" / "config.yaml").read_text()  # dry run: unchanged
    assert main([str(tmp_path)]) == 0  # a folder above run folders (a sweep) migrates each of them
    assert capsys.readouterr().out.splitlines()[-1] == "lit-tricks-migrate: 4 _target_s rewritten"
    for name in (".hydra/config.yaml", "config_resolved.yaml"):
        cfg = OmegaConf.load(run / name)
        assert cfg.callbacks.ema._target_ == "lit_tricks.callbacks.EMAWeights"
        assert cfg.trainer.strategy._target_ == "lit_tricks.trainers.ddp_strategy"
        assert OmegaConf.to_container(cfg.trainer.strategy) == {
            "_target_": "lit_tricks.trainers.ddp_strategy", "process_group_backend": "gloo", "timeout_s": 120}
    assert isinstance(instantiate(cfg.callbacks.ema), EMAWeights)
    assert isinstance(instantiate(cfg.trainer.strategy), HydraSafeDDPStrategy)
    assert main([str(run)]) == 0  # a second run has nothing left to do
    assert capsys.readouterr().out.strip().endswith("0 _target_s rewritten")


def test_every_moved_path_names_an_importable_public_object() -> None:
    from hydra.utils import get_object

    for old, new in MOVED.items():
        assert get_object(new) is not None, old
    assert new_target("lit_tricks.callbacks.ema.EMAWeights") == "lit_tricks.callbacks.EMAWeights"
    assert new_target("lit_tricks.callbacks.EMAWeights") is None
    assert new_target("torch.optim.SGD") is None  # not ours: left as it is


def test_migrate_refuses_a_folder_without_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no .hydra/config.yaml" in capsys.readouterr().err
