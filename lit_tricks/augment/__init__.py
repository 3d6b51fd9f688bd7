"""Augmentation: per-sample torchvision.transforms.v2 pipelines from YAML, 1-D signal pipelines (MNIST-1D), batch
MixUp/CutMix, flip TTA."""

from lit_tricks.augment.batch import MIX_KINDS, BatchMix, batch_mix
from lit_tricks.augment.pipeline import STEPS, Pipeline, RandomJPEG, make_step
from lit_tricks.augment.signal import SIGNAL_STEPS, SignalPipeline
from lit_tricks.augment.tta import tta_flip

__all__ = [
    "MIX_KINDS", "SIGNAL_STEPS", "STEPS", "BatchMix", "Pipeline", "RandomJPEG", "SignalPipeline", "batch_mix",
    "make_step", "tta_flip",
]
