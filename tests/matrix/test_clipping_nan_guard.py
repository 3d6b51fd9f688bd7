"""GradientClipping and NaNGuard cells. Oracles: ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` applied to
the gradients recorded just before the callback; the optimizer's own update written out (SGD: ``w - lr * g``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lit_tricks.callbacks import GradientClipping, NaNGuard
from lit_tricks.functional.clip import autoclip_threshold, clip_grad_norm_, grad_norm, push_history_
from tests.matrix.cells import cell
from tests.matrix.models import (
    ManualClassifier,
    StepRecorder,
    TinyClassifier,
    TwoOptimizerClassifier,
    fit,
    tied_classifier,
)


class PreGrads(Callback):
    """Gradients at on_before_optimizer_step, placed before the callback under test."""

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor]] = []
        self.params: list[list[int]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                           if p.grad is not None and id(p) in ids})


def torch_clipped(grads: dict[str, Tensor], max_norm: float) -> dict[str, Tensor]:
    params = []
    for g in grads.values():
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    return {k: p.grad for k, p in zip(grads, params)}  # type: ignore[misc]


def assert_clipped(pre: PreGrads, post: StepRecorder, max_norm: float) -> None:
    assert len(pre.grads) == len(post.grads) > 0
    for a, b in zip(pre.grads, post.grads):
        ref = torch_clipped(a, max_norm)
        for k, v in ref.items():
            torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- GradientClipping
@cell("GradientClipping", "accumulation")
def test_clipping_once_per_window_on_the_accumulated_gradient(tmp_path: Path) -> None:
    pre, clip, post = PreGrads(), GradientClipping(max_norm=0.05), StepRecorder()
    trainer = fit(tmp_path, TinyClassifier, [pre, clip, post], max_epochs=1, limit_train_batches=4,
                  accumulate_grad_batches=2)
    assert trainer.global_step == clip.steps == 2
    assert_clipped(pre, post, 0.05)


@cell("GradientClipping", "tied")
def test_clipping_counts_a_tied_parameter_once(tmp_path: Path) -> None:
    pre, clip, post = PreGrads(), GradientClipping(max_norm=0.05), StepRecorder()
    fit(tmp_path, tied_classifier, [pre, clip, post], max_epochs=1, limit_train_batches=3)
    assert "net.dec.weight" not in pre.grads[0]  # named_parameters de-duplicates; so does the optimizer
    assert_clipped(pre, post, 0.05)


@cell("GradientClipping", "manual")
def test_clipping_under_manual_optimization(tmp_path: Path) -> None:
    pre, clip, post = PreGrads(), GradientClipping(max_norm=0.05), StepRecorder()
    fit(tmp_path, ManualClassifier, [pre, clip, post], max_epochs=1, limit_train_batches=3)
    assert clip.steps == 3
    assert_clipped(pre, post, 0.05)


@cell("GradientClipping", "two_optimizers")
def test_clipping_two_optimizers_clips_each_optimizer_separately(tmp_path: Path) -> None:
    """Documented (issue 12 item 7): each optimizer's parameters are clipped to max_norm on their own."""
    pre, clip, post = PreGrads(), GradientClipping(max_norm=0.05), StepRecorder()
    fit(tmp_path, TwoOptimizerClassifier, [pre, clip, post], max_epochs=1, limit_train_batches=2)
    assert len(pre.grads) == 4
    for idx in (0, 1):  # counters and history are kept per optimizer (issue 12 item 7): 2 steps each
        clip.select_optimizer(idx)
        assert clip.steps == 2
    for a, b in zip(pre.grads, post.grads):
        for k, v in torch_clipped(a, 0.05).items():
            torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-7)


@cell("GradientClipping", "bf16")
def test_clipping_bf16_mixed(tmp_path: Path) -> None:
    pre, clip, post = PreGrads(), GradientClipping(max_norm=0.05), StepRecorder()
    fit(tmp_path, TinyClassifier, [pre, clip, post], precision="bf16-mixed", max_epochs=1, limit_train_batches=3)
    assert_clipped(pre, post, 0.05)


