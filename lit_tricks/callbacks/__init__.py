"""Lightning callbacks: they decide *when*; ``lit_tricks.functional`` decides *what*.

Each works with any LightningModule: ``Trainer(callbacks=[EMAWeights(), GradientClipping(max_norm=1.0)])``.
"""

from lit_tricks.callbacks.backbone_finetuning import BackboneFinetuning
from lit_tricks.callbacks.clipping import GradientClipping
from lit_tricks.callbacks.early_stopping import EarlyStopping
from lit_tricks.callbacks.ema import EMAWeights
from lit_tricks.callbacks.ensemble import CheckpointEnsemble
from lit_tricks.callbacks.gradient_check import GradientCheck, GradientCheckError
from lit_tricks.callbacks.layer_stats import LayerStats, LayerStatsWarning
from lit_tricks.callbacks.learning_curves import LearningCurves
from lit_tricks.callbacks.model_checkpoint import ModelCheckpoint
from lit_tricks.callbacks.nan_guard import NaNGuard, NonFiniteCheckpointError
from lit_tricks.callbacks.optuna_pruning import OptunaPruning
from lit_tricks.callbacks.posthoc_ema import PostHocEMA
from lit_tricks.callbacks.preemption import Preemption
from lit_tricks.callbacks.rng_state import RNGState
from lit_tricks.callbacks.sanity_checks import SanityCheckError, SanityChecks

__all__ = [
    "BackboneFinetuning",
    "CheckpointEnsemble",
    "EMAWeights",
    "EarlyStopping",
    "GradientCheck",
    "GradientCheckError",
    "GradientClipping",
    "LayerStats",
    "LayerStatsWarning",
    "LearningCurves",
    "ModelCheckpoint",
    "NaNGuard",
    "NonFiniteCheckpointError",
    "OptunaPruning",
    "PostHocEMA",
    "Preemption",
    "RNGState",
    "SanityCheckError",
    "SanityChecks",
]
