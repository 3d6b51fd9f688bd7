"""Packaging promises: light imports, typed package, configs on Hydra's search path for any app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lit_tricks


def test_version_and_py_typed() -> None:
    assert lit_tricks.__version__.count(".") == 2
    assert (Path(lit_tricks.__file__).parent / "py.typed").is_file()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_callbacks_and_modules_do_not_import_sklearn_or_matplotlib() -> None:
    """Our code adds neither. (torchmetrics itself imports matplotlib when it is installed, so the baseline is what
    `import lightning.pytorch, torchmetrics` already loaded.)"""
    code = (
        "import sys, lightning.pytorch, torchmetrics, torchvision\n"
        "before = set(sys.modules)\n"
        "import lit_tricks.callbacks, lit_tricks.modules, lit_tricks.functional, lit_tricks.models\n"
        "new = set(sys.modules) - before\n"
        "heavy = sorted(m for m in new if m.split('.')[0] in ('sklearn', 'matplotlib', 'scipy'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing lit_tricks pulled in: {out.stdout.strip()}"


def test_conf_is_shipped_inside_the_package() -> None:
    import importlib.resources

    conf = importlib.resources.files("lit_tricks.conf")
    assert conf.joinpath("train.yaml").is_file()
    assert conf.joinpath("optimizer").is_dir()


def test_foreign_hydra_app_composes_lit_tricks_groups(tmp_path: Path) -> None:
    """A user's own Hydra app (its own config dir) can pick our groups by name through the search-path plugin."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "app.yaml").write_text("defaults:\n  - logger: csv\n  - _self_\nmine: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("app", overrides=["+callbacks=model_checkpoint"])
    assert cfg.mine == 1
    assert cfg.logger.csv._target_ == "lightning.pytorch.loggers.CSVLogger"
    assert cfg.callbacks.model_checkpoint._target_.endswith("ModelCheckpoint")


def test_every_group_composes_and_resolves_in_a_foreign_app(tmp_path: Path) -> None:
    """An app that defines none of train.yaml's top-level keys (paths, monitor, task_name) can use every group: the
    interpolations fall back to documented defaults (oc.select) and the callbacks instantiate."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    (tmp_path / "app.yaml").write_text("mine: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("app", overrides=[
            "+callbacks=[default,checkpoint_ensemble,early_stopping]", "+trainer=ddp_cpu",
            "+logger=[csv,tensorboard,mlflow]", "+data=mnist", "+model=cnn_small", "+module=trick",
            "+optimizer=sgd", "+scheduler=warmup_cosine", "+augment=digits",
        ])
    GlobalHydra.instance().clear()
    resolved = OmegaConf.to_container(cfg, resolve=True)  # no paths.*, monitor, task_name needed
    assert isinstance(resolved, dict)
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.model_checkpoint.mode == "min"
    assert cfg.callbacks.model_checkpoint.dirpath == "./checkpoints" and cfg.trainer.default_root_dir == "."
    assert cfg.logger.mlflow.experiment_name == "lit_tricks" and cfg.data.data_dir
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    assert len(callbacks) == len(cfg.callbacks) >= 10
