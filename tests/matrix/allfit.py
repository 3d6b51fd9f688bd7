"""One fit that carries every callback at once (shared by the 2-process DDP cell and the torch.compile cell).

Each process records, per optimizer step, the gradients before and after the callbacks that change them, the lr,
and the weights after the step; at fit end it saves those records with every callback's outcome to
``<out>/rank<r>.pt``. The ``check_*`` functions compare them with independent oracles: the recurrence written out,
``torch.nn.utils.clip_grad_norm_``, the closed-form warm-up + cosine, Lightning's EarlyStopping and ModelCheckpoint
in the same run.
"""

from __future__ import annotations

import functools
import math
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningES
from torch import Tensor, nn

from lit_tricks import callbacks as cb
from lit_tricks.schedules import Schedule, lr_scheduler_config
from tests.helpers.tiny import TinyClassifier, make_blobs

MAX_NORM = 0.5
WARMUP = 2
BASE_LR = 0.1


class OracleES(LightningES):
    """Lightning's EarlyStopping under another name (distinct state key)."""


class AllModel(TinyClassifier):
    """TinyClassifier + warm-up/cosine Schedule; a NaN input at optimizer step ``nan_step`` on rank ``nan_rank``."""

    def __init__(self, nan_step: int = 3, nan_rank: int = 0, compile_net: bool = False) -> None:
        super().__init__(lr=BASE_LR)
        self.nan_step, self.nan_rank = nan_step, nan_rank
        if compile_net:
            self.net = torch.compile(self.net, backend="aot_eager")  # state_dict names get "_orig_mod."

    def on_train_start(self) -> None:
        torch.manual_seed(1000 + self.global_rank)  # each rank its own RNG stream (RNGState keeps every rank's)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        if self.global_step == self.nan_step and self.global_rank == self.nan_rank:
            x = x * float("nan")
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=BASE_LR, momentum=0.9)
        partial = functools.partial(Schedule, body="cosine", warmup_steps=WARMUP)
        return {"optimizer": opt, "lr_scheduler": lr_scheduler_config(partial, opt, self.trainer)}


class GradRecorder(Callback):
    """The gradients at ``on_before_optimizer_step`` (where it sits in the callback list decides what it sees)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor] | None] = []
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.grads.append(grads or None)
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


class Record(Callback):
    """Weights after each optimizer step and each batch's loss; at fit end everything goes to ``rank<r>.pt``."""

    def __init__(self, out: Path, cbs: dict[str, Callback], pre: GradRecorder, post: GradRecorder) -> None:
        self.out, self.cbs, self.pre, self.post = out, cbs, pre, post
        self.params: list[dict[str, Tensor]] = []
        self.losses: list[tuple[int, float]] = []
        self._last = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.handler_during = signal.getsignal(signal.SIGTERM) == self.cbs["Preemption"]._handler  # type: ignore

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append((trainer.current_epoch, float(outputs["loss"])))
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        c = self.cbs
        ema, clip, guard = c["EMAWeights"], c["GradientClipping"], c["NaNGuard"]
        es, oes, ens, mc = c["EarlyStopping"], c["OracleES"], c["CheckpointEnsemble"], c["ModelCheckpoint"]
        torch.save({
            "rank": trainer.global_rank, "global_step": trainer.global_step, "epoch": trainer.current_epoch,
            "n_train": len(trainer.train_dataloader.dataset),  # type: ignore[arg-type,union-attr]
            "start": self.start, "params": self.params, "losses": self.losses,
            "pre": self.pre.grads, "post": self.post.grads, "lrs": self.post.lrs,
            "total_steps": trainer.lr_scheduler_configs[0].scheduler.total_steps,  # type: ignore[attr-defined]
            "ema": ema.ema_state_dict, "ema_updates": ema.num_updates,  # type: ignore[attr-defined]
            "clip_history": clip.filled_history(), "clip_steps": clip.steps,  # type: ignore[attr-defined]
            "bad_steps": guard.bad_steps,  # type: ignore[attr-defined]
            "es": {a: getattr(es, a) for a in ("stopped_epoch", "wait_count", "stopping_reason", "best_epoch")}
            | {"best_score": float(es.best_score)},  # type: ignore[attr-defined]
            "oracle_es": {a: getattr(oes, a) for a in ("stopped_epoch", "wait_count", "stopping_reason")}
            | {"best_score": float(oes.best_score)},  # type: ignore[attr-defined]
            "members": [(m["epoch"], m["score"], sorted(m["tags"])) for m in ens.members],  # type: ignore
            "mc_best": sorted(float(v) for v in mc.best_k_models.values()),  # type: ignore[attr-defined]
            "history": c["LearningCurves"].history,  # type: ignore[attr-defined]
            "layer_stats": c["LayerStats"].last,  # type: ignore[attr-defined]
            "sanity": c["SanityChecks"].results,  # type: ignore[attr-defined]
            "preempt": {"received": c["Preemption"].received, "saved": c["Preemption"].saved_path,  # type: ignore
                        "handler_during": self.handler_during,
                        "handler_after": signal.getsignal(signal.SIGTERM) == c["Preemption"]._handler},  # type: ignore
        }, self.out / f"rank{trainer.global_rank}.pt")


