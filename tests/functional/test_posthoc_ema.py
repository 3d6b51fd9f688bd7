"""lit_tricks.functional.posthoc_ema against closed forms: the profile's sigma_rel, the tracked EMA's weights, the
profiles' inner products (numerical quadrature), the least-squares reconstruction, and the Trainer-free state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_tricks.functional.posthoc_ema import (
    SIGMA_REL_MAX,
    PowerEMAProfiles,
    gamma_to_sigma_rel,
    power_ema_beta,
    power_profile_inner,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
    synthesize,
)

F64_EPS = torch.finfo(torch.float64).eps


@given(st.floats(min_value=1e-3, max_value=SIGMA_REL_MAX))
@settings(max_examples=60, deadline=None)
def test_sigma_rel_to_gamma_is_the_largest_root_of_the_papers_cubic(sigma_rel: float) -> None:
    gamma = sigma_rel_to_gamma(sigma_rel)
    t = sigma_rel**-2
    # the root of gamma^3 + 7 gamma^2 + (16 - t) gamma + (12 - t) (Algorithm 2), scaled by the polynomial's size
    residual = gamma**3 + 7 * gamma**2 + (16 - t) * gamma + (12 - t)
    assert abs(residual) <= 64 * F64_EPS * (gamma**3 + 7 * gamma**2 + (16 + t) * gamma + 12 + t)
    assert gamma >= 0 and math.isclose(gamma_to_sigma_rel(gamma), sigma_rel, rel_tol=1e-12)


def test_paper_values_and_bad_inputs() -> None:
    assert gamma_to_sigma_rel(0.0) == pytest.approx(1 / math.sqrt(12))  # the uniform average
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2: sigma_rel 0.05 <-> gamma ~ 17
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)  # and 0.10 <-> ~ 6.94
    for bad in (0.0, -0.1, 0.3, float("nan")):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)
    with pytest.raises(ValueError, match="gamma"):
        gamma_to_sigma_rel(-1.0)


@pytest.mark.parametrize("gamma", [0.0, 1.5, 6.94])
def test_tracked_ema_has_the_closed_form_weights(gamma: float) -> None:
    """beta_t = ((t-1)/t)^(g+1) telescopes: ema_T = sum_t ((t/T)^(g+1) - ((t-1)/T)^(g+1)) theta_t."""
    torch.manual_seed(0)
    thetas = torch.randn(40, 3, dtype=torch.float64)
    state = PowerEMAProfiles([gamma])
    state.bind([("w", thetas[0] * 0 + 123.0)])  # the initial weights never count (beta = 0 at the first update)
    for t in range(40):
        assert state.step([thetas[t]])
    T = 40
    weights = torch.tensor([((t / T) ** (gamma + 1) - ((t - 1) / T) ** (gamma + 1)) for t in range(1, T + 1)],
                           dtype=torch.float64)
    torch.testing.assert_close(state.shadows[0][0], weights @ thetas, rtol=1e-12, atol=1e-12)


def test_update_every_uses_the_steps_since_the_previous_update() -> None:
    state = PowerEMAProfiles([2.0], update_every=3)
    state.bind([("w", torch.zeros(()))])
    seen = [state.step([torch.tensor(float(t))]) for t in range(1, 10)]
    assert seen == [False, False, True, False, False, True, False, False, True]
    # updates at t = 3, 6, 9 with delta 3: beta_3 = 0 (copy), then ((t - 3) / t)^3
    expected = 3.0
    for t in (6, 9):
        b = power_ema_beta(2.0, t, 3)
        expected = b * expected + (1 - b) * t
    assert state.shadows[0][0].item() == pytest.approx(expected, rel=1e-6)


def _quadrature_inner(t_a: float, g_a: float, t_b: float, g_b: float, n: int = 200_000) -> float:
    tau = (torch.arange(n, dtype=torch.float64) + 0.5) / n * min(t_a, t_b)
    pa = (g_a + 1) * tau**g_a / t_a ** (g_a + 1)
    pb = (g_b + 1) * tau**g_b / t_b ** (g_b + 1)
    return float((pa * pb).sum() * min(t_a, t_b) / n)


@pytest.mark.parametrize(("t_a", "g_a", "t_b", "g_b"), [(100, 6.9, 100, 17.0), (40, 17.0, 100, 6.9),
                                                         (100, 3.0, 30, 0.0), (7, 0.0, 7, 0.0)])
def test_profile_inner_product_matches_numerical_integration(t_a: float, g_a: float, t_b: float, g_b: float) -> None:
    closed = power_profile_inner(*(torch.tensor(float(v), dtype=torch.float64) for v in (t_a, g_a, t_b, g_b)))
    assert float(closed) == pytest.approx(_quadrature_inner(t_a, g_a, t_b, g_b), rel=1e-6)


def test_a_stored_profile_at_the_last_snapshot_is_that_snapshot() -> None:
    steps = [s for s in range(100, 1001, 100) for _ in range(2)]
    gammas = [sigma_rel_to_gamma(s) for _ in range(10) for s in (0.05, 0.10)]
    x = solve_posthoc_coefficients(steps, gammas, [1000.0, 1000.0], [gammas[-2], gammas[-1]], normalize=False)
    expected = torch.zeros(20, 2, dtype=torch.float64)
    expected[-2, 0] = expected[-1, 1] = 1.0
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-8)
    normalized = solve_posthoc_coefficients(steps, gammas, [1000.0], [sigma_rel_to_gamma(0.07)])
    assert normalized.dtype == torch.float64 and float(normalized.sum()) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="distinct"):
        solve_posthoc_coefficients([10, 10], [1.0, 1.0], [10], [1.0])


def test_reconstruction_of_a_stored_profile_equals_the_tracked_ema() -> None:
    torch.manual_seed(0)
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    state = PowerEMAProfiles(gammas)
    w = torch.randn(50)
    state.bind([("w", w)])
    snaps, steps, gs = [], [], []
    for t in range(1, 301):
        w = w + 0.1 * torch.randn(50)
        state.step([w])
        if t % 30 == 0:
            for g, p in zip(gammas, state.profiles()):
                snaps.append({"w": p["w"].clone()})
                steps.append(t)
                gs.append(g)
    x = solve_posthoc_coefficients(steps, gs, [300.0], [gammas[0]])
    (out,) = synthesize(snaps, x)
    tracked = state.profiles()[0]["w"]
    assert float((out["w"] - tracked).norm() / tracked.norm()) < 1e-6


def test_synthesize_is_the_weighted_sum_and_refuses_other_keys() -> None:
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 5.0])}
    (out,) = synthesize(iter([a, b]), torch.tensor([[0.25], [0.75]], dtype=torch.float64))
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 4.25]))
    with pytest.raises(ValueError, match="other tensors"):
        synthesize([a, {"v": torch.zeros(2)}], torch.ones(2, 1))
    with pytest.raises(ValueError, match="inputs"):
        synthesize([a], torch.ones(2, 1))


def test_state_roundtrip_resumes_bitwise() -> None:
    torch.manual_seed(0)
    ws = [torch.randn(4) for _ in range(12)]
    a = PowerEMAProfiles([1.0, 5.0], update_every=2)
    a.bind([("w", ws[0])])
    for w in ws:
        a.step([w])
    b = PowerEMAProfiles([1.0, 5.0], update_every=2)
    b.bind([("w", ws[0])])
    for w in ws[:5]:
        b.step([w])
    c = PowerEMAProfiles([1.0, 5.0], update_every=2)
    c.load_state_dict(b.state_dict())
    c.bind([("module.w", ws[0])])  # a wrapped model's names match
    for w in ws[5:]:
        c.step([w])
    assert all(torch.equal(x, y) for x, y in zip(a.shadows[0] + a.shadows[1], c.shadows[0] + c.shadows[1]))
    with pytest.raises(ValueError, match="gammas"):
        PowerEMAProfiles([2.0]).load_state_dict(b.state_dict())
    with pytest.raises(RuntimeError, match="another model"):
        d = PowerEMAProfiles([1.0, 5.0])
        d.load_state_dict(b.state_dict())
        d.bind([("w", torch.zeros(5))])


def test_bf16_weights_get_fp32_shadows_that_keep_small_updates() -> None:
    w = torch.ones(4, dtype=torch.bfloat16)
    state = PowerEMAProfiles([0.0])  # the uniform average: late updates have weight 1/t
    state.bind([("w", w)])
    assert state.shadows[0][0].dtype == torch.float32
    bf16 = w.clone()
    for t in range(1, 1001):
        x = torch.full((4,), 1.0 + (t > 500) * 0.0078125, dtype=torch.bfloat16)  # one bf16 ulp above 1 after 500
        state.step([x])
        bf16.lerp_(x, 1.0 / t)  # the same average kept in bf16
    # the exact average is 1 + 0.0078125 / 2; fp32 keeps it, bf16 rounds the 1/t increments away
    assert state.shadows[0][0][0].item() == pytest.approx(1.00390625, abs=1e-6)
    assert bf16[0].item() != pytest.approx(1.00390625, abs=1e-3)
