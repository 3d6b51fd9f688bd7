"""Base configs generated from the code's signatures: every argument and its default, one source of truth.

Each target in :data:`BASES` gets a Hydra config ``base/<dotted path with />`` built by hydra-zen's
``builds(target, populate_full_signature=True)``: its ``_target_`` (the public path) and every keyword argument
with the default of the signature. A YAML preset under ``conf/`` starts from one
(``defaults: [/base/torch/optim/SGD@_here_]``) and sets only what it deliberately changes, with a comment why; a
changed code default so reaches Hydra users, and every argument stays visible in ``--cfg job`` and overridable
without ``+``. The fields are untyped (``Any``):
each component checks its own arguments (:mod:`lit_tricks.validation`), so a bad value gets the component's
one-line error, not a second rule in the config layer.

The Hydra plugin ``hydra_plugins.lit_tricks_searchpath`` puts them on the search path of every Hydra app of the
environment, from a ConfigStore of their own (:func:`bases_store`) rather than Hydra's global one: Hydra deep-copies
its config repository, the global ConfigStore with it, for every composition and twice for every config group that
``--help`` lists (hydra-zen #769), which cost ~20 ms a copy with the bases in it (``--help``: 3.6 s). Building
the bases imports every target (torch, Lightning, all of lit_tricks: seconds), so their specs (class name, field
names and defaults) are cached in a JSON file keyed by lit_tricks' version and the modification times of its sources,
the torch / Lightning / hydra-zen versions and Python's (:func:`cache_dir`); a hit rebuilds the very same dataclasses
without importing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig

__all__ = ["BASES", "EXCLUDE", "base_name", "bases_store", "cache_dir", "cached_bases", "load_preset",
           "process_bases", "register_bases"]

#: Public paths of the targets the presets start from.
BASES: tuple[str, ...] = (
    # callbacks
    "lit_tricks.callbacks.BackboneFinetuning", "lit_tricks.callbacks.CheckpointEnsemble",
    "lit_tricks.callbacks.EarlyStopping", "lit_tricks.callbacks.EMAWeights", "lit_tricks.callbacks.GradientCheck",
    "lit_tricks.callbacks.GradientClipping", "lit_tricks.callbacks.LayerStats", "lit_tricks.callbacks.LearningCurves",
    "lit_tricks.callbacks.NaNGuard", "lit_tricks.callbacks.OptunaPruning", "lit_tricks.callbacks.PostHocEMA",
    "lit_tricks.callbacks.ModelCheckpoint", "lit_tricks.callbacks.Preemption",
    "lit_tricks.callbacks.RNGState", "lit_tricks.callbacks.SanityChecks",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    # data, models, module
    "lit_tricks.data.CIFAR10DataModule", "lit_tricks.data.DigitsDataModule", "lit_tricks.data.ImageFolderDataModule",
    "lit_tricks.data.MNISTDataModule", "lit_tricks.data.MNIST1DDataModule",
    "lit_tricks.models.ConvNet1d", "lit_tricks.models.GRU1d", "lit_tricks.models.MLP", "lit_tricks.models.SmallCNN",
    "lit_tricks.models.torchvision_model", "lit_tricks.modules.TrickModule",
    # optimizers, schedules
    "torch.optim.Adagrad", "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.LBFGS", "torch.optim.RMSprop",
    "torch.optim.SGD", "lit_tricks.optim.GaussNewtonOptimizer", "lit_tricks.optim.LevenbergMarquardtOptimizer",
    "lit_tricks.optim.NewtonOptimizer",
    "lit_tricks.schedules.Schedule", "lit_tricks.schedules.ReduceOnPlateau", "lit_tricks.schedules.ConstantLR",
    "lit_tricks.schedules.CosineDecay", "lit_tricks.schedules.ExponentialDecay", "lit_tricks.schedules.LinearDecay",
    "lit_tricks.schedules.InverseSqrtDecay", "lit_tricks.schedules.InverseTimeDecay",
    "lit_tricks.schedules.MultiStepDecay", "lit_tricks.schedules.PolynomialDecay", "lit_tricks.schedules.StepDecay",
    # augmentation, trainer, loggers
    "lit_tricks.augment.Pipeline", "lit_tricks.augment.SignalPipeline", "lit_tricks.augment.batch_mix",
    "lightning.pytorch.Trainer", "lit_tricks.trainers.ddp_strategy", "lit_tricks.trainers.fsdp_strategy",
    "lit_tricks.trainers.model_parallel_strategy",
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.MLFlowLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
)

#: Arguments that the builders pass at instantiation (``lit_tricks.builders``, ``trainers.build``), so a base
#: leaves them out; a partial (optimizer, schedule) gets its first argument later too.
EXCLUDE: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.Trainer": ("callbacks", "logger"),
    "lit_tricks.modules.TrickModule": ("model", "optimizer", "scheduler", "preprocess"),
    **{f"lit_tricks.data.{n}": ("train_transform",) for n in (
        "CIFAR10DataModule", "DigitsDataModule", "ImageFolderDataModule", "MNISTDataModule", "MNIST1DDataModule")},
    **{f"lit_tricks.models.{n}": ("num_classes", "in_channels", "image_size") for n in (
        "ConvNet1d", "GRU1d", "MLP", "SmallCNN", "torchvision_model")},
    **{f"torch.optim.{n}": ("params",) for n in ("Adagrad", "Adam", "AdamW", "LBFGS", "RMSprop", "SGD")},
    **{f"lit_tricks.optim.{n}": ("params",) for n in (
        "GaussNewtonOptimizer", "LevenbergMarquardtOptimizer", "NewtonOptimizer")},
    # total_steps / steps_per_epoch come from the Trainer (lit_tricks.schedules.lr_scheduler_config)
    "lit_tricks.schedules.Schedule": ("optimizer", "total_steps", "steps_per_epoch", "last_epoch"),
    "lit_tricks.schedules.ReduceOnPlateau": ("optimizer", "total_steps", "steps_per_epoch"),
}

#: Partials: instantiated as ``functools.partial`` and completed by the module (optimizer params, the optimizer).
PARTIAL = ("torch.optim.", "lit_tricks.optim.", "lit_tricks.schedules.Schedule", "lit_tricks.schedules.ReduceOnPlateau")


def base_name(path: str) -> str:
    """The config name of ``path``'s base: ``torch.optim.SGD`` -> ``base/torch/optim/SGD``."""
    return "base/" + path.replace(".", "/")


