"""Standardization and min-max scaling, per channel and per feature, against scikit-learn's StandardScaler and
MinMaxScaler(feature_range=(-1, 1)): a constant channel or feature gets the scale 1 (issue 25, defect 4), and the
notes' per-feature ``X /= np.std(X, axis=0)``. Outputs are float32: tolerances are a few float32 eps of values <= 10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from lit_tricks.data.preprocessing import MinMaxScale, Standardize, build_preprocessor, fit_preprocessor
from lit_tricks.functional.preprocessing import (
    fit_channel_minmax,
    fit_channel_stats,
    fit_feature_minmax,
    fit_feature_stats,
    minmax_scale,
    standardize,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _images(seed: int = 0, n: int = 200) -> torch.Tensor:
    """(n, 3, 4, 4): channel 1 constant 0.5; the border pixels of channel 0 always 0 (as digits' borders)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g) * torch.tensor([1.0, 0.0, 3.0]).view(1, 3, 1, 1)
    x[:, 1] = 0.5
    x[:, 0, 0, :] = 0.0
    return x


def _per_channel(x: torch.Tensor) -> np.ndarray:
    return x.transpose(0, 1).reshape(x.shape[1], -1).T.double().numpy()  # (samples * pixels, C)


def _sklearn(scaler: StandardScaler | MinMaxScaler, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    return np.asarray(scaler.fit(train).transform(test))


def test_a_constant_channel_is_centred_not_blown_up() -> None:
    x = _images()
    mean, std = fit_channel_stats(x)
    assert float(std[1]) == 1.0
    lo, hi = fit_channel_minmax(x)
    near = torch.full((1, 3, 4, 4), 0.5 + 1 / 255)  # a test value 1/255 away from the constant channel's
    assert abs(float(standardize(near, mean, std)[0, 1, 0, 0]) - 1 / 255) < 1e-6
    assert abs(float(minmax_scale(near, lo, hi)[0, 1, 0, 0]) - (2 / 255 - 1)) < 1e-6


@pytest.mark.parametrize("kind", ["standardize", "minmax"])
def test_per_channel_matches_sklearn_on_the_channels_pixels(kind: str) -> None:
    train, test = _images(0), _images(1, n=20) + 1 / 255
    scaler = StandardScaler() if kind == "standardize" else MinMaxScaler(feature_range=(-1, 1))
    expected = _sklearn(scaler, _per_channel(train), _per_channel(test))
    out = fit_preprocessor(kind, train)(test)
    np.testing.assert_allclose(_per_channel(out), expected, **TOL)
    if kind == "standardize":
        np.testing.assert_allclose(fit_channel_stats(train)[1].numpy(), scaler.scale_, **TOL)


@pytest.mark.parametrize("kind", ["standardize_per_feature", "minmax_per_feature"])
def test_per_feature_matches_sklearn_on_flat_samples(kind: str) -> None:
    train, test = _images(0), _images(1, n=20) + 1 / 255
    scaler = StandardScaler() if kind == "standardize_per_feature" else MinMaxScaler(feature_range=(-1, 1))
    expected = _sklearn(scaler, train.reshape(len(train), -1).double().numpy(),
                        test.reshape(len(test), -1).double().numpy())
    fitted = fit_preprocessor(kind, iter(train.split(64)))  # streamed in chunks
    assert isinstance(fitted, Standardize | MinMaxScale)
    assert all(b.shape == (3, 4, 4) for b in fitted.buffers())  # one statistic per feature
    out = fitted(test)
    assert out.shape == test.shape
    np.testing.assert_allclose(out.reshape(len(test), -1).numpy(), expected, **TOL)
    fresh = build_preprocessor(kind)  # rebuilt from a checkpoint: the buffers' shape says per feature
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(fresh(test), out)


def test_per_feature_stats_stream_and_match_numpy_axis_0() -> None:
    x = _images()
    flat = x.reshape(len(x), -1).double().numpy()
    mean, std = fit_feature_stats(iter(x.split(7)))
    np.testing.assert_allclose(mean.reshape(-1).numpy(), flat.mean(0), **TOL)
    varying = flat.std(0) > 0
    np.testing.assert_allclose(std.reshape(-1).numpy()[varying], flat.std(0)[varying], **TOL)
    assert (std.reshape(-1).numpy()[~varying] == 1.0).all() and (~varying).sum() == 16 + 4
    lo, hi = fit_feature_minmax(x)
    np.testing.assert_array_equal(lo.reshape(-1).numpy(), flat.min(0).astype(np.float32))
    np.testing.assert_array_equal(hi.reshape(-1).numpy(), flat.max(0).astype(np.float32))


def test_a_checkpoint_with_the_old_floored_std_gives_the_scale_one() -> None:
    x = _images()
    mean, std = fit_channel_stats(x)
    old = std.clone()
    old[1] = 1e-8  # what a constant channel's std was floored to before
    torch.testing.assert_close(standardize(x, mean, old), standardize(x, mean, std))
