"""Preprocessing fits against numpy references; modules carry their statistics through a state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_tricks.data.preprocessing import PCAProject, build_preprocessor, fit_preprocessor
from lit_tricks.functional.preprocessing import (
    fit_channel_minmax,
    fit_channel_stats,
    fit_pca,
    fit_zca,
    minmax_scale,
    pca_project,
    standardize,
    zca_whiten,
)


def images(n: int = 300, c: int = 3, hw: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 0.5, 2.0][:c]).view(1, c, 1, 1)
    return torch.rand(n, c, hw, hw, generator=g) * scale + torch.arange(c).view(1, c, 1, 1)


def test_channel_stats_match_numpy_and_stream() -> None:
    x = images()
    mean, std = fit_channel_stats(x)
    ref = x.double().numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), ref.std(axis=(0, 2, 3)), rtol=1e-6)
    streamed = fit_channel_stats(iter(x.split(7)))
    assert torch.allclose(streamed[0], mean, atol=1e-6) and torch.allclose(streamed[1], std, atol=1e-6)
    y = standardize(x, mean, std).double()
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)


def test_minmax_maps_training_range_to_minus_one_one() -> None:
    x = images()
    lo, hi = fit_channel_minmax(iter(x.split(50)))
    np.testing.assert_allclose(lo.numpy(), x.numpy().min(axis=(0, 2, 3)))
    np.testing.assert_allclose(hi.numpy(), x.numpy().max(axis=(0, 2, 3)))
    y = minmax_scale(x, lo, hi)
    assert torch.allclose(y.amin((0, 2, 3)), -torch.ones(3), atol=1e-6)
    assert torch.allclose(y.amax((0, 2, 3)), torch.ones(3), atol=1e-6)


def test_pca_matches_numpy_svd_and_variance_fraction() -> None:
    x = images(c=1)
    flat = x.reshape(len(x), -1).double().numpy()
    centered = flat - flat.mean(0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    variance = s**2 / len(flat)
    mean, comps, var = fit_pca(x, 5)
    assert comps.shape == (5, 16)
    np.testing.assert_allclose(var.numpy(), variance[:5], rtol=1e-4)
    # same subspace as numpy's (signs are a convention): |cos| between matching components is 1
    np.testing.assert_allclose(np.abs((comps.double().numpy() * vt[:5]).sum(1)), np.ones(5), atol=1e-4)
    z = pca_project(x, mean, comps).double()
    np.testing.assert_allclose(z.var(0, unbiased=False).numpy(), variance[:5], rtol=1e-3)
    k = int(np.searchsorted(np.cumsum(variance) / variance.sum(), 0.9) + 1)
    assert fit_pca(x, 0.9)[1].shape[0] == k
    with pytest.raises(ValueError, match="components"):
        fit_pca(x, 17)


def test_zca_whitens_to_near_identity_and_keeps_shape() -> None:
    x = images(n=2000, c=1, hw=3)
    mean, w = fit_zca(x, epsilon=1e-6)
    y = zca_whiten(x, mean, w)
    assert y.shape == x.shape
    flat = y.reshape(len(y), -1).double()
    cov = (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / len(flat)
    assert torch.allclose(cov, torch.eye(9, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(w, w.T, atol=1e-5)  # ZCA = the symmetric whitening
    with pytest.raises(ValueError, match="epsilon"):
        fit_zca(x, epsilon=0.0)


@pytest.mark.parametrize("kind", ["none", "standardize", "minmax", "pca", "zca"])
def test_module_state_dict_round_trip_gives_same_outputs(kind: str) -> None:
    x = images(c=1)
    fitted = fit_preprocessor(kind, x, pca_components=0.95, zca_epsilon=0.01)
    fresh = build_preprocessor(kind)
    fresh.load_state_dict(fitted.state_dict())  # buffers of another shape (empty) than at construction
    assert torch.equal(fresh(x), fitted(x))
    state = torch.load(_save(fitted.state_dict()), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in fitted.state_dict().items())


def test_pca_module_loads_a_different_number_of_components() -> None:
    x = images(c=1)
    five, seven = fit_preprocessor("pca", x, pca_components=5), fit_preprocessor("pca", x, pca_components=7)
    assert isinstance(five, PCAProject)
    five.load_state_dict(seven.state_dict())
    assert five(x).shape == (len(x), 7) and five.output_dims((1, 4, 4)) == (7, 1, 1)


def test_unfitted_module_and_unknown_kind_are_refused() -> None:
    with pytest.raises(RuntimeError, match="no statistics"):
        build_preprocessor("standardize")(images())
    with pytest.raises(ValueError, match=r"preprocessing: expected one of .*'zca'.*got 'whiten'"):
        build_preprocessor("whiten")


def _save(obj: object) -> object:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer
