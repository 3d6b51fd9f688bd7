"""The task side of TrickModule: outputs (with test-time augmentation), the data loss, and the validation, test and
predict steps with their metrics, computed once per weight variant (:mod:`lit_tricks.weight_variants`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lit_tricks.augment.tta import tta_flip
from lit_tricks.functional.losses import binned_expected_value, binned_point
from lit_tricks.modules.tasks import is_regression_output, task_loss
from lit_tricks.weight_variants import WeightVariants

__all__ = ["TaskSteps"]


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
    tta: bool

    def forward(self, x: Tensor) -> Tensor:
        """Outputs on raw inputs: ``model(preprocess(x))``."""
        return self.model(self.preprocess(x))  # type: ignore[no-any-return]

    def _outputs(self, x: Tensor, tta: bool) -> Tensor:
        """Outputs, or with ``tta`` the flip-averaged ones (lit_tricks.augment.tta): log of the mean probabilities,
        or the mean output for regression."""
        out = self(x)
        if not tta:
            return out
        if self._is_regression_output(out):
            return tta_flip(self, x, probabilities=False)
        return torch.log(tta_flip(self, x))

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
        out = self._outputs(x, tta=self.tta and stage == "test")
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
        out = self._outputs(x, tta=self.tta)
        if self.loss_name == "binned":
            assert self.bin_edges is not None
            return {"value": binned_point(out, self.bin_edges, self.binned_point),
                    "mean": binned_expected_value(out, self.bin_edges), "probs": out.softmax(-1)}
        if self._is_regression_output(out):
            return out
        return out.softmax(-1)
