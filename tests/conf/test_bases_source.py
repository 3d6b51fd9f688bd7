"""The base configs come from a config source of lit_tricks' own (``hydra_plugins.lit_tricks_searchpath``), not from
Hydra's global ConfigStore: Hydra deep-copies its config repository (the global store with it) for every
composition and twice for every group ``--help`` lists, which with the bases in it cost 3.6 s of a 3.9 s ``--help``.
The oracle for the configs: the same compositions with the bases in the global ConfigStore, as before."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.sources_registry import SourcesRegistry
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lit_tricks_searchpath import LitTricksBasesSource, LitTricksSearchPathPlugin
from lit_tricks.config_bases import BASES, bases_store, register_bases
from tests.conf.effective import CONF

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]) -> dict[str, Any]:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def global_store_without_bases(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConfigStore]:
    """Hydra's global ConfigStore as an app has it (Hydra's own configs), without anything lit_tricks stored."""
    store = copy.copy(ConfigStore.instance())
    store.repo = {k: v for k, v in ConfigStore.instance().repo.items() if k != "base"}
    monkeypatch.setitem(Singleton._instances, ConfigStore, store)
    yield store


def test_compositions_equal_those_with_the_bases_in_hydras_global_store(
        global_store_without_bases: ConfigStore, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [[], *([f"experiment={e}"] for e in EXPERIMENTS)]
    ours = [_compose(r) for r in runs]
    assert "base" not in global_store_without_bases.repo  # composing stored nothing in Hydra's store

    def before(self: Any, search_path: ConfigSearchPath) -> None:  # the plugin as it was: pkg:// only
        search_path.append(provider="lit_tricks", path="pkg://lit_tricks.conf")

    for plugin in Plugins.instance().discover(SearchPathPlugin):  # Hydra loads its own copy of the module
        if plugin.__name__ == LitTricksSearchPathPlugin.__name__:
            monkeypatch.setattr(plugin, "manipulate_search_path", before)
    register_bases(global_store_without_bases)
    assert [_compose(r) for r in runs] == ours


def test_a_copy_of_the_source_shares_the_bases_and_a_load_copies_the_node() -> None:
    Plugins.instance()  # scans hydra_plugins: Hydra's own load of the module registers the source's scheme
    registered = SourcesRegistry.instance().resolve(LitTricksBasesSource.scheme())
    source = registered("lit_tricks", "lit-tricks-bases://lit_tricks.config_bases")
    for twin in (copy.deepcopy(source), pickle.loads(pickle.dumps(source))):
        assert twin.store is source.store is bases_store() and (twin.provider, twin.path) == (source.provider,
                                                                                             source.path)
    assert len(pickle.dumps(source)) < 500  # a launcher's job pickles the source, not the bases
    first = source.load_config("base/torch/optim/SGD")
    assert isinstance(first.config, DictConfig) and first.config._target_ == "torch.optim.SGD"
    first.config.lr = 123.0  # a composition edits the node it loaded ...
    assert source.load_config("base/torch/optim/SGD").config.lr != 123.0  # ... not the stored one
    assert source.is_group("base/torch/optim") and source.is_config("base/torch/optim/SGD")
    assert not source.is_config("base/torch/optim/NoSuchOptimizer") and not source.exists("nothing/here")
    assert "SGD" in source.list("base/torch/optim", None)
    assert len([p for p in BASES if p.startswith("torch.optim.")]) == len(source.list("base/torch/optim", None))


def test_listing_a_groups_options_copies_none_of_the_bases(
        global_store_without_bases: ConfigStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``--help`` does per group: the DictConfigs deep-copied do not grow with the bases (before: every base's
    node, ~15,000 node copies per group)."""
    copies = []
    real = DictConfig.__deepcopy__
    monkeypatch.setattr(DictConfig, "__deepcopy__", lambda self, memo: (copies.append(1), real(self, memo))[1])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            copies.clear()
            copy.deepcopy(global_store_without_bases)
            hydras_own = len(copies)  # Hydra's own configs (and their nested nodes)
            copies.clear()
            assert "sgd" in loader.get_group_options("optimizer")
            per_group = len(copies)
            assert "SGD" in loader.get_group_options("base/torch/optim")
    finally:
        GlobalHydra.instance().clear()
    assert per_group == hydras_own and len(copies) == 2 * hydras_own, (per_group, hydras_own, len(copies))

