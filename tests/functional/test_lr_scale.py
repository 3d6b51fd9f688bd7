"""scale_lr_: the one LR-scaling rule of the linear scaling rule (trainers) and NaNGuard's rollback cut."""

from __future__ import annotations

import pytest
import torch

from lit_tricks.callbacks.nan_guard import NaNGuard
from lit_tricks.functional.lr_scale import scale_lr_
from lit_tricks.trainers.strategies import scale_learning_rates


def _opt_and_sched(lr: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))


def test_scaled_schedule_equals_a_schedule_built_on_the_scaled_lr() -> None:
    opt, sched = _opt_and_sched(0.1)
    ref_opt, ref_sched = _opt_and_sched(0.1 * 4)  # oracle: torch's own schedule from a 4x base lr
    scale_lr_([opt], [sched], 4)
    for _ in range(3):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        assert opt.param_groups[0]["initial_lr"] == pytest.approx(ref_opt.param_groups[0]["initial_lr"], rel=1e-12)
        assert sched.get_last_lr() == pytest.approx(ref_sched.get_last_lr(), rel=1e-12)
        assert sched.base_lrs == pytest.approx(ref_sched.base_lrs, rel=1e-12)
        opt.step(), ref_opt.step()
        sched.step(), ref_sched.step()


def test_tensor_lrs_and_other_values() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor(0.01))
    opt.param_groups[0]["note"] = "x"
    scale_lr_([opt], [object()], 0.5)  # a scheduler without base_lrs is left alone
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.005)
    assert "initial_lr" not in opt.param_groups[0] and opt.param_groups[0]["note"] == "x"


def test_trainers_and_nan_guard_use_the_one_rule() -> None:
    import inspect

    assert scale_learning_rates is scale_lr_
    assert "scale_lr_(" in inspect.getsource(NaNGuard._rollback)
