"""What a failed job of a Hydra multirun hands back to its sweeper so that the sweep goes on."""

from __future__ import annotations

import math

__all__ = ["sweep_failure_value", "sweeper_target"]


def sweeper_target() -> str | None:
    """``hydra.sweeper._target_`` of the running Hydra app, or None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    target = HydraConfig.get().sweeper.get("_target_")
    return None if target is None else str(target)


def sweep_failure_value(err: BaseException) -> float:
    """Return nan for a failed job, or re-raise ``err`` where the sweeper cannot take nan.

    Hydra's basic sweeper stops the whole sweep when a job raises, so a failed job returns nan. The Optuna sweeper
    (hydra-optuna-sweeper 1.3 with optuna 2.10) crashes on nan ("Values cannot be specified when state is FAIL")
    but records a job that raises as a failed trial and goes on (with ``max_failure_rate`` high enough, as in
    ``conf/hparams_search/``), so there the error is re-raised.
    """
    target = sweeper_target() or ""
    if "optuna" in target.lower():
        raise err
    return math.nan
