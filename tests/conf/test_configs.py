"""Every YAML under conf/ composes; every `_target_` node's keys match its target's signature; CPU-runnable nodes
instantiate; every experiment runs with trainer.fast_dev_run=true."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
# Groups composed through train.yaml (hydra/, paths/ and hparams_search/ have their own tests).
GROUPS = ["data", "model", "module", "optimizer", "scheduler", "augment", "callbacks", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[
            f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data",
            *overrides,
        ])


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from target_nodes(item, f"{path}[{i}]")


def assert_keys_match_signature(path: str, node: DictConfig) -> None:
    target = get_object(node._target_)
    fn = target.__init__ if inspect.isclass(target) else target
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in node if not str(k).startswith("_") and k not in params]
    assert not unknown, f"{path}: {node._target_} does not accept {unknown}"


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_matches_signature(tmp_path: Path, group: str, option: str) -> None:
    cfg = compose_train(tmp_path, [f"{group}={option}"])
    node = cfg.get(group)
    for path, sub in target_nodes(node, group):
        assert_keys_match_signature(path, sub)


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_partials_build_an_optimizer(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, [f"optimizer={option}"])
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options_instantiate(tmp_path: Path, option: str) -> None:
    import lightning.pytorch as pl

    cfg = compose_train(tmp_path, [f"callbacks={option}"])
    for value in (cfg.callbacks or {}).values():
        if value is not None:
            assert isinstance(instantiate(value), pl.Callback)


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_instantiate(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, [f"logger={option}"])
    for value in (cfg.logger or {}).values():
        logger = instantiate(value)
        assert hasattr(logger, "log_metrics")


def test_train_config_resolves(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict) and resolved["monitor"] == "val/loss"
