"""Input-preprocessing statistics fit on the training split, and the transforms that apply them (torch only).

Every ``fit_*`` takes the training images as one tensor ``(N, C, ...)`` or an iterable of such chunks (so a large
dataset can be streamed), accumulates in float64 and returns float32 tensors. The matching ``apply`` functions take a
batch ``(N, C, ...)``. ``lit_tricks.data.preprocessing`` wraps them in modules whose statistics are buffers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

__all__ = [
    "center_channels",
    "center_features",
    "fit_channel_minmax",
    "fit_channel_stats",
    "fit_feature_mean",
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


def fit_channel_stats(images: Tensor | Iterable[Tensor], min_std: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population standard deviation (numpy's ``ddof=0``) over samples and pixels.

    Chunks are merged with Chan et al.'s parallel variance formula, so streaming equals one pass over all data.
    ``min_std`` floors the std so a constant channel does not divide by zero.
    """
    count = 0
    mean = m2 = torch.zeros(0, dtype=torch.float64)
    for chunk in _chunks(images):
        flat = _per_channel(chunk)
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
    std = (m2 / count).sqrt().clamp_min(min_std)
    return mean.float(), std.float()


def fit_channel_minmax(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel minimum and maximum over samples and pixels."""
    lo = hi = None
    for chunk in _chunks(images):
        flat = _per_channel(chunk)
        c_lo, c_hi = flat.min(dim=1).values, flat.max(dim=1).values
        lo = c_lo if lo is None else torch.minimum(lo, c_lo)
        hi = c_hi if hi is None else torch.maximum(hi, c_hi)
    assert lo is not None and hi is not None  # _chunks raises on empty input
    return lo.float(), hi.float()


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


def center_channels(x: Tensor, mean: Tensor) -> Tensor:
    """``x - mean[c]`` on a batch ``(N, C, ...)``: one mean per channel, no scaling."""
    return x - _channel_view(mean, x)


def center_features(x: Tensor, mean: Tensor) -> Tensor:
    """``x - mean`` with one mean per feature (``mean`` shaped like one sample, ``(C, ...)``)."""
    return x - mean.to(x.dtype)


def standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean[c]) / std[c]`` on a batch ``(N, C, ...)``."""
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


def minmax_scale(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Map the per-channel range ``[lo[c], hi[c]]`` of the training data to ``[-1, 1]``."""
    span = (hi - lo).clamp_min(1e-12)
    return 2.0 * (x - _channel_view(lo, x)) / _channel_view(span, x) - 1.0


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
