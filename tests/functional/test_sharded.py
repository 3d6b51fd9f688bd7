"""lit_tricks.functional.sharded on plain tensors (the DTensor paths run on 2 ranks in tests/matrix/test_sharded.py):
every function passes plain tensors through, and the global norm is torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_tricks.functional.sharded import (
    full,
    full_state_dict,
    global_norm,
    has_dtensors,
    is_dtensor,
    load_full_state_dict_,
    local,
    local_chunk,
    reduce_over_shards_,
)


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.float64,) * 3,
                                    (torch.float32, torch.float64, torch.float32)])
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, float("inf")])
def test_global_norm_of_plain_tensors_is_torchs(norm_type: float, dtypes: tuple[torch.dtype, ...]) -> None:
    """torch's value and dtype: float64 when any tensor is (to float64's precision when all are)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (7,), (0,)]
    tensors = [torch.randn(s, generator=g, dtype=torch.float64).to(d) for s, d in zip(shapes, dtypes)]
    expected = torch.nn.utils.get_total_norm(tensors[:2], norm_type)  # torch refuses the inf-norm of an empty one
    got = global_norm(tensors, norm_type)
    assert got.dtype == expected.dtype
    narrowest = torch.float32 if torch.float32 in dtypes else torch.float64
    torch.testing.assert_close(got, expected, rtol=4 * torch.finfo(narrowest).eps, atol=0)


def test_plain_tensors_and_modules_pass_through() -> None:
    t = torch.arange(6.0)
    assert not is_dtensor(t) and local(t) is t and full(t) is t and local_chunk(t, t) is t
    assert reduce_over_shards_(t, t) is t
    model = nn.Linear(3, 2)
    assert not has_dtensors(model)
    state = full_state_dict(model)
    assert state.keys() == model.state_dict().keys() and all(v.device.type == "cpu" for v in state.values())
    other = nn.Linear(3, 2)
    load_full_state_dict_(other, state)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