@cell("GradientClipping", "resume_changed")
def test_clipping_load_state_with_shorter_history(tmp_path: Path) -> None:
    """A resume with a shorter ``history`` keeps the newest norms, oldest first (tests/resume/test_changed_args.py
    has the longer one and the resume through the Trainer)."""
    src = GradientClipping(mode="auto", history=8)
    fit(tmp_path, TinyClassifier, [src], max_epochs=1, limit_train_batches=4)
    dst = GradientClipping(mode="auto", history=3)
    dst.load_state_dict(src.state_dict())
    assert dst.steps == 4 and torch.equal(dst.filled_history(), src.filled_history()[-3:])


@cell("GradientClipping", "load_other_args")
def test_clipping_load_state_into_other_mode(tmp_path: Path) -> None:
    src = GradientClipping(mode="norm", max_norm=0.05, history=16)
    fit(tmp_path, TinyClassifier, [src], max_epochs=1, limit_train_batches=3)
    dst = GradientClipping(mode="value", max_value=0.01, history=16)
    dst.load_state_dict(src.state_dict())
    assert dst.steps == 3 and torch.equal(dst.filled_history(), src.filled_history()) and dst.mode == "value"


@settings(max_examples=40, deadline=None)
@given(norms=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=20), history=st.integers(1, 8),
       pct=st.floats(0.0, 100.0))
@cell("GradientClipping", "properties")
def test_autoclip_threshold_is_numpy_percentile_of_the_window(norms: list[float], history: int, pct: float) -> None:
    import numpy as np

    ring = torch.zeros(history)
    for i, n in enumerate(norms):
        push_history_(ring, i, torch.tensor(n))
    window = norms[-history:]
    got = float(autoclip_threshold(ring, len(norms), pct))
    assert got == pytest.approx(float(np.percentile(np.float32(window), pct)), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), max_norm=st.floats(1e-3, 10.0), p=st.sampled_from([1.0, 2.0, float("inf")]))
def test_clip_grad_norm_equals_torch(seed: int, max_norm: float, p: float) -> None:
    g = torch.Generator().manual_seed(seed)
    ours = [nn.Parameter(torch.zeros(3, 2)) for _ in range(3)]
    theirs = [nn.Parameter(torch.zeros(3, 2)) for _ in range(3)]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(3, 2, generator=g)
        b.grad = a.grad.clone()
    n1 = clip_grad_norm_(ours, max_norm, p)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, max_norm, p)
    torch.testing.assert_close(n1, n2)
    torch.testing.assert_close(grad_norm([o.grad for o in ours], p), grad_norm([t.grad for t in theirs], p))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)


# ---------------------------------------------------------------- NaNGuard
class NaNAt(TinyClassifier):
    """A NaN input on the batches in ``bad``."""

    def __init__(self, bad: tuple[int, ...] = (2,)) -> None:
        super().__init__()
        self.bad = bad

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return super().training_step((x * float("nan"), y) if batch_idx in self.bad else (x, y), batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)  # plain SGD: a dropped step leaves weights unchanged


@cell("NaNGuard", "accumulation")
def test_nan_guard_drops_the_whole_window(tmp_path: Path) -> None:
    """A NaN in one micro-batch of a window of 2 drops that window's step (the window is the step)."""
    guard, rec = NaNGuard(policy="skip_step"), StepRecorder()
    trainer = fit(tmp_path, lambda: NaNAt(bad=(2,)), [guard, rec], max_epochs=1, limit_train_batches=4,
                  accumulate_grad_batches=2)
    assert trainer.global_step == 2 and guard.bad_steps == [1]
    assert not all(torch.equal(rec.start[k], rec.params[0][k]) for k in rec.start)  # the good window stepped
    assert all(torch.equal(rec.params[0][k], rec.params[1][k]) for k in rec.params[0])  # the bad one did not


