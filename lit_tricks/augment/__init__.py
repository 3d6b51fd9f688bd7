"""Augmentation: per-sample torchvision.transforms.v2 pipelines from YAML, batch MixUp/CutMix, flip TTA."""

from lit_tricks.augment.batch import MIX_KINDS, BatchMix, batch_mix
from lit_tricks.augment.pipeline import STEPS, Pipeline, RandomJPEG, make_step
from lit_tricks.augment.tta import tta_flip

__all__ = ["MIX_KINDS", "STEPS", "BatchMix", "Pipeline", "RandomJPEG", "batch_mix", "make_step", "tta_flip"]
