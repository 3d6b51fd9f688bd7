"""The task side of TrickModule: outputs (with test-time augmentation), the data loss and how the training loss is
logged, and the validation, test and predict steps with their metrics, computed once per weight variant
(:mod:`lit_tricks.weight_variants`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lit_tricks.augment.tta import TTAFunction
from lit_tricks.compat import log_step_value, module_trainer
from lit_tricks.compat import step_value_read as compat_step_value_read
from lit_tricks.compat.nvml import drop_futile_nvml_check
from lit_tricks.functional.losses import binned_expected_value, binned_point
from lit_tricks.modules.tasks import is_regression_output, task_loss
from lit_tricks.weight_variants import WeightVariants

__all__ = ["TRAIN_LOSS", "TaskSteps", "step_value_read"]

#: The name of the training loss: logged as ``train/loss_step`` and ``train/loss_epoch`` (and ``train/loss`` for
#: callbacks), the names of Lightning's ``self.log("train/loss", on_step=True, on_epoch=True)``.
TRAIN_LOSS = "train/loss"
_MEANS_KEY = "lit_tricks_epoch_means"


def step_value_read(trainer: pl.Trainer, names: tuple[str, ...] = (TRAIN_LOSS, f"{TRAIN_LOSS}_step")) -> bool:
    """Whether the training loss logged at this batch is read by anyone (:func:`lit_tricks.compat.step_value_read`;
    it is shown in the progress bar)."""
    return compat_step_value_read(trainer, names, prog_bar=True)


class TaskSteps(pl.LightningModule):
    """Outputs, loss and evaluation steps of a classifier or regressor ``model`` behind ``preprocess`` (the base of
    :class:`~lit_tricks.modules.trick_module.TrickModule`, which sets the attributes below)."""

    model: nn.Module
    preprocess: nn.Module
    weight_variants: WeightVariants
    metrics: nn.ModuleDict
    loss_name: str
    label_smoothing: float
    bin_edges: Tensor | None
    binned_point: str
    num_classes: int | None
    top_k: int
    tta: TTAFunction | None

    _epoch_means: dict[str, list[Any]] | None = None  # name -> [sum of value * batch size (a tensor), batch sizes]
    _means_epoch = -1  # the epoch they sum over
    _means_logged = -1  # the epoch whose means are logged

    def log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        """Log the training loss as ``self.log("train/loss", on_step=True, on_epoch=True, prog_bar=True,
        sync_dist=True)`` does (the same names and values), at a fraction of its cost: ``self.log`` runs only on
        the steps whose value is read (:func:`step_value_read`; every ``log_every_n_steps`` with the presets), or at
        the end of a batch the fit stops at or a validation follows (:func:`lit_tricks.compat.log_step_value`); the
        epoch's weighted mean sums in a tensor (no host sync) and is logged at the epoch end."""
        value = loss.detach()
        self.accumulate_epoch_mean(f"{TRAIN_LOSS}_epoch", value, batch_size)
        trainer = module_trainer(self)
        if trainer is None:  # without a Trainer, self.log only warns
            return
        read = step_value_read(trainer)
        log = functools.partial(log_step_value, self, read, on_step=True, on_epoch=False, batch_size=batch_size,
                                sync_dist=True)
        log(TRAIN_LOSS, value, logger=False)  # what callbacks read (the epoch mean after the epoch end)
        log(f"{TRAIN_LOSS}_step", value, prog_bar=True)

    def accumulate_epoch_mean(self, name: str, value: Tensor, batch_size: int) -> None:
        """Add ``value`` (a scalar tensor, mean over ``batch_size`` samples) to the epoch mean logged as ``name``
        at the epoch end (weighted by batch size and reduced over ranks, as Lightning's ``on_epoch=True``)."""
        epoch = self.current_epoch
        # a new epoch, or one whose means are logged run again (a subclass's on_train_epoch_start without super)
        if self._epoch_means is None or self._means_epoch != epoch or self._means_logged == epoch:
            self._epoch_means, self._means_epoch, self._means_logged = {}, epoch, -1
        total = self._epoch_means.get(name)
        if total is None:  # not setdefault: its default would allocate a tensor at every step
            total = self._epoch_means[name] = [torch.zeros((), dtype=value.dtype, device=value.device), 0]
        total[0] = total[0] + value * batch_size
        total[1] += batch_size

    def on_fit_start(self) -> None:
        drop_futile_nvml_check()  # on a CPU-only host, one failed dlopen less per Adam/AdamW step (on every rank)

    def _lit_tricks_log_epoch_end(self) -> None:
        """Log the epoch means (``train/loss_epoch``, ``train/loss`` for callbacks, a penalty's), once an epoch.
        lit_tricks.compat calls it when the epoch's end is reached, before the callbacks' ``on_train_epoch_end`` (a
        callback reading there sees them, as Lightning's ``on_epoch=True`` values); else ``on_train_epoch_end``."""
        if self._means_logged == self.current_epoch:
            return
        self._means_logged = self.current_epoch
        for name, (total, count) in (self._epoch_means or {}).items():
            if count and self._means_epoch == self.current_epoch:
                mean, loss = total / count, name == f"{TRAIN_LOSS}_epoch"
                self.log(name, mean, on_step=False, on_epoch=True, prog_bar=loss, batch_size=count, sync_dist=True)
                if loss:
                    self.log(TRAIN_LOSS, mean, on_epoch=True, logger=False, batch_size=count, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._lit_tricks_log_epoch_end()

    def on_train_epoch_start(self) -> None:
        """An epoch starts its means afresh, even under a number already summed (a tuner's trials, a second fit from
        epoch 0); a fit resumed mid-epoch does not call this hook and goes on with the sums of its checkpoint."""
        self._epoch_means, self._means_epoch, self._means_logged = None, self.current_epoch, -1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The epoch means in progress (a mid-epoch resume goes on summing them)."""
        means = {name: [total.detach().cpu(), count] for name, (total, count) in (self._epoch_means or {}).items()}
        checkpoint[_MEANS_KEY] = {"epoch": self._means_epoch, "means": means}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(_MEANS_KEY) or {}
        # a resumed epoch logs its means at its end, even if this module object logged that epoch's before
        self._means_epoch, self._means_logged = int(state.get("epoch", -1)), -1
        self._epoch_means = {name: [total.to(self.device), int(count)]
                             for name, (total, count) in state.get("means", {}).items()}

    def forward(self, x: Tensor) -> Tensor:
        """Outputs on raw inputs: ``model(preprocess(x))``."""
        return self.model(self.preprocess(x))  # type: ignore[no-any-return]

    def _outputs(self, x: Tensor, tta: bool) -> Tensor:
        """Outputs, or with ``tta`` the averaged ones over the copies of ``self.tta`` (lit_tricks.augment.tta): log
        of the mean probabilities, or the mean output for regression."""
        out = self(x)
        if not tta or self.tta is None:
            return out
        if self._is_regression_output(out):
            return self.tta(self, x, probabilities=False)
        return torch.log(self.tta(self, x))

    def _is_regression_output(self, out: Tensor) -> bool:
        return is_regression_output(self.loss_name, out)

    def compute_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Data loss of outputs ``out`` against targets ``y`` (indices, soft (N, K) targets, or real values)."""
        return task_loss(self.loss_name, out, y, self.label_smoothing, self.bin_edges)

    def _log_metric(self, key: str, factory: Callable[[], Any], preds: Tensor, target: Tensor,
                    **kwargs: Any) -> None:
        """Update the torchmetrics object logged as ``key`` (created on first use) and log it."""
        safe = key.replace("/", "__")
        if safe not in self.metrics:
            self.metrics[safe] = factory().to(self.device)
        metric: Any = self.metrics[safe]
        metric.update(preds, target)
        self.log(key, metric, metric_attribute=f"metrics.{safe}", **kwargs)

    def _evaluate(self, batch: Any, stage: str, variant: str | None) -> None:
        import torchmetrics.classification as tmc
        import torchmetrics.regression as tmr

        def key(metric: str) -> str:
            return metric if variant is None else self.weight_variants.metric_name(metric, variant)

        x, y = batch[0], batch[1]
        out = self._outputs(x, tta=stage == "test")
        n = x.shape[0]
        log = functools.partial(self.log, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        log(key(f"{stage}/loss"), self.compute_loss(out, y), prog_bar=stage == "val" and variant is None)
        if self.loss_name == "binned" or self._is_regression_output(out):
            if self.bin_edges is not None:
                pred = binned_point(out, self.bin_edges, self.binned_point)
            else:
                pred = out.reshape(y.shape)
            for name, cls in (("mae", tmr.MeanAbsoluteError), ("mse", tmr.MeanSquaredError)):
                self._log_metric(key(f"{stage}/{name}"), cls, pred.detach(), y.to(pred.dtype), on_step=False,
                                 on_epoch=True)
            return
        if self.num_classes is None:
            self.num_classes = int(out.shape[-1])
        classes = self.num_classes
        target = y.argmax(-1) if y.is_floating_point() and y.ndim == out.ndim else y
        self._log_metric(key(f"{stage}/acc"), lambda: tmc.MulticlassAccuracy(classes, average="micro"),
                         out.detach(), target, on_step=False, on_epoch=True,
                         prog_bar=stage == "val" and variant is None)
        if self.top_k and classes > self.top_k:
            k = self.top_k
            self._log_metric(key(f"{stage}/top{k}_acc"),
                             lambda: tmc.MulticlassAccuracy(classes, top_k=k, average="micro"), out.detach(), target,
                             on_step=False, on_epoch=True)

    def _eval_step(self, batch: Any, stage: str) -> None:
        self._evaluate(batch, stage, None)
        for name, ctx in self.weight_variants.items():
            with ctx():
                self._evaluate(batch, stage, name)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Class probabilities; for binned regression ``{"value": binned_point, "mean": expected value, "probs"}``;
        raw outputs for mse regression."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        out = self._outputs(x, tta=True)
        if self.loss_name == "binned":
            assert self.bin_edges is not None
            return {"value": binned_point(out, self.bin_edges, self.binned_point),
                    "mean": binned_expected_value(out, self.bin_edges), "probs": out.softmax(-1)}
        if self._is_regression_output(out):
            return out
        return out.softmax(-1)
