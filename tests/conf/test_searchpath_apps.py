"""lit_tricks' search-path plugin in another Hydra app: an app storing its own configs in Hydra's global ConfigStore
(as hydra-zen apps do), including one named like a base config or a preset of ours, and repeated compositions.

Hydra reads the search path in order and its ConfigStore (``structured://``) last; a config of a later source with
the name of a YAML or other config loaded from an earlier one is merged under it as a schema ("validated against
ConfigStore schema with the same name", deprecated since Hydra 1.1), which fails for an app's typed node. The app's
own configs win on name clashes (the plugin's docstring): its node is composed as it wrote it."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from omegaconf import DictConfig, OmegaConf

from lit_tricks import config_bases
from lit_tricks.config_bases import bases_store, register_bases


def _tree(repo: dict[str, Any]) -> dict[str, Any]:
    """The group dicts of a ConfigStore's repo copied (``store`` adds to them), its nodes shared."""
    return {k: _tree(v) if isinstance(v, dict) else v for k, v in repo.items()}


@pytest.fixture
def app_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConfigStore]:
    """Hydra's global ConfigStore for this test only: what the test's app stores is gone after it."""
    Plugins.instance()  # Hydra's plugins store their configs when first scanned: in the real store, not this one
    import hydra_zen.wrapper._implementations  # noqa: F401  its ZenStore checks the store current at its import
    store = ConfigStore.__new__(ConfigStore)
    store.repo = _tree(ConfigStore.instance().repo)
    monkeypatch.setitem(Singleton._instances, ConfigStore, store)
    yield store


