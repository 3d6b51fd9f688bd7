"""Input-preprocessing statistics fit on the training split, and the transforms that apply them (torch only).

Every ``fit_*`` takes the training images as one tensor ``(N, C, ...)`` or an iterable of such chunks (so a large
dataset can be streamed), accumulates in float64 and returns float32 tensors. The matching ``apply`` functions take a
batch ``(N, C, ...)``. ``lit_tricks.data.preprocessing`` wraps them in modules whose statistics are buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

__all__ = [
    "center_channels",
    "center_features",
    "fit_channel_minmax",
    "fit_channel_stats",
    "fit_feature_mean",
    "fit_feature_minmax",
    "fit_feature_stats",
    "fit_pca",
    "fit_pca_whitening",
    "fit_zca",
    "minmax_scale",
    "pca_project",
    "pca_whiten",
    "standardize",
    "zca_whiten",
]

CHUNK = 4096


def _chunks(images: Tensor | Iterable[Tensor]) -> Iterator[Tensor]:
    """Float64 chunks ``(n, C, ...)`` of ``images``; an empty input is an error."""
    parts = images.split(CHUNK) if isinstance(images, Tensor) else images
    seen = False
    for part in parts:
        if part.dim() < 2 or part.shape[0] == 0:
            if part.dim() >= 2:
                continue
            raise ValueError(f"images: expected batches shaped (N, C, ...), got shape {tuple(part.shape)}")
        seen = True
        yield part.detach().to(torch.float64)
    if not seen:
        raise ValueError("images: no samples to fit the preprocessing statistics on (empty training split)")


def _per_channel(x: Tensor) -> Tensor:
    """``(n, C, ...)`` -> ``(C, n * prod(...))``."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


class _PerFeature:
    """``(n, C, ...)`` -> ``(C * prod(...), n)``: one row per feature (pixel and channel); remembers the shape of
    one sample, to give the statistics back in it."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()

    def __call__(self, x: Tensor) -> Tensor:
        self.shape = tuple(x.shape[1:])
        return x.reshape(x.shape[0], -1).T


def _moments(images: Tensor | Iterable[Tensor], rows: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, int]:
    """Mean and population variance of every row of ``rows(chunk)`` over all chunks, and the sample count; chunks
    merged with Chan et al.'s parallel variance formula, so streaming equals one pass over all data."""
    count = 0
    mean = m2 = torch.zeros(0, dtype=torch.float64)
    for chunk in _chunks(images):
        flat = rows(chunk)
        n = flat.shape[1]
        c_mean = flat.mean(dim=1)
        c_m2 = ((flat - c_mean[:, None]) ** 2).sum(dim=1)
        if count == 0:
            mean, m2 = c_mean, c_m2
        else:
            delta = c_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + c_m2 + delta**2 * (count * n / total)
        count += n
    return mean, m2 / count, count


def _scale(var: Tensor, mean: Tensor, count: int) -> Tensor:
    """``sqrt(var)``, with 1 for a feature indistinguishable from a constant: var within the rounding bound of the
    two-pass algorithm, ``n eps var + (n mean eps)^2`` (Chan, Golub & LeVeque), as scikit-learn's StandardScaler."""
    eps = torch.finfo(torch.float64).eps
    constant = var <= count * eps * var + (count * mean * eps) ** 2
    return torch.where(constant, torch.ones_like(var), var.sqrt())


