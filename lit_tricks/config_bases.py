"""Base configs generated from the code's signatures: every argument and its default, one source of truth.

Each target in :data:`BASES` gets a Hydra config ``base/<dotted path with />`` built by hydra-zen's
``builds(target, populate_full_signature=True)``: its ``_target_`` (the public path) and every keyword argument
with the default of the signature. A YAML preset under ``conf/`` starts from one
(``defaults: [/base/torch/optim/SGD@_here_]``) and sets only what it deliberately changes, with a comment why; a
changed code default so reaches Hydra users, and every argument stays visible in ``--cfg job`` and overridable
without ``+``. The fields are untyped (``Any``):
each component checks its own arguments (:mod:`lit_tricks.validation`), so a bad value gets the component's
one-line error, not a second rule in the config layer.

The Hydra plugin ``hydra_plugins.lit_tricks_searchpath`` calls :func:`register_bases` before any config is composed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig

__all__ = ["BASES", "EXCLUDE", "base_name", "load_preset", "register_bases"]

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
    return _builds()(target, populate_full_signature=True, zen_exclude=EXCLUDE.get(path, ()),
                     zen_partial=True if path.startswith(PARTIAL) else None)


_REGISTERED = False


def register_bases(store: ConfigStore | None = None) -> None:
    """Store every base of :data:`BASES` in Hydra's ConfigStore (once per process)."""
    global _REGISTERED
    if _REGISTERED and store is None:
        return
    store = store or ConfigStore.instance()
    for path in BASES:
        group, _, name = base_name(path).rpartition("/")
        store.store(group=group, name=name, node=build_base(path), provider="lit_tricks")
    _REGISTERED = True


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