def _composed(config_dir: Path, name: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def compose_app(config_dir: Path, name: str, overrides: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """The composed config (unresolved) of ``config_dir/name.yaml`` and the warnings composing it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = _composed(config_dir, name, overrides)
    return OmegaConf.to_container(cfg), [str(w.message) for w in caught]  # type: ignore[return-value]


def write_app(tmp_path: Path, **configs: str) -> Path:
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


@dataclass
class AppSGD:
    """An app's own ``base/torch/optim/SGD``: a typed node with a key of its own."""

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.5
    momentum: float = 0.0
    nesterov: bool = False
    app_key: int = 7


def test_an_apps_stored_config_named_like_a_base_wins_and_is_not_merged_with_ours(
        app_store: ConfigStore, tmp_path: Path) -> None:
    app_store.store(group="base/torch/optim", name="SGD", node=AppSGD)
    app = write_app(tmp_path, direct="defaults:\n  - /base/torch/optim/SGD@opt\n  - _self_\n",
                    preset="defaults:\n  - optimizer: sgd\n  - _self_\n")
    cfg, warned = compose_app(app, "direct")
    assert cfg == {"opt": OmegaConf.to_container(OmegaConf.structured(AppSGD))} and warned == []
    cfg, warned = compose_app(app, "preset")  # lit_tricks' preset on the app's base: the app's key is there
    assert cfg["optimizer"]["app_key"] == 7 and cfg["optimizer"]["lr"] == 0.1 and warned == []
    assert bases_store().load("base/torch/optim/SGD.yaml").node.lr == 0.001  # ours untouched


def test_a_hydra_zen_apps_stored_base_wins(app_store: ConfigStore, tmp_path: Path) -> None:
    """hydra-zen's own ``builds`` of the same signature, added with ``add_to_hydra_store`` (before: "Error merging
    'base/torch/optim/SGD' with schema: PartialBuilds_SGD is not a subclass of PartialBuilds_SGD")."""
    import torch
    from hydra_zen import ZenStore, builds

    zen_store = ZenStore()
    zen_store(builds(torch.optim.SGD, populate_full_signature=True, zen_partial=True, zen_exclude=["params"], lr=0.5),
              group="base/torch/optim", name="SGD")
    zen_store.add_to_hydra_store()
    cfg, warned = compose_app(write_app(tmp_path, app="defaults:\n  - /base/torch/optim/SGD@opt\n  - _self_\n"),
                              "app", ("+optimizer@other=sgd",))
    assert cfg["opt"]["lr"] == 0.5 and cfg["other"]["lr"] == 0.1 and warned == []


def test_an_apps_yaml_named_like_a_base_wins_as_written(tmp_path: Path) -> None:
    """A YAML of the app's config dir (before ours on the search path) named like a base: composed as written, no
    longer merged over our base as a schema (with Hydra's deprecation warning, or an error for a key of its own)."""
    (tmp_path / "base" / "torch" / "optim").mkdir(parents=True)
    (tmp_path / "base" / "torch" / "optim" / "SGD.yaml").write_text("_target_: torch.optim.SGD\nlr: 0.5\napp_key: 7\n")
    app = write_app(tmp_path, app="defaults:\n  - /base/torch/optim/SGD@opt\n  - _self_\n")
    assert compose_app(app, "app") == ({"opt": {"_target_": "torch.optim.SGD", "lr": 0.5, "app_key": 7}}, [])


def test_bases_also_in_hydras_global_store_compose_as_alone(app_store: ConfigStore, tmp_path: Path) -> None:
    """``register_bases()`` (its default: Hydra's global ConfigStore) in an app, as before the bases' own store:
    the same compositions, without a schema-matching warning or error."""
    app = write_app(tmp_path, preset="defaults:\n  - optimizer: sgd\n  - scheduler: cosine\n  - callbacks: default\n"
                    "  - _self_\n")
    alone = compose_app(app, "preset")
    assert alone[1] == []
    register_bases(app_store)
    assert compose_app(app, "preset") == alone


def test_an_apps_stored_config_named_like_a_preset_wins(app_store: ConfigStore, tmp_path: Path) -> None:
    @dataclass
    class AppAdamW:
        _target_: str = "torch.optim.AdamW"
        _partial_: bool = True
        lr: float = 0.25

    app_store.store(group="optimizer", name="adamw", node=AppAdamW)
    cfg, warned = compose_app(write_app(tmp_path, app="defaults:\n  - optimizer: adamw\n  - _self_\n"), "app")
    assert cfg == {"optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.25}} and warned == []


def test_a_composed_config_pickles_as_experimental_rerun_needs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _composed(write_app(tmp_path, app="defaults:\n  - optimizer: sgd\n  - _self_\n"), "app")
    blob = pickle.dumps(cfg)
    assert pickle.loads(blob) == cfg
    monkeypatch.setattr(config_bases, "_PROCESS_BASES", None)  # as in another process: the classes made anew
    again = pickle.loads(blob)
    assert again == cfg and OmegaConf.get_type(again.optimizer) is config_bases.process_bases()["torch.optim.SGD"]


@pytest.mark.slow
def test_a_submitit_job_composes_the_bases_from_the_unpickled_loader(tmp_path: Path) -> None:
    """A submitit job (the local executor: pickled as the SLURM launchers pickle it, Hydra's Singleton state and the
    launcher with its config loader) composes lit_tricks' presets from a bases' source made in the job's process:
    the bases no longer travel in the pickled global ConfigStore."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    app = write_app(tmp_path, app="defaults:\n  - optimizer: adamw\n  - scheduler: cosine\n  - _self_\n")
    (tmp_path / "app.py").write_text(
        "import json, hydra\nfrom omegaconf import OmegaConf\n"
        "@hydra.main(version_base='1.3', config_path='.', config_name='app')\n"
        "def main(cfg):\n    open('cfg.json', 'w').write(json.dumps(OmegaConf.to_container(cfg)))\n"
        "main()\n")
    proc = subprocess.run([sys.executable, str(tmp_path / "app.py"), "-m", "hydra/launcher=submitit_local",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.job.chdir=true", "optimizer.lr=0.01"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = json.loads((tmp_path / "sweep" / "0" / "cfg.json").read_text())
    assert job == OmegaConf.to_container(_composed(app, "app", ("optimizer.lr=0.01",)))
