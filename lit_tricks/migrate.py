"""Saved run configs whose ``_target_`` names an old path: find them, name the new path, rewrite them.

A ``_target_`` names an object by its public package path (``lit_tricks.callbacks.EMAWeights``), so moving a file
inside a package never breaks a saved config. Configs saved before 0.1.0 may name a module path
(``lit_tricks.callbacks.ema.EMAWeights``) or a removed one (``lit_tricks.sweeps.ddp.ddp_strategy``);
``lit-tricks-migrate RUN_DIR`` rewrites them (:func:`migrate_run`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_tricks.fault.atomic import atomic_write_bytes

__all__ = ["MIGRATE_COMMAND", "MOVED", "migrate_run", "new_target", "old_target_problems"]

#: How a user migrates a saved run folder (named in every error about an old ``_target_``).
MIGRATE_COMMAND = "lit-tricks-migrate RUN_DIR"

#: Removed paths -> their public path (the objects no longer import from the old one).
MOVED: dict[str, str] = {
    **{f"lit_tricks.sweeps.ddp.{n}": f"lit_tricks.trainers.{n}" for n in (
        "HydraSafeDDPStrategy", "HydraSafeFSDPStrategy", "ddp_strategy", "fsdp_strategy", "scale_learning_rates",
        "build_trainer", "job_guard", "child_rank_command", "config_hash")},
    "lit_tricks.sweeps.jobs.sweep_failure_value": "lit_tricks.trainers.sweep_failure_value",
    **{f"lit_tricks.functional.atomic.{n}": f"lit_tricks.fault.atomic.{n}" for n in (
        "atomic_open", "atomic_save_figure", "atomic_torch_save", "atomic_write_bytes")},
    **{f"lit_tricks.trainers.jobs.{n}": f"lit_tricks.trainers.{n}" for n in (
        "job_guard", "child_rank_command", "config_hash", "sweep_failure_value")},
    **{f"lit_tricks.studies.{n}": f"lit_tricks.optuna_job.{n}" for n in (
        "current_trial", "build_pruner", "open_storage", "default_storage_url", "resolve_storage_url")},
    "hydra_plugins.lit_optuna_sweeper.lit_optuna_sweeper.LitOptunaSweeper":
        "hydra_plugins.lit_optuna_sweeper.LitOptunaSweeper",
}

#: The packages whose objects are named from their ``__init__`` (third-party targets are left as they are).
OURS = ("lit_tricks.", "hydra_plugins.lit_")


def _public_path(target: str) -> str | None:
    """The shortest package path exporting the same object as ``target`` (None when ``target`` does not import)."""
    module_name, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    parts = module_name.split(".")
    for i in range(2, len(parts) + 1):
        package = ".".join(parts[:i])
        try:
            if getattr(importlib.import_module(package), name, None) is obj:
                return f"{package}.{name}"
        except ImportError:  # pragma: no cover - a parent package of an importable module imports
            continue
    return target


def new_target(target: str) -> str | None:
    """The public path ``target`` should name, or None when it already does (or is not ours)."""
    if not target.startswith(OURS):
        return None
    new = MOVED.get(target) or _public_path(target)
    return new if new and new != target else None


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, value) of every ``_target_`` under ``node``."""
    if isinstance(node, DictConfig):
        for key in node:
            sub = f"{path}.{key!s}" if path else str(key)
            child = node._get_node(key)
            if key == "_target_" and isinstance(node[key], str):
                yield sub, str(node[key])
            else:
                yield from _targets(child, sub)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


def old_target_problems(cfg: DictConfig) -> list[str]:
    """One line per ``_target_`` of ``cfg`` that names a removed path (the fix named; a module path still works)."""
    return [f"{key}={target}: moved to {MOVED[target]}; migrate a saved run folder with `{MIGRATE_COMMAND}`"
            for key, target in _targets(cfg) if target in MOVED]


def _rewrite(node: Any, changes: list[str], path: str = "") -> None:
    if isinstance(node, DictConfig):
        for key in node:
            sub = f"{path}.{key!s}" if path else str(key)
            value = node._get_node(key)
            if key == "_target_" and isinstance(node[key], str) and (new := new_target(str(node[key]))):
                changes.append(f"{sub}: {node[key]} -> {new}")
                node[key] = new
            else:
                _rewrite(value, changes, sub)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _rewrite(item, changes, f"{path}[{i}]")


def migrate_run(run_dir: str | Path, *, dry_run: bool = False) -> list[str]:
    """Rewrite every old ``_target_`` in ``run_dir``'s saved configs to its public path; returns what changed.

    Reads ``.hydra/config.yaml`` and ``config_resolved.yaml`` (those present; fold folders ``fold*/`` too) and writes
    each changed file atomically. Comments and key order are kept by OmegaConf as it loads them (YAML comments are
    not: Hydra writes none there).
    """
    root = Path(run_dir)
    files = [p for pattern in (".hydra/config.yaml", "config_resolved.yaml", "fold*/config_resolved.yaml")
             for p in sorted(root.glob(pattern))]
    if not files:
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no .hydra/config.yaml or config_resolved.yaml there")
    changes: list[str] = []
    for path in files:
        cfg = OmegaConf.load(path)
        mine: list[str] = []
        _rewrite(cfg, mine)
        if mine and not dry_run:
            atomic_write_bytes(OmegaConf.to_yaml(cfg).encode(), path)
        changes += [f"{path.relative_to(root)}: {c}" for c in mine]
    return changes