@cell("NaNGuard", "tied")
def test_nan_guard_skip_restores_shared_buffers(tmp_path: Path) -> None:
    class TiedNaN(NaNAt):
        pass

    def build() -> NaNAt:
        m = TiedNaN(bad=(1,))
        m.net = tied_classifier().net
        return m

    guard, rec = NaNGuard(policy="skip_step"), StepRecorder()
    model = build()
    snaps: list[dict[str, Tensor]] = []

    class Buf(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *a: Any) -> None:
            snaps.append({k: v.clone() for k, v in pl_module.state_dict().items() if "running" in k})

    fit(tmp_path, model, [guard, rec, Buf()], max_epochs=1, limit_train_batches=3)
    assert guard.bad_steps == [1]
    assert all(torch.equal(snaps[0][k], snaps[1][k]) for k in snaps[0])  # the NaN batch left BN stats alone
    assert all(torch.isfinite(v).all() for v in snaps[-1].values())


@cell("NaNGuard", "manual")
def test_nan_guard_under_manual_optimization(tmp_path: Path) -> None:
    class ManualNaN(ManualClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            return super().training_step((x * float("nan"), y) if batch_idx == 1 else (x, y), batch_idx)

    guard, rec = NaNGuard(policy="skip_step"), StepRecorder()
    fit(tmp_path, ManualNaN, [guard, rec], max_epochs=1, limit_train_batches=3)
    assert guard.bad_steps == [1]
    assert all(torch.isfinite(v).all() for v in rec.params[-1].values())


@cell("NaNGuard", "two_optimizers")
def test_nan_guard_two_optimizers_both_skip(tmp_path: Path) -> None:
    class TwoNaN(TwoOptimizerClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            return super().training_step((x * float("nan"), y) if batch_idx == 1 else (x, y), batch_idx)

    guard, rec = NaNGuard(policy="skip_step"), StepRecorder()
    fit(tmp_path, TwoNaN, [guard, rec], max_epochs=1, limit_train_batches=3)
    assert guard.bad_steps == [2, 3]  # each optimizer's step of the bad batch
    assert all(torch.isfinite(v).all() for v in rec.params[-1].values())
    assert all(torch.equal(rec.params[0][k], rec.params[1][k]) for k in rec.params[0])


@cell("NaNGuard", "bf16")
def test_nan_guard_bf16_mixed(tmp_path: Path) -> None:
    guard, rec = NaNGuard(policy="skip_step"), StepRecorder()
    fit(tmp_path, lambda: NaNAt(bad=(1,)), [guard, rec], precision="bf16-mixed", max_epochs=1, limit_train_batches=3)
    assert guard.bad_steps == [1]
    assert all(torch.equal(rec.params[0][k], rec.params[1][k]) for k in rec.params[0])


@cell("NaNGuard", "lr_sources")
def test_nan_guard_skip_with_decoupled_weight_decay_leaves_weights(tmp_path: Path) -> None:
    from lit_tricks.modules import TrickModule
    from tests.helpers.tiny import make_blobs

    class NaNTrick(TrickModule):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            return super().training_step((x * float("nan"), y) if batch_idx == 1 else (x, y), batch_idx)

    import functools

    def build() -> TrickModule:
        return NaNTrick(model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
                        optimizer=functools.partial(torch.optim.SGD, lr=0.1), weight_decay=0.1)

    guard, rec = NaNGuard(policy="skip_step"), StepRecorder()
    loader = torch.utils.data.DataLoader(make_blobs(128), batch_size=32)
    pl.seed_everything(0)
    from tests.helpers.tiny import tiny_trainer

    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[guard, rec],
                           enable_checkpointing=False)
    trainer.fit(build(), train_dataloaders=loader)
    assert guard.bad_steps == [1]
    assert all(torch.equal(rec.params[0][k], rec.params[1][k]) for k in rec.params[0])
