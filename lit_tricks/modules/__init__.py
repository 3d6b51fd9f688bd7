"""LightningModules (TrickModule) and model surgery (norm swap, dropout, init, BatchNorm recalibration).

``TrickModule`` is imported on first access (PEP 562): importing ``lightning.pytorch`` imports torchmetrics, which
imports matplotlib when it is installed, and the surgery functions need none of that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lit_tricks.functional.param_groups import describe_param_groups
from lit_tricks.modules.noise import (
    AdditiveWeightNoiseLinear,
    DropConnectLinear,
    GaussianDropout,
    NoisyConv1d,
    NoisyConv2d,
    NoisyConv3d,
    WeightNoiseLinear,
)
from lit_tricks.modules.surgery import (
    BatchNormNd,
    find_head,
    init_weights,
    recalibrate_bn,
    set_dropout,
    swap_norm,
)
from lit_tricks.modules.zoneout import ZoneoutGRU

if TYPE_CHECKING:
    from lit_tricks.modules.trick_module import TrickModule

__all__ = [
    "AdditiveWeightNoiseLinear",
    "BatchNormNd",
    "DropConnectLinear",
    "GaussianDropout",
    "NoisyConv1d",
    "NoisyConv2d",
    "NoisyConv3d",
    "TrickModule",
    "WeightNoiseLinear",
    "ZoneoutGRU",
    "describe_param_groups",
    "find_head",
    "init_weights",
    "recalibrate_bn",
    "set_dropout",
    "swap_norm",
]


def __getattr__(name: str) -> Any:
    if name == "TrickModule":
        from lit_tricks.modules.trick_module import TrickModule

        return TrickModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
