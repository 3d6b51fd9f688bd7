"""The one BatchNorm recalibration: torch's update_bn as the oracle, the batch-unpacking rule, restore on error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lit_tricks.functional.batchnorm import batch_inputs, recalibrate_bn_


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_matches_torch_update_bn_with_the_same_unpacking_rule() -> None:
    data = [(torch.randn(6, 3), torch.zeros(6)) for _ in range(3)] + [torch.randn(6, 3)]  # tuples and a bare tensor
    ours, ref = _net(), _net()
    assert recalibrate_bn_(ours, data, num_batches=3) == 3
    torch.optim.swa_utils.update_bn(data[:3], ref)
    torch.testing.assert_close(ours[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var)
    assert batch_inputs([1, 2]) == 1 and batch_inputs((3,)) == 3 and batch_inputs("x") == "x"


def test_restores_mode_and_momentum_after_an_error() -> None:
    model = _net().eval()

    def boom(m: nn.Module, batch: object) -> None:
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        recalibrate_bn_(model, [torch.randn(2, 3)], boom)
    assert not model.training and model[1].momentum == 0.1


def test_no_batchnorm_is_a_no_op() -> None:
    model = nn.Linear(3, 2)
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_bn_(model, [torch.randn(2, 3)]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