def fit_channel_stats(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population standard deviation (numpy's ``ddof=0``) over samples and pixels.

    A constant channel gets the scale 1 (scikit-learn's rule), so standardizing it only centres it.
    """
    mean, var, count = _moments(images, _per_channel)
    return mean.float(), _scale(var, mean, count).float()


def fit_feature_stats(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and population standard deviation of every feature (pixel and channel) over the samples, each shaped
    like one sample ``(C, ...)``: the notes' (001, 002) ``X -= np.mean(X, axis=0); X /= np.std(X, axis=0)``. A constant
    feature (an always-black border pixel) gets the scale 1, as in scikit-learn's StandardScaler."""
    rows = _PerFeature()
    mean, var, count = _moments(images, rows)
    return mean.float().reshape(rows.shape), _scale(var, mean, count).float().reshape(rows.shape)


def _min_max(images: Tensor | Iterable[Tensor], rows: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    lo = hi = None
    for chunk in _chunks(images):
        flat = rows(chunk)
        c_lo, c_hi = flat.min(dim=1).values, flat.max(dim=1).values
        lo = c_lo if lo is None else torch.minimum(lo, c_lo)
        hi = c_hi if hi is None else torch.maximum(hi, c_hi)
    assert lo is not None and hi is not None  # _chunks raises on empty input
    return lo.float(), hi.float()


def fit_channel_minmax(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel minimum and maximum over samples and pixels."""
    return _min_max(images, _per_channel)


def fit_feature_minmax(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Minimum and maximum of every feature over the samples, each shaped like one sample ``(C, ...)``."""
    rows = _PerFeature()
    lo, hi = _min_max(images, rows)
    return lo.reshape(rows.shape), hi.reshape(rows.shape)


def fit_feature_mean(images: Tensor | Iterable[Tensor]) -> Tensor:
    """Mean of every feature (pixel and channel) over the samples: ``X.mean(axis=0)``, shaped ``(C, ...)``.

    The notes' (002) most common preprocessing step, ``X -= np.mean(X, axis=0)``, subtracts it.
    """
    count = 0
    total = torch.zeros(0, dtype=torch.float64)
    for chunk in _chunks(images):
        total = chunk.sum(dim=0) if count == 0 else total + chunk.sum(dim=0)
        count += chunk.shape[0]
    return (total / count).float()


def _mean_and_covariance(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and population covariance ``(D, D)`` of the flattened images, shifted for accuracy."""
    count = 0
    shift = total = outer = torch.zeros(0, dtype=torch.float64)
    for chunk in _chunks(images):
        flat = chunk.reshape(chunk.shape[0], -1)
        if count == 0:
            shift = flat.mean(dim=0)
            total = torch.zeros_like(shift)
            outer = torch.zeros(shift.numel(), shift.numel(), dtype=torch.float64)
        centered = flat - shift
        total += centered.sum(dim=0)
        outer += centered.T @ centered
        count += flat.shape[0]
    offset = total / count
    cov = outer / count - torch.outer(offset, offset)
    return shift + offset, (cov + cov.T) / 2


def _sorted_eigh(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors as rows, signs fixed (largest |entry| positive)."""
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1).T
    pivot = vectors.abs().argmax(dim=1)
    signs = vectors.gather(1, pivot[:, None]).sign()
    signs[signs == 0] = 1.0
    return values, vectors * signs


def fit_pca(images: Tensor | Iterable[Tensor], components: int | float = 0.99) -> tuple[Tensor, Tensor, Tensor]:
    """Principal components of the flattened images: ``(mean (D,), components (k, D), explained_variance (k,))``.

    components: an int keeps that many components; a float in (0, 1] keeps the fewest whose explained variance
    reaches that fraction of the total.
    """
    if isinstance(components, bool) or not isinstance(components, int | float):
        raise TypeError(f"components: expected an int k >= 1 or a float fraction in (0, 1], got {components!r}")
    mean, cov = _mean_and_covariance(images)
    values, vectors = _sorted_eigh(cov)
    dim = values.numel()
    if isinstance(components, int):
        if not 1 <= components <= dim:
            raise ValueError(f"components: expected an int in [1, {dim}] (the input dimension), got {components}")
        k = components
    else:
        if not 0.0 < components <= 1.0:
            raise ValueError(f"components: expected a float fraction in (0, 1], got {components}")
        ratio = values.cumsum(0) / values.sum().clamp_min(1e-300)
        k = min(int((ratio < components - 1e-12).sum()) + 1, dim)
    return mean.float(), vectors[:k].float(), values[:k].float()


def fit_zca(images: Tensor | Iterable[Tensor], epsilon: float = 0.1) -> tuple[Tensor, Tensor]:
    """ZCA whitening of the flattened images: ``(mean (D,), W (D, D))`` with ``W = U diag((l + epsilon)^-1/2) U^T``.

    epsilon: added to every eigenvalue ``l`` of the covariance; it bounds the gain on low-variance directions
    (Krizhevsky 2009, appendix; Coates & Ng 2011 use 0.01-0.1 for pixel data in [0, 1]).
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon: expected a positive float, got {epsilon!r}")
    mean, cov = _mean_and_covariance(images)
    values, vectors = _sorted_eigh(cov)
    whitening = vectors.T @ torch.diag((values + epsilon).rsqrt()) @ vectors
    return mean.float(), whitening.float()


def fit_pca_whitening(images: Tensor | Iterable[Tensor], components: int | float = 0.99,
                      epsilon: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """PCA whitening: ``(mean (D,), components (k, D), eigenvalues (k,))`` of :func:`fit_pca`; ``epsilon`` is checked
    here and applied by :func:`pca_whiten`, ``z = (x - mean) U_k^T / sqrt(eigenvalue + epsilon)``.

    The notes (001, 002): rotate into the eigenbasis, then divide every coordinate by the square root of its
    eigenvalue; epsilon keeps low-variance directions from being blown up to noise. The whitened covariance is
    ``diag(l / (l + epsilon))``, the identity as epsilon -> 0.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon: expected a positive float, got {epsilon!r}")
    return fit_pca(images, components)


def _channel_view(stat: Tensor, x: Tensor) -> Tensor:
    return stat.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def _stat_view(stat: Tensor, x: Tensor) -> Tensor:
    """A statistic broadcast over a batch ``(N, C, ...)``: one value per channel when it is 1-D, else one per
    feature (shaped like one sample)."""
    return _channel_view(stat, x) if stat.dim() == 1 else stat.to(x.dtype)


def _nonzero_scale(scale: Tensor) -> Tensor:
    """1 where ``scale`` is within rounding of 0 (``< 10 eps``, scikit-learn's ``_handle_zeros_in_scale``)."""
    return torch.where(scale < 10 * torch.finfo(scale.dtype).eps, torch.ones_like(scale), scale)


def center_channels(x: Tensor, mean: Tensor) -> Tensor:
    """``x - mean[c]`` on a batch ``(N, C, ...)``: one mean per channel, no scaling."""
    return x - _channel_view(mean, x)


def center_features(x: Tensor, mean: Tensor) -> Tensor:
    """``x - mean`` with one mean per feature (``mean`` shaped like one sample, ``(C, ...)``)."""
    return x - mean.to(x.dtype)


def standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` on a batch ``(N, C, ...)``: per channel for 1-D ``(C,)`` statistics, per feature for
    statistics shaped like one sample; a scale within rounding of 0 counts as 1 (a constant feature is only
    centred, as by scikit-learn's StandardScaler)."""
    return (x - _stat_view(mean, x)) / _stat_view(_nonzero_scale(std), x)


def minmax_scale(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Map the training range ``[lo, hi]`` (per channel for 1-D statistics, else per feature) to ``[-1, 1]``; a
    constant feature (``hi == lo``) gets the span 1, so it maps to -1, as by scikit-learn's
    ``MinMaxScaler(feature_range=(-1, 1))``."""
    span = _nonzero_scale(hi - lo)
    return 2.0 * (x - _stat_view(lo, x)) / _stat_view(span, x) - 1.0


def pca_project(x: Tensor, mean: Tensor, components: Tensor) -> Tensor:
    """Coordinates of the flattened batch on the principal components: ``(N, k)``."""
    flat = x.reshape(x.shape[0], -1)
    return (flat - mean.to(flat.dtype)) @ components.to(flat.dtype).T


def zca_whiten(x: Tensor, mean: Tensor, whitening: Tensor) -> Tensor:
    """``(x - mean) W`` on the flattened batch, reshaped back to the input's shape."""
    flat = x.reshape(x.shape[0], -1)
    return ((flat - mean.to(flat.dtype)) @ whitening.to(flat.dtype)).reshape(x.shape)


def pca_whiten(x: Tensor, mean: Tensor, components: Tensor, eigenvalues: Tensor, epsilon: float | Tensor) -> Tensor:
    """PCA-whitened flat batch ``(N, k)``: ``(x - mean) U_k^T / sqrt(eigenvalues + epsilon)``."""
    z = pca_project(x, mean, components)
    return z * (eigenvalues.to(z.dtype) + torch.as_tensor(epsilon, dtype=z.dtype, device=z.device)).rsqrt()
