"""Preprocessing fits against numpy references; modules carry their statistics through a state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_tricks.data.preprocessing import PCAProject, build_preprocessor, fit_preprocessor
from lit_tricks.functional.preprocessing import (
    center_channels,
    center_features,
    fit_channel_minmax,
    fit_channel_stats,
    fit_feature_mean,
    fit_pca,
    fit_pca_whitening,
    fit_zca,
    minmax_scale,
    pca_project,
    pca_whiten,
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


def test_center_per_feature_is_numpy_mean_subtraction_over_axis_0() -> None:
    """The notes' X -= np.mean(X, axis=0): every feature (channel and pixel) gets its own training mean."""
    x, other = images(), images(n=20, seed=1)
    mean = fit_feature_mean(iter(x.split(37)))  # streamed in uneven chunks
    ref = x.double().numpy()
    assert mean.shape == (3, 4, 4)
    np.testing.assert_allclose(mean.numpy(), ref.mean(axis=0), atol=1e-6)
    centered = center_features(x, mean).double().numpy()
    np.testing.assert_allclose(centered, ref - ref.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(centered.mean(axis=0), np.zeros((3, 4, 4)), atol=1e-5)
    # held-out data is shifted by the training mean, not centred on its own
    np.testing.assert_allclose(center_features(other, mean).numpy(), other.numpy() - ref.mean(axis=0), atol=1e-5)


def test_center_subtracts_one_mean_per_channel_and_keeps_the_scale() -> None:
    x = images()
    mean = fit_channel_stats(x)[0]
    ref = x.double().numpy()
    y = center_channels(x, mean).double().numpy()
    np.testing.assert_allclose(y, ref - ref.mean(axis=(0, 2, 3), keepdims=True), atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), ref.std(axis=(0, 2, 3)), rtol=1e-5)  # no scaling


@pytest.mark.parametrize("eps", [1e-2, 1.0])
def test_pca_whitening_matches_numpy_and_its_covariance_is_lambda_over_lambda_plus_eps(eps: float) -> None:
    """z = (x - mu) U_k^T / sqrt(l + eps) (the notes: Xrot / sqrt(S + eps)); cov(z) = diag(l / (l + eps))."""
    x = images(n=2000, c=1, hw=3)
    flat = x.reshape(len(x), -1).double().numpy()
    centered = flat - flat.mean(0)
    cov = centered.T @ centered / len(flat)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1][:6], vectors[:, ::-1][:, :6]
    ref = centered @ vectors / np.sqrt(values + eps)
    mean, comps, var = fit_pca_whitening(x, 6, eps)
    z = pca_whiten(x, mean, comps, var, eps).double().numpy()
    assert z.shape == (2000, 6)
    np.testing.assert_allclose(np.abs(z), np.abs(ref), atol=1e-4)  # per-component signs are a convention
    z_cov = (z - z.mean(0)).T @ (z - z.mean(0)) / len(z)
    np.testing.assert_allclose(z_cov, np.diag(values / (values + eps)), atol=1e-4)
    tiny = pca_whiten(x, mean, comps, var, 1e-9).double().numpy()
    np.testing.assert_allclose(np.cov(tiny, rowvar=False, bias=True), np.eye(6), atol=1e-3)  # eps -> 0: identity
    with pytest.raises(ValueError, match="epsilon"):
        fit_pca_whitening(x, 6, 0.0)


@pytest.mark.parametrize("kind", ["none", "center", "center_per_feature", "standardize", "minmax", "pca",
                                  "pca_whiten", "zca"])
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
