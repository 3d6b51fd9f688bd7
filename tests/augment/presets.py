"""Load conf/augment presets: the per-sample pipeline and (for mixup/cutmix) the module's batch_augment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from lit_tricks.config_bases import load_preset as compose_preset

CONF = Path(__file__).resolve().parents[2] / "conf" / "augment"
# Image presets (raw [0, 1] images); the mnist1d* presets are 1-D signal pipelines, tested in test_signal.py.
PRESETS = sorted(p.stem for p in CONF.glob("*.yaml") if not p.stem.startswith("mnist1d"))
SIGNAL_PRESETS = sorted(p.stem for p in CONF.glob("mnist1d*.yaml"))


def load_preset(name: str) -> tuple[Any, Any]:
    """``(pipeline or None, batch_augment or None)`` of ``conf/augment/<name>.yaml``."""
    cfg = compose_preset("augment", name)
    pipe_cfg, batch_cfg = cfg.get("augment"), OmegaConf.select(cfg, "module.batch_augment")
    pipe = instantiate(pipe_cfg) if pipe_cfg is not None and "_target_" in pipe_cfg else None
    batch = instantiate(batch_cfg) if batch_cfg is not None else None
    return pipe, batch
