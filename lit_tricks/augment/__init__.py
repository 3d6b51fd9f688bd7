"""Augmentation: per-sample torchvision.transforms.v2 pipelines from YAML, 1-D signal pipelines (MNIST-1D), batch
MixUp/CutMix, flip and shift TTA."""

from lit_tricks.augment.batch import MIX_KINDS, BatchMix, batch_mix
from lit_tricks.augment.pipeline import STEPS, Pipeline, RandomJPEG, make_step
from lit_tricks.augment.signal import SIGNAL_STEPS, SignalPipeline
from lit_tricks.augment.tta import TTA_MODES, parse_tta, tta_flip, tta_shift

__all__ = [
    "MIX_KINDS", "SIGNAL_STEPS", "STEPS", "TTA_MODES", "BatchMix", "Pipeline", "RandomJPEG", "SignalPipeline",
    "batch_mix", "make_step", "parse_tta", "tta_flip", "tta_shift",
]
