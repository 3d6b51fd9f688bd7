"""One source of truth per argument: presets start from signature-generated bases and set only what they change.

- every key a group preset sets on a constructor's node carries a one-line reason (a comment on its line or on the
  line just above), so a default restated without a word fails;
- every constructor node shows every argument of its signature (the base's), so each knob is visible and
  overridable without ``+``;
- every ``_target_`` names its object from its package's ``__init__``, so moving a file never breaks a saved config.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_tricks.config_bases import BASES, EXCLUDE
from tests.conf.effective import CONF, GROUPS, composed
from tests.conf.test_configs import options, target_nodes

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def set_keys(text: str) -> Iterator[tuple[str, bool]]:
    """(dotted key path, has a reason) of every leaf key a YAML file sets; ``defaults`` and containers skipped.

    A reason is a comment on the key's line or a comment line right above it at the same indentation.
    """
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m["key"]])
        rest = m["rest"]
        value = rest.split(" #", 1)[0].strip()
        following = next((x for x in lines[i + 1:] if x.strip()), "")
        if not value and not following.lstrip().startswith("-"):  # a mapping: its keys are checked
            stack.append((indent, m["key"]))
            continue
        if path.split(".")[0] == "defaults":
            continue
        above = lines[i - 1] if i else ""
        has_reason = " #" in rest or (above.strip().startswith("#") and above.index("#") == indent)
        yield path, has_reason


def test_set_keys_reads_reasons() -> None:
    text = ("defaults:\n  - x\n_self_: 1\nema:\n  decay: 0.9  # why\n  # why\n  warmup: true\n  start: 0\n"
            "steps:\n  - a\n")
    assert dict(set_keys(text)) == {"_self_": False, "ema.decay": True, "ema.warmup": True, "ema.start": False,
                                    "steps": False}


def _parent(cfg: DictConfig, path: str) -> tuple[Any, str]:
    parent, _, key = path.rpartition(".")
    return (OmegaConf.select(cfg, parent) if parent else cfg), key


PRESETS = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_key_a_preset_sets_on_a_constructor_says_why(group: str, option: str) -> None:
    text = (CONF / group / f"{option}.yaml").read_text()
    cfg = composed((f"{group}={option}",))
    root = cfg if text.startswith("# @package _global_") else cfg[group]
    silent = []
    for path, has_reason in set_keys(text):
        node, key = _parent(root, path)
        if has_reason or not isinstance(node, DictConfig) or "_target_" not in node or key.startswith("_"):
            continue
        params = inspect.signature(get_object(node._target_)).parameters
        default = params[key].default if key in params else inspect.Parameter.empty
        value = OmegaConf.to_container(node, resolve=False)[key]  # type: ignore[index]
        kind = "restates the default" if value == default else "differs from the default"
        silent.append(f"{path}={value!r} {kind} {default!r} without a comment why")
    assert not silent, f"conf/{group}/{option}.yaml: " + "; ".join(silent)


@pytest.mark.parametrize(("group", "option"), PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_argument_is_visible(group: str, option: str) -> None:
    cfg = composed((f"{group}={option}",))
    missing = []
    for path, node in target_nodes(cfg.get(group), group):
        if "[" in path:  # list items (plugins, augmentation steps) have no base
            continue
        target = str(node._target_)
        assert target in BASES, f"{path}: {target} has no base in lit_tricks.config_bases.BASES"
        params = inspect.signature(get_object(target)).parameters.values()
        wanted = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        wanted -= set(EXCLUDE.get(target, ()))
        missing += [f"{path}.{name}" for name in sorted(wanted - set(node))]
    assert not missing, f"arguments not in the composed config: {missing}"


def _all_targets(node: Any) -> Iterator[str]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield str(node._target_)
        for key in node:
            yield from _all_targets(node._get_node(key))
    elif isinstance(node, ListConfig):
        for item in node:
            yield from _all_targets(item)


def assert_public(target: str) -> None:
    module_name, _, name = target.rpartition(".")
    module = importlib.import_module(module_name)
    assert Path(str(module.__file__)).name == "__init__.py", (
        f"{target}: name it from its package ({module_name} is a module)")
    assert getattr(module, name, None) is not None, f"{target}: {module_name} does not export {name}"
    if module_name.startswith(("lit_tricks", "hydra_plugins.lit_")):
        assert name in module.__all__, f"{target}: {name} is not in {module_name}.__all__"


def test_every_composed_target_is_a_public_package_path() -> None:
    targets: set[str] = set()
    for overrides in [(f"{g}={o}",) for g, o in PRESETS] + [(f"experiment={p.stem}",)
                                                           for p in (CONF / "experiment").glob("*.yaml")]:
        targets |= set(_all_targets(composed(overrides)))
    assert len(targets) > 40
    for target in sorted(targets):
        assert_public(target)


def test_every_target_written_in_conf_is_a_public_package_path() -> None:
    written = {m for p in CONF.rglob("*.yaml") for m in re.findall(r"_target_:\s*([\w.]+)", p.read_text())}
    ours = sorted(t for t in written | set(BASES) if t.startswith(("lit_tricks.", "hydra_plugins.lit_")))
    assert ours
    for target in ours:
        assert_public(target)


def test_hydra_finds_our_plugins_by_the_targets_the_configs_write() -> None:
    # Hydra looks a sweeper/launcher up by f"{cls.__module__}.{cls.__name__}", not by importing _target_: a public
    # package path the plugin registry does not know fails every sweep with "Unknown plugin class"
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.plugins import Plugins

    written = {m for p in (CONF / "hydra").rglob("*.yaml") for m in re.findall(r"_target_:\s*(hydra_plugins[\w.]+)",
                                                                              p.read_text())}
    assert {"hydra_plugins.lit_optuna_sweeper.LitOptunaSweeper", "hydra_plugins.lit_submitit_launcher.LitSlurmLauncher"
            } <= written
    known = Plugins.instance().class_name_to_class
    assert not sorted(written - set(known)), sorted(k for k in known if "lit_" in k)


def test_assert_public_refuses_a_module_path() -> None:
    with pytest.raises(AssertionError, match="name it from its package"):
        assert_public("lit_tricks.callbacks.ema.EMAWeights")
