"""lit_tricks.functional.clip against torch's clip_grad_norm_/clip_grad_value_, timm's AGC and numpy.percentile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lit_tricks.functional.clip import (
    adaptive_clip_grad_,
    autoclip_threshold,
    clip_grad_norm_,
    clip_grad_value_,
    grad_norm,
    push_history_,
    unitwise_norm,
)


def params_with_grads(seed: int = 0, scale: float = 3.0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (4,), (10, 4), (10,), (2, 2, 5)]
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    params.append(nn.Parameter(torch.zeros(3)))  # no grad: ignored
    return params


def clone(params: list[nn.Parameter]) -> list[nn.Parameter]:
    out = []
    for p in params:
        q = nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type: float, max_norm: float) -> None:
    ours, ref = params_with_grads(), params_with_grads()
    total = clip_grad_norm_(ours, max_norm, norm_type)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type, foreach=True)
    torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=0)
    for p, q in zip(ours, ref):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    after = grad_norm([p.grad for p in ours if p.grad is not None], norm_type)
    assert float(after) <= max(max_norm, float(total)) * (1 + 1e-5)


def test_clip_grad_norm_tensor_threshold_and_empty() -> None:
    params = params_with_grads()
    total = clip_grad_norm_(params, torch.tensor(1.0))
    assert float(total) > 1.0
    assert abs(float(grad_norm([p.grad for p in params if p.grad is not None])) - 1.0) < 1e-4
    assert float(clip_grad_norm_([nn.Parameter(torch.ones(2))], 1.0)) == 0.0
    # a known total norm is used as is (AutoClip computes it once for the history)
    again, ref = params_with_grads(), params_with_grads()
    known = grad_norm([p.grad for p in again if p.grad is not None])
    assert clip_grad_norm_(again, 1.0, total_norm=known) is known
    clip_grad_norm_(ref, 1.0)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(again, ref) if p.grad is not None)


def test_mixed_dtypes_are_grouped() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(4, dtype=torch.float64))
    a.grad, b.grad = torch.full((3,), 2.0), torch.full((4,), 2.0, dtype=torch.float64)
    total = clip_grad_norm_([a, b], 1.0)
    torch.testing.assert_close(total, torch.tensor(math.sqrt(7 * 4.0), dtype=torch.float64))  # float64, as torch's
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float64
    torch.testing.assert_close(grad_norm([a.grad, b.grad]), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)


def test_clip_grad_value_matches_torch() -> None:
    ours, ref = params_with_grads(), params_with_grads()
    clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(ref, 0.7)
    for p, q in zip(ours, ref):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)
    with pytest.raises(ValueError, match="max_value"):
        clip_grad_value_(ours, 0.0)


@pytest.mark.parametrize("scale", [1e-3, 3.0])
def test_agc_matches_timm(scale: float) -> None:
    from timm.utils.agc import adaptive_clip_grad

    ours, ref = params_with_grads(scale=scale), params_with_grads(scale=scale)
    clipped = adaptive_clip_grad_(ours, 0.01, 1e-3)
    adaptive_clip_grad(ref, 0.01, 1e-3)
    assert bool(clipped) == (scale > 1.0)
    for p, q in zip(ours, ref):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8)
    # the rule itself: every unit's grad norm <= factor * max(||w_unit||, eps)
    for p in ours:
        if p.grad is not None:
            bound = unitwise_norm(p.detach()).clamp_min(1e-3) * 0.01
            assert bool((unitwise_norm(p.grad) <= bound * (1 + 1e-5)).all())
    with pytest.raises(ValueError, match="clip_factor"):
        adaptive_clip_grad_(ours, 0.0)


def test_autoclip_percentile_matches_numpy_over_ring_buffer() -> None:
    values = torch.rand(25, generator=torch.Generator().manual_seed(3)) * 10
    history = torch.zeros(10)
    for i, v in enumerate(values):
        push_history_(history, i, v)
        got = autoclip_threshold(history, i + 1, 10.0)
        window = values[max(0, i + 1 - 10): i + 1].numpy()
        assert abs(float(got) - float(np.percentile(window, 10.0))) < 1e-5
    with pytest.raises(ValueError, match="count"):
        autoclip_threshold(history, 0, 10.0)


def test_autoclip_ignores_non_finite_norms() -> None:
    history = torch.zeros(4)
    for i, v in enumerate([1.0, float("inf"), float("nan"), 3.0]):
        push_history_(history, i, torch.tensor(v))
    assert torch.isnan(history[1]) and torch.isnan(history[2])
    assert float(autoclip_threshold(history, 4, 50.0)) == 2.0  # median of the finite norms 1 and 3


def test_push_history_records_a_value_without_its_graph_or_shape() -> None:
    """The ring is a record: a norm that requires grad (``backward(create_graph=True)``) is stored detached, and a
    one-element value of shape (1,) fills its slot without a resize warning."""
    import warnings

    history = torch.zeros(3)
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    push_history_(history, 0, torch.linalg.vector_norm(w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        push_history_(history, 1, torch.tensor([float("inf")]))
    assert history[0].item() == 5.0 and history.isnan()[1] and history.grad_fn is None


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_one_device_and_dtype_clips_bit_for_bit_as_torchs_foreach_kernel(norm_type: float) -> None:
    """Plain float32 gradients on one device take one foreach norm and one foreach multiply, as torch's
    clip_grad_norm_(foreach=True) does: the same total and gradients, exactly."""
    for max_norm in (0.5, 1e6):
        ours, ref = params_with_grads(seed=3), params_with_grads(seed=3)
        total = clip_grad_norm_(ours, max_norm, norm_type)
        assert torch.equal(total, torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type, foreach=True))
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, ref) if p.grad is not None)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_float64_gradients_are_clipped_at_float64_precision_as_torch(norm_type: float) -> None:
    """precision='64-true': the total norm and the clip factor are float64 as torch's (a float32 norm was off by
    ~1e7 float64 eps); 16-bit gradients keep their float32 norm."""
    ours, ref = params_with_grads(seed=5), params_with_grads(seed=5)
    for p, q in zip(ours, ref):
        p.data, q.data = p.data.double(), q.data.double()
        if p.grad is not None and q.grad is not None:
            p.grad, q.grad = p.grad.double(), q.grad.double()
    total = clip_grad_norm_(ours, 0.5, norm_type)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 0.5, norm_type, foreach=True)
    tol = 64 * torch.finfo(torch.float64).eps  # a few roundings of a sum of ~200 terms, relative
    assert total.dtype == torch.float64
    torch.testing.assert_close(total, ref_total, rtol=tol, atol=0)
    for p, q in zip(ours, ref):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=0)
    assert grad_norm([torch.ones(3, dtype=torch.bfloat16)]).dtype == torch.float32
