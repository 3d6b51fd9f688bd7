"""Schedule / ReduceOnPlateau / lr_scheduler_config without a Trainer: closed forms, validation, state."""

from __future__ import annotations

import functools
import io
from types import SimpleNamespace

import pytest
import torch

from lit_tricks.functional.lr_scale import scale_lr_
from lit_tricks.schedules import (
    BODIES,
    ConstantLR,
    CosineDecay,
    MultiStepDecay,
    ReduceOnPlateau,
    Schedule,
    StepDecay,
    lr_scheduler_config,
    make_body,
)
from tests.schedules.cases import BASE, CASES, SPE, TOTAL, scheduler_partial


def _sgd(lr: float = BASE, groups: int = 1) -> torch.optim.SGD:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _run(sched: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer, n: int) -> list[list[float]]:
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_presets_match_closed_form(name: str) -> None:
    overrides, expected = CASES[name]
    opt = _sgd(groups=2)
    sched = scheduler_partial(name, overrides)(opt, total_steps=TOTAL, steps_per_epoch=SPE)
    for s, lrs in enumerate(_run(sched, opt, TOTAL)):
        assert lrs[0] == pytest.approx(expected(s), rel=1e-12, abs=1e-15), (name, s)
        assert lrs[1] == pytest.approx(2 * expected(s), rel=1e-12, abs=1e-15), (name, s)  # per-group base lr


def test_none_preset_is_no_scheduler() -> None:
    assert scheduler_partial("none") is None
    assert lr_scheduler_config(None, _sgd()) is None


def test_body_registry_and_validation() -> None:
    assert set(BODIES) >= {"constant", "step", "multistep", "exponential", "cosine", "linear", "polynomial",
                           "inverse_time", "inverse_sqrt"}
    with pytest.raises(ValueError, match=r"body: expected one of .*cosine"):
        Schedule(_sgd(), "cosinus", total_steps=10)
    with pytest.raises(ValueError, match="needs total_steps"):
        Schedule(_sgd(), "cosine")
    with pytest.raises(ValueError, match="unit='epoch' needs steps_per_epoch"):
        Schedule(_sgd(), StepDecay(step_size=2), unit="epoch")
    with pytest.raises(ValueError, match="give one of warmup_steps, warmup_epochs"):
        Schedule(_sgd(), "constant", warmup_steps=5, warmup_epochs=1, steps_per_epoch=3)
    with pytest.raises(ValueError, match="start_factor"):
        Schedule(_sgd(), "constant", warmup_steps=5, warmup="exponential", start_factor=0.0)
    with pytest.raises(ValueError, match="T_mult: expected an int >= 1"):
        Schedule(_sgd(), "cosine", T_0=3, T_mult=0)
    with pytest.raises(ValueError, match="gamma"):
        StepDecay(step_size=3, gamma=-1.0)


def test_cycle_ends_and_restarts_need_no_total() -> None:
    sched = Schedule(_sgd(), CosineDecay(), T_0=3, T_mult=2, warmup_steps=1, total_steps=22)
    assert sched.cycle_ends() == [4, 10, 22]
    assert Schedule(_sgd(), "cosine", total_steps=22).cycle_ends() == []
    free = Schedule(_sgd(), "cosine", T_0=4)  # restarts give the body its length: no total needed
    assert free.cycle_ends() == []
    lrs = [lr[0] for lr in _run(free, free.optimizer, 9)]
    assert lrs[0] == lrs[4] == lrs[8] == BASE


def test_state_dict_plain_and_resume_exact() -> None:
    opt = _sgd()
    sched = Schedule(opt, "cosine", warmup_steps=3, total_steps=20)
    _run(sched, opt, 7)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["last_epoch"] == 7 and state["version"] == 1
    opt2 = _sgd()
    resumed = Schedule(opt2, "cosine", warmup_steps=3, total_steps=20)
    resumed.load_state_dict(state)
    resumed.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_plateau_warmup_and_reduction() -> None:
    opt = _sgd()
    sched = ReduceOnPlateau(opt, monitor="val/x", factor=0.5, patience=0, warmup_steps=4, start_factor=0.0)
    assert opt.param_groups[0]["lr"] == 0.0
    opt.step()
    opt.step()  # the step post-hook advances the warm-up
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * BASE)
    sched.step(1.0)  # improvement: plateau lr stays
    sched.step(1.0)  # no improvement: halve the plateau lr, still under warm-up
    assert sched.plateau_lrs == [pytest.approx(0.5 * BASE)]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * BASE)
    for _ in range(2):
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * BASE)  # warm-up over
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    opt2 = _sgd()
    other = ReduceOnPlateau(opt2, monitor="val/x", factor=0.5, patience=0, warmup_steps=4, start_factor=0.0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * BASE) and other.num_bad_epochs == sched.num_bad_epochs


