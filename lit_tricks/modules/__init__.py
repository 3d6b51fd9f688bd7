"""LightningModules (TrickModule) and model surgery (norm swap, dropout, init, BatchNorm recalibration)."""

from lit_tricks.functional.param_groups import describe_param_groups
from lit_tricks.modules.surgery import (
    BatchNormNd,
    DropConnectLinear,
    GaussianDropout,
    find_head,
    init_weights,
    recalibrate_bn,
    set_dropout,
    swap_norm,
)
from lit_tricks.modules.trick_module import TrickModule

__all__ = [
    "BatchNormNd",
    "DropConnectLinear",
    "GaussianDropout",
    "TrickModule",
    "describe_param_groups",
    "find_head",
    "init_weights",
    "recalibrate_bn",
    "set_dropout",
    "swap_norm",
]
