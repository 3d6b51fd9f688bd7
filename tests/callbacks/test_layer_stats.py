"""LayerStats: dead ReLUs behind a bias of -10, exactly one warning; stats math against closed forms."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import nn

from lit_tricks.callbacks.layer_stats import LayerStats, LayerStatsWarning
from lit_tricks.functional.diagnosis import activation_stats, dead_fraction, update_ratio
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


class DeadReLU(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        with torch.no_grad():
            self.net[0].bias.fill_(-10.0)


class ListLogger(Logger):
    """Collects what log_metrics receives."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_dead_relu_fraction_and_exactly_one_warning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = LayerStats(every_n_steps=2)
    logger = ListLogger()
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=8, limit_val_batches=0, callbacks=[cb],
                           logger=logger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DeadReLU(), datamodule=BlobsDataModule())
    assert cb.last["net.1/dead_frac"] > 0.9
    dead = [w for w in caught if issubclass(w.category, LayerStatsWarning) and "[dead_relu]" in str(w.message)]
    assert len(dead) == 1 and "net.1" in str(dead[0].message)
    assert "dead_relu" in cb.warned and cb.state_dict()["warned"] == sorted(cb.warned)
    assert [step for step, _ in logger.rows] == [0, 2, 4, 6]
    row = logger.rows[-1][1]
    assert row["layer_stats/net.0.weight/grad_norm"] == 0.0  # no gradient flows through dead units
    assert row["layer_stats/net.2.weight/update_ratio"] == 0.0 < row["layer_stats/net.2.bias/update_ratio"]
    assert {"layer_stats/net.0/act_mean", "layer_stats/net.0/act_std"} <= set(row)


def test_healthy_model_does_not_warn_about_dead_units(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = LayerStats(every_n_steps=4)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0, callbacks=[cb])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert cb.last["net.2/dead_frac"] < 0.5 and "dead_relu" not in cb.warned
    restored = LayerStats(every_n_steps=4)
    restored.load_state_dict({"version": 1, "warned": ["ratio_high"]})
    assert restored.warned == {"ratio_high"}


def test_stats_math() -> None:
    act = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 2.0]])
    assert dead_fraction(act) == 1 / 3
    stats = activation_stats(act)
    assert stats["mean"] == 1.0 and abs(stats["std"] - float(act.std())) < 1e-7
    images = torch.zeros(2, 4, 3, 3)
    images[:, 0, 1, 1] = 1.0
    assert dead_fraction(images, channel_dim=1) == 0.75
    w = torch.ones(10)
    assert abs(update_ratio(w, w + 1e-3) - 1e-3) < torch.finfo(torch.float32).eps  # float32 rounding of 1.001


class _RecordAt(Callback):
    """Oracle: at the given steps, net.0's output (own forward hook) and net.4.weight's gradient."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.act, self.grad = steps, {}, {}  # type: ignore[var-annotated]
        self._handle: Any = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps:
            self._handle = pl_module.net[0].register_forward_hook(  # type: ignore[index]
                lambda m, i, o: self.act.__setitem__(step, o.detach().clone()))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self.grad[trainer.global_step] = pl_module.net[4].weight.grad.detach().clone()  # type: ignore[index]


def test_histograms_read_back_from_the_tensorboard_event_file(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, EventAccumulator

    torch.manual_seed(0)
    cb = LayerStats(every_n_steps=3, log_histograms=True)
    record = _RecordAt({0, 3})
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=0,
                           callbacks=[record, cb], logger=logger)
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={HISTOGRAMS: 0})
    events.Reload()
    tags = set(events.Tags()["histograms"])
    assert {"layer_stats/net.0/act", "layer_stats/net.2/act", "layer_stats/net.4/act",
            "layer_stats/net.0.weight/grad", "layer_stats/net.1.bias/grad", "layer_stats/net.4.weight/grad"} <= tags
    for tag, oracle in (("layer_stats/net.0/act", record.act), ("layer_stats/net.4.weight/grad", record.grad)):
        hists = events.Histograms(tag)
        assert [h.step for h in hists] == [0, 3]  # every_n_steps
        for h in hists:
            values = oracle[h.step].double()
            got = h.histogram_value
            assert got.num == values.numel() and got.min == pytest.approx(float(values.min()), rel=1e-6)
            assert got.max == pytest.approx(float(values.max()), rel=1e-6)
            assert got.sum == pytest.approx(float(values.sum()), rel=1e-5, abs=1e-6)
            assert got.sum_squares == pytest.approx(float((values**2).sum()), rel=1e-5)


def test_histograms_without_tensorboard_warn_once_and_log_scalars(tmp_path: Path) -> None:
    logger = ListLogger()
    cb = LayerStats(every_n_steps=2, log_histograms=True)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0, callbacks=[cb],
                           logger=logger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    tb = [w for w in caught if issubclass(w.category, LayerStatsWarning) and "TensorBoardLogger" in str(w.message)]
    assert len(tb) == 1 and "ListLogger" in str(tb[0].message)
    assert [step for step, _ in logger.rows] == [0, 2] and not cb._histograms