#: target object -> the public path it was registered under (what ``_target_`` names).
_PUBLIC_PATHS: dict[Any, str] = {}


def _builds() -> Any:
    from hydra_zen import BuildsFn

    class PublicPathBuilds(BuildsFn[Any]):
        """hydra-zen's ``builds`` with the public ``_target_`` (not the defining module) and untyped fields."""

        @classmethod
        def _get_obj_path(cls, target: Any) -> str:
            return _PUBLIC_PATHS.get(target) or super()._get_obj_path(target)

        @classmethod
        def _sanitized_type(cls, type_: Any, *, primitive_only: bool = False, wrap_optional: bool = False,
                            nested: bool = False) -> Any:
            return Any

    return PublicPathBuilds.builds


def build_base(path: str) -> Any:
    """The hydra-zen dataclass of ``path``'s full signature (less :data:`EXCLUDE`)."""
    target = get_object(path)
    _PUBLIC_PATHS[target] = path
    node = _builds()(target, populate_full_signature=True, zen_exclude=EXCLUDE.get(path, ()),
                     zen_partial=True if path.startswith(PARTIAL) else None)
    node.__module__ = __name__  # pickled by reference, found again by this module's __getattr__
    return node


_REGISTERED = False


def cache_dir() -> Path:
    """Where the base specs are cached: ``$LIT_TRICKS_CACHE_DIR``, else ``$XDG_CACHE_HOME/lit_tricks``, else
    ``~/.cache/lit_tricks``."""
    if os.environ.get("LIT_TRICKS_CACHE_DIR"):
        return Path(os.environ["LIT_TRICKS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit_tricks"


def _cache_key() -> str:
    """A hash of everything the bases are built from: lit_tricks' sources (path, size, mtime), the versions of the
    packages that define targets or build them, and Python's."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256(repr(sys.version_info[:2]).encode())
    for dist in ("lit_tricks", "torch", "lightning", "hydra-zen", "hydra-core", "omegaconf"):
        try:
            digest.update(f"{dist}={version(dist)};".encode())
        except PackageNotFoundError:
            digest.update(f"{dist}=none;".encode())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        stat = source.stat()
        digest.update(f"{source.relative_to(package)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:32]


def _encode(value: Any) -> Any:
    """A default as JSON (tuples tagged); TypeError for anything else, which is then not cached."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    raise TypeError(f"uncacheable default {value!r}")


def _decode(value: Any) -> Any:
    return tuple(_decode(v) for v in value["tuple"]) if isinstance(value, dict) else value


def _spec(node: Any) -> dict[str, Any]:
    """What rebuilds ``node`` (a hydra-zen dataclass: untyped fields, plain defaults or required, ``_target_`` and
    ``_partial_`` out of ``__init__``)."""
    fields = dataclasses.fields(node)
    if any(f.type is not Any or f.default_factory is not dataclasses.MISSING for f in fields):
        raise TypeError(f"{node.__name__}: a typed field or a default factory")
    return {"name": node.__name__, "fields": [
        [f.name, None if f.default is dataclasses.MISSING else [_encode(f.default)], f.init] for f in fields]}


def _rebuild(spec: dict[str, Any]) -> Any:
    """The dataclass of ``spec``, as hydra-zen makes it (``eq`` and ``unsafe_hash``)."""
    fields = [(name, Any, dataclasses.field(init=init) if default is None
               else dataclasses.field(default=_decode(default[0]), init=init))
              for name, default, init in spec["fields"]]
    node = dataclasses.make_dataclass(spec["name"], fields, eq=True, unsafe_hash=True)
    node.__module__ = __name__  # as build_base sets it
    return node


#: cache files (one per key: sources, package versions) kept in the cache directory, the most recently used
CACHE_KEYS_KEPT = 4


def cached_bases(directory: Path | None = None) -> dict[str, Any]:
    """The base dataclass of every path in :data:`BASES`: from the cache when its key matches, else built (and the
    cache written atomically; a cache that cannot be read or written is rebuilt or skipped, never an error)."""
    key = _cache_key()
    path = (directory or cache_dir()) / f"config_bases-{key}.json"
    try:
        specs = json.loads(path.read_text())
        if specs.get("key") == key and sorted(specs["bases"]) == sorted(BASES):
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: the last of the kept keys to be evicted
            return {p: _rebuild(specs["bases"][p]) for p in BASES}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    nodes = {p: build_base(p) for p in BASES}
    try:
        text = json.dumps({"key": key, "bases": {p: _spec(n) for p, n in nodes.items()}})
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".config_bases-", delete=False) as tmp:
            tmp.write(text)
        os.replace(tmp.name, path)
        # other keys: older sources or packages, or another checkout / environment sharing the directory; the
        # most recently used ones are kept, so two checkouts used in turn do not evict each other's cache
        others = sorted((f for f in path.parent.glob("config_bases-*.json") if f != path),
                        key=lambda f: f.stat().st_mtime, reverse=True)
        for stale in others[CACHE_KEYS_KEPT - 1:]:
            stale.unlink(missing_ok=True)
    except (OSError, TypeError):
        pass
    return nodes


def register_bases(store: ConfigStore | None = None) -> None:
    """Store every base of :data:`BASES` in ``store`` (default: Hydra's global ConfigStore, once per process; the
    search-path plugin uses :func:`bases_store` instead); from the cache when valid."""
    global _REGISTERED
    if _REGISTERED and store is None:
        return
    target = store or ConfigStore.instance()
    for path, node in process_bases().items():
        group, _, name = base_name(path).rpartition("/")
        target.store(group=group, name=name, node=node, provider="lit_tricks")
    if store is None:
        _REGISTERED = True


_BASES_STORE: ConfigStore | None = None
_PROCESS_BASES: dict[str, Any] | None = None


def process_bases() -> dict[str, Any]:
    """:func:`cached_bases` once per process: every store, composed config and unpickled one uses these classes."""
    global _PROCESS_BASES
    if _PROCESS_BASES is None:
        _PROCESS_BASES = cached_bases()
    return _PROCESS_BASES


def __getattr__(name: str) -> Any:
    """A base dataclass by its class name (``Builds_SGD``): their ``__module__`` is this module, so a composed config
    typed by one pickles by reference (Hydra's ``.hydra/config.pickle``, ``--experimental-rerun``, a spawned worker)
    and unpickles in any process of the same environment."""
    if name.startswith(("Builds_", "PartialBuilds_")):
        for node in process_bases().values():
            if node.__name__ == name:
                return node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bases_store() -> ConfigStore:
    """The base configs in a ConfigStore of their own, filled on the first call (from the cache when valid).

    Not Hydra's singleton (``ConfigStore.instance()``) and not in its registry of singletons: the search-path
    plugin's config source reads it and shares it, uncopied, with the copies Hydra makes of its config repository
    (a stored node is never changed: ``ConfigStore.load`` returns a deep copy of it)."""
    global _BASES_STORE
    if _BASES_STORE is None:
        store = ConfigStore.__new__(ConfigStore)  # bypasses the Singleton metaclass: a second, private store
        store.__init__()  # type: ignore[misc]
        register_bases(store)
        _BASES_STORE = store
    return _BASES_STORE


def load_preset(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` composed alone (its base configs included), as the config of a run holds it:
    ``load_preset("scheduler", "cosine").scheduler``; a ``# @package _global_`` preset (``augment=mixup``) gives
    every node it sets. Composes with Hydra's compose API, so call it outside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = Path(__file__).resolve().parent / "conf"
    if not (conf / group / f"{name}.yaml").is_file():
        valid = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        raise ValueError(f"{group}={name!r}: no such preset; valid: {valid}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose(overrides=[f"+{group}={name}"])
    finally:
        GlobalHydra.instance().clear()
