"""Which checkpoint file reproduces which number of a run (the record's ``reproduced_by``), and loading it back.

A number is reproduced by a file when loading that file's weights and evaluating gives the number: only
evaluation metrics (``val/*``, ``test/*``) can be; training statistics (``train/loss``, ``grad/*``, ``lr-*``) name
no file. Which weights produced an evaluation metric comes from the module's
:class:`~lit_tricks.weight_variants.WeightVariants` (``val/acc_ema`` was computed inside the ``ema`` variant) and
from the callbacks (:func:`lit_tricks.callback_protocols.evaluated_variant`): with
``EMAWeights(evaluate_with="ema")`` and no ``validate_both`` the un-suffixed metrics are the EMA's too. A variant's
numbers live in the file beside a checkpoint that its callback names
(:func:`lit_tricks.callback_protocols.variant_checkpoint`: the EMA twin, path from
:func:`lit_tricks.fault.ema_checkpoint.ema_checkpoint_path`); without one (``save_ema_checkpoint=false``) no file
reproduces them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["checkpoint_files", "is_evaluation_metric", "load_run_module", "reproduced_by", "weights_of"]

#: Metric name prefixes of evaluation loops (``val/acc``, ``val_loss``, ``test/acc``).
EVALUATION_PREFIXES = ("val", "valid", "validation", "test")


def is_evaluation_metric(name: str) -> bool:
    """Whether ``name`` was logged by a validation or test loop (by its prefix, e.g. ``val/`` or ``test/``)."""
    head = name.split("/", 1)[0] if "/" in name else name.split("_", 1)[0]
    return head in EVALUATION_PREFIXES


def weights_of(metric: str, trainer: Any, module: Any) -> str:
    """The weights an evaluation metric was computed with: ``"raw"`` (the trained weights) or a variant's name
    (``"ema"``): the module's variant that logged it, else the variant the callbacks evaluate."""
    from lit_tricks.callback_protocols import evaluated_variant
    from lit_tricks.weight_variants import weight_variants_of

    variants = weight_variants_of(module)
    variant = variants.variant_of(metric) if variants is not None else None
    return variant or evaluated_variant(trainer.callbacks) or "raw"


def checkpoint_files(trainer: Any, monitor: str) -> tuple[dict[str, str | None], float | None]:
    """(checkpoint files of the run: ``best``, ``best_ema``, ``last``, ``last_ema``; best score of the
    ModelCheckpoint watching ``monitor``). A twin is named only when its file exists."""
    import math

    from lit_tricks.callback_protocols import variant_checkpoint

    best, last, score = None, None, None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) == monitor and getattr(cb, "best_model_path", ""):
            best = best or str(cb.best_model_path)
            value = getattr(cb, "best_model_score", None)
            if score is None and value is not None and math.isfinite(float(value)):
                score = float(value)
        last_path = getattr(cb, "last_model_path", "") or (
            getattr(cb, "best_model_path", "") if getattr(cb, "monitor", None) is None else "")
        last = last or last_path or None
    if best is None:  # no ModelCheckpoint on the monitor: Lightning's first checkpoint callback
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None

    def twin(path: str | None) -> str | None:
        return variant_checkpoint(trainer.callbacks, path)

    return {"best": best, "best_ema": twin(best), "last": last, "last_ema": twin(last)}, score


def reproduced_by(metrics: Mapping[str, float], trainer: Any, module: Any, files: Mapping[str, str | None],
                  tested: set[str]) -> dict[str, str | None]:
    """Metric name -> the file whose weights give it (None: no file can). ``tested``: the metrics of the test of
    the best checkpoint; the other evaluation metrics are the last epoch's (the last checkpoint)."""
    out: dict[str, str | None] = {}
    for name in metrics:
        weights = weights_of(name, trainer, module) if is_evaluation_metric(name) else None
        kind = "best" if name in tested else "last"
        out[name] = None if weights is None else files.get(kind if weights == "raw" else f"{kind}_{weights}")
    return out


def load_run_module(run_dir: str | os.PathLike[str], metric: str = "objective") -> tuple[Any, Any]:
    """(LightningModule, DataModule) of a finished run, the module holding the weights that reproduce ``metric``
    of its record (``reproduced_by``; default the objective).

    Rebuilt from the run's ``config_resolved.yaml`` (data first: the model's input size and the preprocessing
    buffers come from it), then the weights of the named file. Raises ``ValueError`` when no file reproduces it.
    """
    import torch
    from omegaconf import DictConfig, OmegaConf

    from lit_tricks.builders import build_datamodule, build_model, build_module
    from lit_tricks.records import read_record

    run = Path(run_dir)
    record = read_record(run / "metrics.json")
    path = (record.get("reproduced_by") or {}).get(metric)
    if metric == "objective" and not path:
        path = record.get("best_ckpt")
    if not isinstance(path, str) or not path or not Path(path).is_file():
        raise ValueError(f"metric={metric!r}: no checkpoint file of {run} reproduces it (reproduced_by: {path!r})")
    cfg = OmegaConf.load(run / "config_resolved.yaml")
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{run / 'config_resolved.yaml'}: not a config mapping")
    dm = build_datamodule(cfg)
    module = build_module(cfg, build_model(cfg, dm), dm)
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state))
    return module, dm