def all_callbacks(out: Path) -> list[Callback]:
    """Every lit_tricks callback (and Lightning's oracles), in the order the records need."""
    pre, post = GradRecorder(), GradRecorder()
    named: dict[str, Callback] = {
        "NaNGuard": cb.NaNGuard(policy="skip_step"),
        "GradientClipping": cb.GradientClipping(mode="norm", max_norm=MAX_NORM),
        "EMAWeights": cb.EMAWeights(decay=0.7, apply_at_end=False),
        "EarlyStopping": cb.EarlyStopping(monitor="val/loss", patience=1, restore_best_weights=True),
        "OracleES": OracleES(monitor="val/loss", patience=1),
        "CheckpointEnsemble": cb.CheckpointEnsemble(top_k=2, monitor="val/loss", every_n_epochs=1),
        "RNGState": cb.RNGState(),
        "Preemption": cb.Preemption(),
        "LearningCurves": cb.LearningCurves(plot=False, train_eval_samples=32),
        "LayerStats": cb.LayerStats(every_n_steps=1, log=False),
        "SanityChecks": cb.SanityChecks(on_failure="warn", overfit_steps=30, init_tolerance=1.0),
        "ModelCheckpoint": ModelCheckpoint(dirpath=out / "ckpt", monitor="val/loss", save_top_k=2, save_last=True),
    }
    order = ["SanityChecks", "NaNGuard"]
    return [named[k] for k in order] + [pre, named["GradientClipping"], post] + [
        named[k] for k in named if k not in (*order, "GradientClipping")
    ] + [Record(out, named, pre, post)]


def load(out: Path, rank: int = 0) -> dict[str, Any]:
    return torch.load(out / f"rank{rank}.pt", weights_only=False)


# ---------------------------------------------------------------- oracles (each takes one rank's record)
def lr_closed_form(step: int, total: float) -> float:
    if step < WARMUP:
        return BASE_LR * (0.01 + 0.99 * step / WARMUP)
    body = max(1, int(total) - WARMUP)
    return BASE_LR * (1 + math.cos(math.pi * min(step - WARMUP, body) / body)) / 2


def check_schedule(r: dict[str, Any]) -> None:
    assert r["lrs"], "no optimizer step recorded"
    for step, lr in enumerate(r["lrs"]):
        assert lr == pytest_approx(lr_closed_form(step, r["total_steps"])), step


def pytest_approx(x: float) -> Any:
    import pytest

    return pytest.approx(x, rel=1e-12, abs=1e-15)


