"""LearningCurves: per-epoch train vs val curves (raw and EMA-smoothed) to PNG, and a bias/variance diagnosis."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_tricks.fault.atomic import atomic_save_figure
from lit_tricks.fault.exact_resume import run_skipped_epoch_start
from lit_tricks.fault.state_keys import cached_state_key
from lit_tricks.functional.diagnosis import Diagnosis, diagnose, ema_smooth, first_samples
from lit_tricks.validation import check_number

__all__ = ["HISTORY_KEYS", "LearningCurves", "diagnose_history", "plot_learning_curves"]

#: The per-epoch series a history holds (nan where a value was not logged that epoch).
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc")


def _last_finite(values: Sequence[float]) -> float:
    for v in reversed(values):
        if math.isfinite(v):
            return v
    return math.nan


def diagnose_history(
    history: Mapping[str, Sequence[float]],
    target_error: float | None = None,
    *,
    smoothing: float = 0.6,
    bias_tolerance: float = 0.02,
    variance_tolerance: float = 0.02,
) -> Diagnosis | None:
    """Diagnose the last EMA-smoothed epoch of a history; None when nothing comparable was logged.

    With ``train_acc`` and ``val_acc`` the errors ``1 - acc`` are compared with ``target_error``. Otherwise the
    losses are compared (variance only: the bias needs a target in loss units, pass it as ``target_error``; without
    one the training loss is taken as its own target). The training numbers come from the training epoch
    (dropout and augmentation on), so they overstate the clean training error a little.
    """
    kwargs = {"bias_tolerance": bias_tolerance, "variance_tolerance": variance_tolerance}
    tr_acc = _last_finite(ema_smooth(history.get("train_acc", []), smoothing))
    va_acc = _last_finite(ema_smooth(history.get("val_acc", []), smoothing))
    if math.isfinite(tr_acc) and math.isfinite(va_acc):
        return diagnose(1.0 - tr_acc, 1.0 - va_acc, target_error, **kwargs)
    tr = _last_finite(ema_smooth(history.get("train_loss", []), smoothing))
    va = _last_finite(ema_smooth(history.get("val_loss", []), smoothing))
    if math.isfinite(tr) and math.isfinite(va):
        return diagnose(tr, va, tr if target_error is None else target_error, **kwargs)
    return None


def plot_learning_curves(history: Mapping[str, Sequence[float]], path: str | Path, smoothing: float = 0.6,
                         title: str | None = None) -> Path:
    """Write a PNG of train vs val loss (and accuracy when logged) per epoch, raw (thin) and EMA-smoothed (bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(history.get("epoch", []))
    panels = [("loss", "train_loss", "val_loss")]
    if any(math.isfinite(v) for v in [*history.get("train_acc", []), *history.get("val_acc", [])]):
        panels.append(("accuracy", "train_acc", "val_acc"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (label, tr_key, va_key) in zip(axes[0], panels):
        for key, color, name in ((tr_key, "tab:blue", "train"), (va_key, "tab:orange", "val")):
            values = list(history.get(key, []))
            if not any(math.isfinite(v) for v in values):
                continue
            xs = epochs if len(epochs) == len(values) else list(range(len(values)))
            ax.plot(xs, values, color=color, alpha=0.3, linewidth=1, marker=".", label=f"{name} (raw)")
            ax.plot(xs, ema_smooth(values, smoothing), color=color, linewidth=2, label=f"{name} (EMA {smoothing})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


class LearningCurves(pl.Callback):
    """Record per-epoch train/val loss and accuracy; at fit end write a PNG and diagnose bias vs variance.

    The training loss is the mean of ``training_step``'s losses over the epoch (computed here, whatever the module
    logs; under gradient accumulation as returned, not Lightning's loss / ``accumulate_grad_batches``); the other
    values are read from ``trainer.callback_metrics`` under the given keys. When the module logs no
    ``train_acc_key``, the training accuracy is measured here at each epoch end on the first
    ``train_eval_samples`` training samples (eval mode, no gradients, forked RNG; 0 = off), since the bias/variance
    diagnosis compares errors. ``target_error``: the human-level / Bayes error (default 0). ``dirpath``: where the
    PNG goes (default ``trainer.log_dir``).
    Diagnosis rules: :func:`lit_tricks.functional.diagnosis.diagnose` (Ng's bias/variance analysis).
    """

    def __init__(
        self,
        target_error: float | None = None,
        smoothing: float = 0.6,
        bias_tolerance: float = 0.02,
        variance_tolerance: float = 0.02,
        val_loss_key: str = "val/loss",
        train_acc_key: str = "train/acc",
        val_acc_key: str = "val/acc",
        dirpath: str | None = None,
        filename: str = "learning_curves.png",
        plot: bool = True,
        train_eval_samples: int = 1024,
    ) -> None:
        check_number("smoothing", smoothing, 0.0, 1.0, owner="LearningCurves")
        check_number("train_eval_samples", train_eval_samples, 0, integer=True, owner="LearningCurves")
        if target_error is not None:
            check_number("target_error", target_error, 0.0, owner="LearningCurves")
        self.target_error = target_error
        self.smoothing = smoothing
        self.bias_tolerance = bias_tolerance
        self.variance_tolerance = variance_tolerance
        self.val_loss_key = val_loss_key
        self.train_acc_key = train_acc_key
        self.val_acc_key = val_acc_key
        self.dirpath = dirpath
        self.filename = filename
        self.plot = plot
        self.train_eval_samples = train_eval_samples
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
        self.diagnosis: Diagnosis | None = None
        self.png_path: Path | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._val: dict[str, float] = {}
        self._epoch = -1
        self._pending: dict[str, Any] | None = None  # an epoch in progress restored from a checkpoint

    @property
    def state_key(self) -> str:
        return cached_state_key(self, val_loss_key=self.val_loss_key, val_acc_key=self.val_acc_key,
                                        filename=self.filename)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and int(pending["epoch"]) == trainer.current_epoch:
            # resumed inside that epoch (Lightning calls no on_train_epoch_start for it): keep accumulating
            self._epoch = trainer.current_epoch
            self._loss_sum = torch.tensor(pending["loss_sum"]) if pending["loss_count"] else None
            self._loss_count = int(pending["loss_count"])
            self._val = {k: float(pending[k]) for k in ("val_loss", "val_acc", "train_acc") if k in pending}
        elif pending is not None:  # taken at that epoch's last batch: Lightning goes on with the next epoch
            self._append_row(pending)
        run_skipped_epoch_start(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._loss_count, self._val = None, 0, {}
        self._epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
                # Lightning hands on the loss divided by accumulate_grad_batches (what it back-propagates)
                loss = loss * trainer.accumulate_grad_batches
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1

    @staticmethod
    def _metric(trainer: pl.Trainer, key: str) -> float:
        value = trainer.callback_metrics.get(key)
        if value is None:
            value = trainer.callback_metrics.get(f"{key}_epoch")
        return float(value) if value is not None else math.nan

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val = {"val_loss": self._metric(trainer, self.val_loss_key),
                     "val_acc": self._metric(trainer, self.val_acc_key),
                     "train_acc": self._metric(trainer, self.train_acc_key)}

    def _train_loss(self) -> float:
        count = self._loss_count
        return float(self._loss_sum) / count if self._loss_sum is not None and count else math.nan

    def _append_row(self, row: Mapping[str, Any]) -> None:
        for key in HISTORY_KEYS:
            self.history[key].append(float(row.get(key, math.nan)))

    def _measure_train_acc(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        loader = trainer.train_dataloader
        if isinstance(loader, Mapping):
            loader = next(iter(loader.values()), None)
        elif isinstance(loader, list | tuple):
            loader = loader[0] if loader else None
        if self.train_eval_samples == 0 or loader is None:
            return math.nan
        was_training = pl_module.training
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                x, y = first_samples(loader, self.train_eval_samples)[:2]
                if not (isinstance(y, torch.Tensor) and y.dtype in (torch.int64, torch.int32) and y.dim() == 1):
                    return math.nan  # not class labels (regression, soft labels): no accuracy
                pl_module.eval()
                x = x.to(pl_module.device) if isinstance(x, torch.Tensor) else x
                correct = (pl_module(x).argmax(-1).cpu() == y).float().mean()
            return float(correct)
        finally:
            pl_module.train(was_training)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_acc = self._metric(trainer, self.train_acc_key)
        if math.isnan(train_acc):
            train_acc = self._measure_train_acc(trainer, pl_module)
        self._append_row({"epoch": float(trainer.current_epoch), "train_loss": self._train_loss(),
                          **self._val, "train_acc": train_acc})
        self._epoch = -1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.diagnosis = diagnose_history(self.history, self.target_error, smoothing=self.smoothing,
                                          bias_tolerance=self.bias_tolerance,
                                          variance_tolerance=self.variance_tolerance)
        if self.diagnosis is not None:
            rank_zero_info(f"LearningCurves: {self.diagnosis.message()}")
        if self.plot and trainer.is_global_zero and self.history["epoch"]:
            root = self.dirpath or trainer.log_dir or trainer.default_root_dir
            title = self.diagnosis.kind.replace("_", " ") if self.diagnosis else None
            self.png_path = plot_learning_curves(self.history, Path(root) / self.filename, self.smoothing, title)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"version": 1, "history": {k: list(v) for k, v in self.history.items()}}
        if self._epoch >= 0:  # saved inside an epoch (or at its validation end): keep what it has accumulated
            state["pending"] = {"epoch": float(self._epoch), "train_loss": self._train_loss(),
                                "loss_sum": float(self._loss_sum) if self._loss_sum is not None else 0.0,
                                "loss_count": self._loss_count, **self._val}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history", {})
        self.history = {k: [float(v) for v in history.get(k, [])] for k in HISTORY_KEYS}
        pending = state_dict.get("pending")
        self._pending = dict(pending) if pending else None
