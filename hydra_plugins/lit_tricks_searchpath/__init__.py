"""Hydra plugin: puts lit_tricks' config groups (pkg://lit_tricks.conf) on every Hydra app's search path.

After ``pip install lit_tricks`` any ``@hydra.main`` app can say ``defaults: [optimizer: adamw, scheduler: cosine]``
or ``python my_app.py +callbacks=ema`` and get lit_tricks' YAMLs; the app's own configs still win on name clashes
(a YAML of its config directory; a config it stores in Hydra's ConfigStore under a base config's name, but not
yet one under a preset's name: Hydra reads its ConfigStore after lit_tricks' YAMLs).
The presets start from base configs generated from the code's signatures (``base/...``, see
:mod:`lit_tricks.config_bases`), which a config source of this package serves (``lit-tricks-bases://``) from a
ConfigStore of their own, so that Hydra's copies of its config repository (one per composition, two per group that
``--help`` lists) do not copy them.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

__all__ = ["LitTricksBasesSource", "LitTricksSearchPathPlugin"]

BASES_PATH = "lit-tricks-bases://lit_tricks.config_bases"


class LitTricksSearchPathPlugin(SearchPathPlugin):
    """Append lit_tricks' packaged ``conf/`` and its base configs to the config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="lit_tricks", path="pkg://lit_tricks.conf")
        search_path.append(provider="lit_tricks", path=BASES_PATH)


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
        return (self.store.get_type(name) == ObjectType.CONFIG
                and ConfigStore.instance().get_type(name) != ObjectType.CONFIG)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        found: list[str] = []
        for name in self.store.list(config_path):
            self._list_add_result(files=found, file_path=f"{config_path}/{name}", file_name=name,
                                  results_filter=results_filter)
        return sorted(set(found))