def test_plateau_keeps_an_lr_scaled_by_scale_lr_under_warmup_and_reduction() -> None:
    opt = _sgd()
    sched = ReduceOnPlateau(opt, monitor="val/x", factor=0.5, patience=0, warmup_steps=4, start_factor=0.0)
    opt.step()
    scale_lr_([opt], [sched], 0.1)  # e.g. NaNGuard's rollback cut
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25 * BASE)
    opt.step()  # the warm-up goes on from the scaled plateau lr
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * BASE)
    sched.step(1.0)  # improvement: the scaled lr stays
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * BASE)
    sched.step(1.0)  # no improvement: halve the scaled lr
    assert sched.plateau_lrs == [pytest.approx(0.05 * BASE)]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 * BASE)


def test_plateau_loads_a_version_1_state_with_plateau_lrs() -> None:
    sched = ReduceOnPlateau(_sgd(), monitor="val/x", warmup_steps=2)
    state = sched.state_dict()
    state["plateau_lrs"] = [0.5 * BASE]
    del state["base_lrs"]
    state["version"] = 1
    opt = _sgd()
    other = ReduceOnPlateau(opt, monitor="val/x", warmup_steps=2)
    other.load_state_dict(state)
    assert other.plateau_lrs == [0.5 * BASE] and opt.param_groups[0]["lr"] == pytest.approx(0.5 * BASE * 0.01)


def test_lr_scheduler_config_fills_and_intervals() -> None:
    trainer = SimpleNamespace(estimated_stepping_batches=12, num_training_batches=7, accumulate_grad_batches=2)
    config = lr_scheduler_config(scheduler_partial("warmup_cosine"), _sgd(), trainer)
    assert config is not None and config["interval"] == "step" and config["frequency"] == 1
    assert config["scheduler"].total_steps == 12 and config["scheduler"].steps_per_epoch == 4  # ceil(7 / 2)
    assert config["scheduler"].warmup_steps == 8  # warmup_epochs=2
    plateau = lr_scheduler_config(scheduler_partial("plateau"), _sgd(), trainer)
    assert plateau is not None and plateau["interval"] == "epoch" and plateau["monitor"] == "val/loss"
    assert plateau["frequency"] == 1  # no check_val_every_n_epoch on the trainer
    for every, frequency in ((3, 3), (1, 1), (None, 1)):  # plateau steps on the validated epochs only
        validating = SimpleNamespace(**vars(trainer), check_val_every_n_epoch=every)
        config = lr_scheduler_config(scheduler_partial("plateau"), _sgd(), validating)
        assert config is not None and config["frequency"] == frequency
    opt = _sgd()
    built = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    assert lr_scheduler_config(built, opt, trainer) == {"scheduler": built, "interval": "epoch", "frequency": 1}
    onecycle = lr_scheduler_config(lambda o, **kw: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, **kw),
                                   _sgd(), trainer)
    assert onecycle is not None and onecycle["interval"] == "step" and onecycle["scheduler"].total_steps == 12
    with pytest.raises(TypeError, match="scheduler: expected None, an LRScheduler or a callable"):
        lr_scheduler_config("cosine", _sgd(), trainer)  # type: ignore[arg-type]


def test_body_spec_round_trip_is_plain() -> None:
    body = MultiStepDecay(milestones=(2, 4), gamma=0.5)
    spec = dict(body)
    assert spec == {"_target_": "lit_tricks.schedules.bodies.MultiStepDecay", "milestones": [2, 4], "gamma": 0.5}
    assert make_body(spec) == MultiStepDecay(milestones=[2, 4], gamma=0.5)
    assert make_body(functools.partial(CosineDecay, eta_min=0.1)) == CosineDecay(eta_min=0.1)
    assert make_body(None) == ConstantLR()
    with pytest.raises(TypeError, match="body: expected a Body"):
        make_body(3)
