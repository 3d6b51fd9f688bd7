"""Hydra plugin: puts lit_tricks' config groups (the YAMLs of ``lit_tricks.conf``) on every Hydra app's search path.

After ``pip install lit_tricks`` any ``@hydra.main`` app can say ``defaults: [optimizer: adamw, scheduler: cosine]``
or ``python my_app.py +callbacks=ema`` and get lit_tricks' YAMLs; the app's own configs win on name clashes: a YAML
of its config directory (earlier on the search path), and a config it stores in Hydra's ConfigStore (e.g. hydra-zen's
``store(group="optimizer", name="adamw")``), which Hydra reads last: lit_tricks' sources do not claim a config of a
name the app stored (``lit-tricks-conf://`` serves the YAMLs as ``pkg://`` would, but for that). Before, such an app
failed to compose (Hydra merged its stored node under lit_tricks' YAML as a schema).
The presets start from base configs generated from the code's signatures (``base/...``, see
:mod:`lit_tricks.config_bases`), which a config source of this package serves (``lit-tricks-bases://``) from a
ConfigStore of their own, so that Hydra's copies of its config repository (one per composition, two per group that
``--help`` lists) do not copy them.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.importlib_resources_config_source import ImportlibResourcesConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

__all__ = ["LitTricksBasesSource", "LitTricksConfSource", "LitTricksSearchPathPlugin"]

BASES_PATH = "lit-tricks-bases://lit_tricks.config_bases"
CONF_PATH = "lit-tricks-conf://lit_tricks.conf"


def stored_by_app(config_name: str) -> bool:
    """Whether the app stored a config named ``config_name`` (``group/name.yaml``) in Hydra's global ConfigStore."""
    return ConfigStore.instance().get_type(config_name) == ObjectType.CONFIG


class LitTricksSearchPathPlugin(SearchPathPlugin):
    """Append lit_tricks' packaged ``conf/`` and its base configs to the config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="lit_tricks", path=CONF_PATH)
        search_path.append(provider="lit_tricks", path=BASES_PATH)


class LitTricksConfSource(ImportlibResourcesConfigSource):
    """lit_tricks' packaged YAMLs, read as ``pkg://lit_tricks.conf`` reads them, except a config of a name the app
    stored in Hydra's ConfigStore: not claimed, so Hydra's ``structured://`` source serves the app's as it is."""

    @staticmethod
    def scheme() -> str:
        return "lit-tricks-conf"

    def is_config(self, config_path: str) -> bool:
        return super().is_config(config_path) and not stored_by_app(self._normalize_file_name(config_path))


class LitTricksBasesSource(ConfigSource):
    """The ``base/...`` configs of :func:`lit_tricks.config_bases.bases_store`, read as Hydra's structured config
    source reads its ConfigStore. A copy (Hydra deep-copies its repository) or an unpickled source (a launcher's
    job) is a new source on the process's store: its nodes are never changed (``load`` returns a copy)."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        from lit_tricks.config_bases import bases_store

        self.store: ConfigStore = bases_store()

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return type(self), (self.provider, f"{self.scheme()}://{self.path}")

    @staticmethod
    def scheme() -> str:
        return "lit-tricks-bases"

    def load_config(self, config_path: str) -> ConfigResult:
        node = self.store.load(config_path=self._normalize_file_name(config_path))
        return ConfigResult(config=node.node, path=f"{self.scheme()}://{self.path}",
                            provider=node.provider or self.provider, header={"package": node.package})

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return self.store.get_type(config_path.rstrip("/")) == ObjectType.GROUP

    def is_config(self, config_path: str) -> bool:
        """A base of ours, unless the app stored a config of that name in Hydra's global ConfigStore: the app's own
        config wins (Hydra's ``structured://``, last on the search path, serves it), and it is not merged under ours
        as a schema ("validated against ConfigStore schema with the same name"), which fails for a typed node."""
        name = self._normalize_file_name(config_path.rstrip("/"))
        return self.store.get_type(name) == ObjectType.CONFIG and not stored_by_app(name)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        found: list[str] = []
        for name in self.store.list(config_path):
            self._list_add_result(files=found, file_path=f"{config_path}/{name}", file_name=name,
                                  results_filter=results_filter)
        return sorted(set(found))
