"""Tiny models, data and recorders shared by the matrix cells (all CPU, a fit takes well under a second)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from tests.helpers.tiny import BlobsDataModule, TinyClassifier, make_blobs, tiny_trainer

__all__ = [
    "BlobsDataModule", "IterableBlobs", "ManualClassifier", "MultiValClassifier", "ScriptedMetric", "StepRecorder",
    "TiedNet", "TinyClassifier", "TwoOptimizerClassifier", "fit", "float_params", "tied_classifier", "tiny_trainer",
]


class TiedNet(nn.Module):
    """8 -> 8 -> 8 -> 3 with ``dec.weight is enc.weight`` and one BatchNorm reachable under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight  # tied parameter
        self.bn = nn.BatchNorm1d(8)
        self.alias = nn.ModuleDict({"bn": self.bn})  # shared buffers: bn.running_mean is alias.bn.running_mean
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.enc(x)))
        return self.head(torch.relu(self.alias["bn"](self.dec(h))))


def tied_classifier(lr: float = 0.1) -> TinyClassifier:
    model = TinyClassifier(lr=lr)
    model.net = TiedNet()
    return model


class ManualClassifier(TinyClassifier):
    """Manual optimization, one optimizer."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss.detach()


class TwoOptimizerClassifier(TinyClassifier):
    """Manual optimization with two optimizers: SGD on the first layer, Adam on the rest (both step each batch)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.automatic_optimization = False

    def first_params(self) -> list[nn.Parameter]:
        return list(self.net[0].parameters())

    def other_params(self) -> list[nn.Parameter]:
        first = {id(p) for p in self.first_params()}
        return [p for p in self.parameters() if id(p) not in first]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt_a, opt_b = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()
        return loss.detach()

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.first_params(), lr=self.hparams.lr),
                torch.optim.Adam(self.other_params(), lr=1e-2)]


class MultiValClassifier(TinyClassifier):
    """Two validation loaders; logs ``val/loss`` per loader (Lightning suffixes ``/dataloader_idx_N``)."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))


class ScriptedMetric(TinyClassifier):
    """Logs ``val/score`` = ``scores[epoch]`` at each validation (``by_epoch=False``: ``scores[k]`` at the k-th), or
    ``train/score`` at each train epoch end (``train_only``)."""

    def __init__(self, scores: list[float], train_only: bool = False, by_epoch: bool = True, lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.scores, self.train_only, self.by_epoch, self.calls = list(scores), train_only, by_epoch, 0

    def _next(self) -> None:
        k = self.current_epoch if self.by_epoch else self.calls
        value = self.scores[min(k, len(self.scores) - 1)]
        self.calls += 1
        self.log("val/score" if not self.train_only else "train/score", value)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and not self.train_only:
            self._next()

    def on_train_epoch_end(self) -> None:
        if self.train_only:
            self._next()


class IterableBlobs(IterableDataset):
    """The blobs as an IterableDataset (no ``__len__``): Lightning cannot count the batches of an epoch."""

    def __init__(self, n: int = 128) -> None:
        self.data = make_blobs(n)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from zip(*self.data.tensors)


def iterable_loader(n: int = 128, batch_size: int = 32) -> DataLoader:
    return DataLoader(IterableBlobs(n), batch_size=batch_size)


class StepRecorder(Callback):
    """Records, after every optimizer step (``global_step`` changed), the float parameters and the lrs, and every
    batch's training loss (as ``training_step`` returned it, before Lightning's accumulation normalization)."""

    def __init__(self) -> None:
        self.params: list[dict[str, Tensor]] = []  # after step k+1 at index k
        self.lrs: list[list[float]] = []  # lr used by optimizer step k (read just before it)
        self.steps: list[int] = []
        self.grads: list[dict[str, Tensor]] = []  # gradients as the optimizer saw them (after clipping callbacks)
        self._last = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = trainer.global_step
        self.start = float_params(pl_module)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                           if p.grad is not None})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self.steps.append(trainer.global_step)
            self.params.append(float_params(pl_module))


def float_params(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.is_floating_point()}


def fit(tmp_path: Any, model: pl.LightningModule | Callable[[], pl.LightningModule], callbacks: list[Callback],
        datamodule: Any = None, seed: int = 0, ckpt_path: str | None = None, **trainer_kwargs: Any) -> pl.Trainer:
    """Seeded fit of ``model`` (or of ``model()``, built after seeding) on the blobs (or ``datamodule``),
    checkpointing off unless asked."""
    pl.seed_everything(seed, verbose=False)
    if not isinstance(model, pl.LightningModule):
        model = model()
    kwargs: dict[str, Any] = dict(enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=2)
    kwargs.update(trainer_kwargs)
    trainer = tiny_trainer(tmp_path, callbacks=callbacks, **kwargs)
    trainer.fit(model, datamodule=datamodule if datamodule is not None else BlobsDataModule(n=128),
                ckpt_path=ckpt_path)
    return trainer
