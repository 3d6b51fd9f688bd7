"""ONE 2-process DDP fit (CPU, gloo, 60 s process-group timeout, spawned) carrying every callback; a NaN input on
rank 1 only at one step. Each cell checks one callback on both ranks against its oracle (tests/matrix/allfit.py) and
that the ranks agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lit_tricks.trainers.strategies import ddp_strategy
from tests.matrix import allfit
from tests.matrix.cells import cell
from tests.matrix.models import BlobsDataModule, tiny_trainer

NAN_STEP = 3
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    import lightning.pytorch as pl

    out = tmp_path_factory.mktemp("ddp")
    pl.seed_everything(0, verbose=False)
    trainer = tiny_trainer(
        out, devices=2, strategy=ddp_strategy(start_method="spawn", timeout_s=TIMEOUT_S, process_group_backend="gloo"),
        max_epochs=3, callbacks=allfit.all_callbacks(out), num_sanity_val_steps=0, limit_val_batches=2,
    )
    trainer.fit(allfit.AllModel(nan_step=NAN_STEP, nan_rank=1), datamodule=BlobsDataModule(n=256))
    return allfit.load(out, 0), allfit.load(out, 1), out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


pytestmark = [pytest.mark.slow, pytest.mark.ddp, pytest.mark.timeout(180)]


@cell("Schedule", "ddp")
def test_ddp_schedule(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_schedule(r0)
    assert r0["lrs"] == r1["lrs"] and r0["total_steps"] == 12  # 3 epochs x 256 / 2 ranks / 32


@cell("NaNGuard", "ddp")
def test_ddp_nan_guard_both_ranks_skip(ranks: tuple) -> None:
    r0, r1, _ = ranks  # only rank 1 saw the NaN; both dropped the step
    allfit.check_nan_guard(r0, NAN_STEP)
    allfit.check_nan_guard(r1, NAN_STEP)


@cell("GradientClipping", "ddp")
def test_ddp_clipping_on_synced_gradients(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_clipping(r0)
    assert all((a is None and b is None) or _same(a, b) for a, b in zip(r0["post"], r1["post"]))


@cell("EMAWeights", "ddp")
def test_ddp_ema(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_ema(r0)
    assert _same(r0["ema"], r1["ema"])


@cell("EarlyStopping", "ddp")
def test_ddp_early_stopping(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_early_stopping(r0)
    assert r0["es"]["stopped_epoch"] == r1["es"]["stopped_epoch"] and r0["epoch"] == r1["epoch"]


@cell("CheckpointEnsemble", "ddp")
def test_ddp_ensemble(ranks: tuple) -> None:
    r0, r1, out = ranks
    allfit.check_ensemble(r0)
    assert r0["members"] == r1["members"]  # rank 0 decides, every rank holds its list
    assert len(list((out / "ensemble").glob("member-*.pt"))) == len(r0["members"])


@cell("RNGState", "ddp")
def test_ddp_rng_state_per_rank(ranks: tuple) -> None:
    _, _, out = ranks
    state = torch.load(out / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    per_rank = next(v for k, v in state.items() if k.startswith("RNGState"))["per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])


@cell("LearningCurves", "ddp")
def test_ddp_learning_curves(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_learning_curves(r0)
    allfit.check_learning_curves(r1)


@cell("LayerStats", "ddp")
def test_ddp_layer_stats(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_layer_stats(r0)
    assert r0["layer_stats"].keys() == r1["layer_stats"].keys()


@cell("SanityChecks", "ddp")
def test_ddp_sanity_checks(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_sanity(r0)
    assert r0["sanity"]["init_loss"] == r1["sanity"]["init_loss"]


@cell("Preemption", "ddp")
def test_ddp_preemption_handlers(ranks: tuple) -> None:
    r0, r1, _ = ranks
    allfit.check_preemption(r0)
    allfit.check_preemption(r1)