def check_nan_guard(r: dict[str, Any], nan_step: int) -> None:
    assert r["bad_steps"] == [nan_step]
    assert r["post"][nan_step] is None  # the update was dropped (no gradient reached the optimizer)
    before, after = r["params"][nan_step - 1], r["params"][nan_step]
    assert all(torch.equal(before[k], after[k]) for k in before)  # SGD did not move anything
    assert all(torch.isfinite(v).all() for v in r["params"][-1].values())


def check_clipping(r: dict[str, Any]) -> None:
    n = 0
    for pre, post in zip(r["pre"], r["post"]):
        if pre is None or post is None:
            continue
        ref = {k: v.clone() for k, v in pre.items()}
        params = [torch.nn.Parameter(torch.zeros_like(v)) for v in ref.values()]
        for p, g in zip(params, ref.values()):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)  # torch's own, on the gradients before the callback
        for p, k in zip(params, ref):
            torch.testing.assert_close(post[k], p.grad, rtol=1e-5, atol=1e-7)
        n += 1
    assert n >= 3 and r["clip_steps"] == n


def check_ema(r: dict[str, Any]) -> None:
    ema = {k: v.clone() for k, v in r["start"].items() if k in r["params"][0]}
    for w in r["params"]:
        ema = {k: 0.7 * ema[k] + 0.3 * w[k] for k in ema}
    assert r["ema_updates"] == len(r["params"])
    for k, v in ema.items():
        torch.testing.assert_close(r["ema"][k], v, rtol=1e-5, atol=1e-6)


def check_early_stopping(r: dict[str, Any]) -> None:
    ours, theirs = r["es"], r["oracle_es"]
    assert {k: ours[k] for k in theirs} == theirs
    assert r["epoch"] == (ours["stopped_epoch"] + 1 if ours["stopped_epoch"] else r["epoch"])


def check_ensemble(r: dict[str, Any]) -> None:
    top = sorted(s for _, s, tags in r["members"] if "top_k" in tags)
    assert top == r["mc_best"]  # the same two scores as Lightning's ModelCheckpoint(save_top_k=2)
    snaps = [e for e, _, tags in r["members"] if "epoch" in tags]
    assert snaps == list(range(r["epoch"]))  # every_n_epochs=1: one snapshot per epoch


def check_learning_curves(r: dict[str, Any]) -> None:
    h = r["history"]
    assert h["epoch"] == [float(e) for e in range(r["epoch"])]
    for e in range(r["epoch"]):
        losses = [v for ep, v in r["losses"] if ep == e and math.isfinite(v)]
        got = h["train_loss"][e]
        if len(losses) == len([v for ep, v in r["losses"] if ep == e]):
            assert got == pytest_approx(sum(losses) / len(losses)) or abs(got - sum(losses) / len(losses)) < 1e-6


def check_layer_stats(r: dict[str, Any]) -> None:
    stats, before, after, grads = r["layer_stats"], r["params"][-2], r["params"][-1], r["post"][-1]
    for name, b in before.items():
        expected = float((after[name] - b).norm() / (b.norm() + 1e-12))
        assert abs(stats[f"{name}/update_ratio"] - expected) <= 1e-6 * max(1.0, expected), name
        assert abs(stats[f"{name}/grad_norm"] - float(grads[name].norm())) <= 1e-5, name


def check_sanity(r: dict[str, Any]) -> None:
    model = TinyClassifier()
    model.load_state_dict({k.replace("_orig_mod.", ""): v for k, v in r["start"].items()})
    model.train()
    model.net[3].eval()  # dropout off, BatchNorm in train mode: what the check runs
    x, y = make_blobs(r["n_train"]).tensors
    x, y = x[:256], y[:256]  # init_samples
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(x), y))
    assert r["sanity"]["init_loss"]["loss"] == pytest_approx(expected) or \
        abs(r["sanity"]["init_loss"]["loss"] - expected) < 1e-5
    assert r["sanity"]["overfit"]["passed"] in (True, False)


def check_preemption(r: dict[str, Any]) -> None:
    p = r["preempt"]
    assert p["handler_during"] and not p["handler_after"]  # installed for training, restored after
    assert p["received"] is None and p["saved"] is None
