"""lit_tricks.functional.ema against closed-form results."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_tricks.functional.ema import (
    copy_,
    decay_from_half_life,
    ema_update_,
    named_ema_tensors,
    state_dict_aliases,
    strip_wrapper_prefixes,
    update_buffers_,
    warmup_decay,
)


def test_ema_update_matches_closed_form_over_steps() -> None:
    torch.manual_seed(0)
    ema = [torch.randn(3, 4), torch.randn(5)]
    e0 = [t.clone() for t in ema]
    xs = [[torch.randn(3, 4), torch.randn(5)] for _ in range(4)]
    d = 0.9
    for x in xs:
        ema_update_(ema, x, d)
    # ema_n = d^n e0 + (1 - d) * sum_k d^(n-1-k) x_k
    for i in range(2):
        expected = d**4 * e0[i] + sum((1 - d) * d ** (3 - k) * xs[k][i] for k in range(4))
        torch.testing.assert_close(ema[i], expected, rtol=1e-6, atol=1e-6)


def test_ema_update_edge_decays_copy_and_keep() -> None:
    ema, x = [torch.zeros(3)], [torch.arange(3.0)]
    ema_update_(ema, x, 1.0)
    assert torch.equal(ema[0], torch.zeros(3))
    ema_update_(ema, x, 0.0)
    assert torch.equal(ema[0], x[0])


def test_ema_update_is_bitwise_foreach_lerp() -> None:
    torch.manual_seed(1)
    ema = [torch.randn(7), torch.randn(2, 2)]
    ref = [t.clone() for t in ema]
    x = [torch.randn(7), torch.randn(2, 2)]
    ema_update_(ema, x, 0.999)
    for r, xi in zip(ref, x):
        r.lerp_(xi, 1 - 0.999)
    assert all(torch.equal(a, b) for a, b in zip(ema, ref))


def test_ema_update_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same length"):
        ema_update_([torch.zeros(1)], [], 0.5)


def test_warmup_decay_formula() -> None:
    assert warmup_decay(0.999, 0) == pytest.approx(1 / 10)
    assert warmup_decay(0.999, 5) == pytest.approx(6 / 15)
    assert warmup_decay(0.5, 100) == 0.5  # capped by decay
    assert [warmup_decay(0.999, t) for t in range(3)] == [min(0.999, (1 + t) / (10 + t)) for t in range(3)]


def test_half_life_halves_weight() -> None:
    d = decay_from_half_life(10)
    assert d**10 == pytest.approx(0.5)
    d4 = decay_from_half_life(10, update_every_n_steps=4)
    assert d4 == pytest.approx(0.5 ** (4 / 10))
    # one unit impulse decays to half after half_life_steps steps
    ema = [torch.ones(1)]
    for _ in range(10):
        ema_update_(ema, [torch.zeros(1)], d)
    assert ema[0].item() == pytest.approx(0.5, rel=1e-5)
    assert math.isclose(decay_from_half_life(1), 0.5)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf")])
def test_half_life_rejects_bad_values(bad: float) -> None:
    with pytest.raises(ValueError, match="half_life_steps"):
        decay_from_half_life(bad)


def test_buffers_integer_copied_float_averaged() -> None:
    bn = nn.BatchNorm1d(2)
    _, buffers = named_ema_tensors(bn)
    names = [n for n, _ in buffers]
    assert names == ["running_mean", "running_var", "num_batches_tracked"]
    ema = [torch.zeros(2), torch.ones(2), torch.tensor(0)]
    cur = [torch.full((2,), 4.0), torch.full((2,), 3.0), torch.tensor(7)]
    update_buffers_(ema, cur, 0.75, mode="average")
    assert torch.equal(ema[0], torch.full((2,), 1.0))  # 0.75 * 0 + 0.25 * 4
    assert torch.equal(ema[1], torch.full((2,), 1.5))
    assert ema[2].item() == 7 and ema[2].dtype == torch.int64
    update_buffers_(ema, cur, 0.75, mode="copy")
    assert all(torch.equal(a, b) for a, b in zip(ema, cur))
    with pytest.raises(ValueError, match="copy"):
        update_buffers_(ema, cur, 0.5, mode="mean")


def test_copy_and_named_tensors_split() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    params, buffers = named_ema_tensors(net)
    assert [n for n, _ in params] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [n for n, _ in buffers] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    dst = [torch.empty_like(p) for _, p in params]
    copy_(dst, [p for _, p in params])
    assert all(torch.equal(a, b) for a, (_, b) in zip(dst, params))


def test_strip_wrapper_prefixes() -> None:
    assert strip_wrapper_prefixes("model._orig_mod.fc.weight") == "model.fc.weight"
    assert strip_wrapper_prefixes("module.net.0.bias") == "net.0.bias"
    assert strip_wrapper_prefixes("net.0.bias") == "net.0.bias"


def test_state_dict_aliases_lists_every_key_of_a_shared_tensor() -> None:
    enc, dec, bn = nn.Linear(2, 2), nn.Linear(2, 2), nn.BatchNorm1d(2)
    dec.weight = enc.weight
    net = nn.ModuleDict({"enc": enc, "dec": dec, "bn": bn, "again": nn.ModuleDict({"bn": bn})})
    aliases = state_dict_aliases(net)
    assert aliases == {
        "enc.weight": ["enc.weight", "dec.weight"],
        "bn.weight": ["bn.weight", "again.bn.weight"],
        "bn.bias": ["bn.bias", "again.bn.bias"],
        "bn.running_mean": ["bn.running_mean", "again.bn.running_mean"],
        "bn.running_var": ["bn.running_var", "again.bn.running_var"],
        "bn.num_batches_tracked": ["bn.num_batches_tracked", "again.bn.num_batches_tracked"],
    }
    params, buffers = named_ema_tensors(net)
    firsts = {n for n, _ in params + buffers}
    assert set(aliases) <= firsts  # keyed by the names named_ema_tensors gives
    assert all(k in net.state_dict() for group in aliases.values() for k in group)
