"""benchmarks/step_cost.py's per-step window: refused when it is not steps ``1 <= short < long`` (``--short 0`` read
``ends[-1]``: a cost of 0), and its global optimizer hook is removed when a runner raises."""

from __future__ import annotations

import pytest
import torch


def _runner(steps: int) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for _ in range(steps):
        opt.step()


@pytest.mark.parametrize(("short", "long"), [(0, 5), (5, 5), (6, 5), (-1, 5)])
def test_a_window_that_is_not_short_before_long_is_refused(short: int, long: int) -> None:
    from benchmarks.step_cost import per_step_costs

    with pytest.raises(ValueError, match="short"):
        per_step_costs({"a": _runner}, short=short, long=long, repeats=1)


def test_the_hook_is_removed_when_a_runner_raises() -> None:
    from torch.optim.optimizer import _global_optimizer_post_hooks

    from benchmarks.step_cost import per_step_costs

    def failing(steps: int) -> None:
        _runner(1)
        raise KeyError("boom")

    before = len(_global_optimizer_post_hooks)
    with pytest.raises(KeyError):
        per_step_costs({"a": failing}, short=1, long=3, repeats=1)
    assert len(_global_optimizer_post_hooks) == before
