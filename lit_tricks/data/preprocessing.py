"""Preprocessing modules whose statistics are buffers, so a checkpoint carries them (fit on the training split only).

The LightningModule applies the preprocessor to raw inputs (``forward(x) = model(preprocess(x))``), so predict on raw
images after a reload gives the same outputs. Every module is constructible without statistics (empty buffers) and
loads buffers of any shape from a state dict, e.g. a PCA with a different number of components.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lit_tricks.functional.preprocessing import (
    center_channels,
    center_features,
    fit_channel_minmax,
    fit_channel_stats,
    fit_feature_mean,
    fit_feature_minmax,
    fit_feature_stats,
    fit_pca,
    fit_pca_whitening,
    fit_zca,
    minmax_scale,
    pca_project,
    pca_whiten,
    standardize,
    zca_whiten,
)

__all__ = [
    "PREPROCESSING",
    "CenterChannels",
    "CenterFeatures",
    "FittedPreprocessor",
    "MinMaxScale",
    "NoPreprocessing",
    "PCAProject",
    "PCAWhiten",
    "Standardize",
    "ZCAWhiten",
    "build_preprocessor",
    "fit_preprocessor",
]


class FittedPreprocessor(nn.Module):
    """Base class: named float buffers (empty until fit) that load from a state dict whatever their shape."""

    buffer_names: tuple[str, ...] = ()
    #: True when the output is a flat ``(N, k)`` vector (PCA), not the input's shape: only models that take vectors
    #: (an MLP) can follow it.
    flat_output: ClassVar[bool] = False

    def __init__(self, **stats: Tensor | None) -> None:
        super().__init__()
        unknown = sorted(set(stats) - set(self.buffer_names))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown statistics {unknown}; expected {list(self.buffer_names)}")
        for name in self.buffer_names:
            value = stats.get(name)
            self.register_buffer(name, torch.empty(0) if value is None else value.detach().clone().float())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.buffer_names:
            incoming = state_dict.get(prefix + name)
            current = self._buffers.get(name)
            if isinstance(incoming, Tensor) and current is not None and incoming.shape != current.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        """Whether the statistics are set (all buffers non-empty)."""
        return all(isinstance(b, Tensor) and b.numel() > 0 for b in (self._buffers.get(n) for n in self.buffer_names))

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} has no statistics: fit it or load a state dict first")

    def output_dims(self, dims: tuple[int, int, int]) -> tuple[int, int, int]:
        """Shape of one preprocessed sample given the raw ``(C, H, W)``."""
        return dims

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={tuple(self._buffers[n].shape)}" for n in self.buffer_names)  # type: ignore[union-attr]


class NoPreprocessing(FittedPreprocessor):
    """Identity (``preprocessing="none"``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class CenterChannels(FittedPreprocessor):
    """``x - mean[c]``: one training mean per channel subtracted, no scaling (the notes' per-channel centring)."""

    buffer_names = ("mean",)
    mean: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return center_channels(x, self.mean)


class CenterFeatures(FittedPreprocessor):
    """``x - mean``, one training mean per feature (pixel and channel): the notes' ``X -= np.mean(X, axis=0)``."""

    buffer_names = ("mean",)
    mean: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return center_features(x, self.mean)


class Standardize(FittedPreprocessor):
    """``(x - mean) / std`` with statistics of the training split: per channel (``(C,)`` buffers, ``standardize``)
    or per feature (buffers shaped like one sample, ``standardize_per_feature``: the notes' ``X /= np.std(X,
    axis=0)``). A constant channel or feature has the scale 1 (scikit-learn's rule): it is only centred."""

    buffer_names = ("mean", "std")
    mean: Tensor
    std: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return standardize(x, self.mean, self.std)


class MinMaxScale(FittedPreprocessor):
    """Maps the training range ``[lo, hi]`` to ``[-1, 1]``, per channel (``(C,)`` buffers, ``minmax``) or per feature
    (buffers shaped like one sample, ``minmax_per_feature``); a constant one maps to -1 (span 1, as scikit-learn)."""

    buffer_names = ("lo", "hi")
    lo: Tensor
    hi: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return minmax_scale(x, self.lo, self.hi)


class PCAProject(FittedPreprocessor):
    """Projection on the top-k principal components of the training split; outputs a flat ``(N, k)`` vector.

    Models after it must accept flat inputs (e.g. ``MLP``); the DataModule's ``model_dims`` is ``(k, 1, 1)``.
    """

    buffer_names = ("mean", "components", "explained_variance")
    mean: Tensor
    components: Tensor
    explained_variance: Tensor

    flat_output = True

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return pca_project(x, self.mean, self.components)

    def output_dims(self, dims: tuple[int, int, int]) -> tuple[int, int, int]:
        return (int(self.components.shape[0]), 1, 1)


class PCAWhiten(FittedPreprocessor):
    """PCA whitening ``(x - mean) U_k^T / sqrt(eigenvalue + epsilon)`` on the top-k components; flat ``(N, k)`` output.

    ``epsilon`` is a one-element buffer, so the checkpoint carries it with the statistics.
    """

    buffer_names = ("mean", "components", "explained_variance", "epsilon")
    mean: Tensor
    components: Tensor
    explained_variance: Tensor
    epsilon: Tensor

    flat_output = True

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return pca_whiten(x, self.mean, self.components, self.explained_variance, self.epsilon)

    def output_dims(self, dims: tuple[int, int, int]) -> tuple[int, int, int]:
        return (int(self.components.shape[0]), 1, 1)


class ZCAWhiten(FittedPreprocessor):
    """ZCA whitening ``(x - mean) W`` of the flattened image; keeps the image shape."""

    buffer_names = ("mean", "whitening")
    mean: Tensor
    whitening: Tensor

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return zca_whiten(x, self.mean, self.whitening)


def _fit_none(images: Iterable[Tensor] | Tensor, **_: Any) -> FittedPreprocessor:
    return NoPreprocessing()


def _fit_center(images: Iterable[Tensor] | Tensor, **_: Any) -> FittedPreprocessor:
    return CenterChannels(mean=fit_channel_stats(images)[0])


def _fit_center_per_feature(images: Iterable[Tensor] | Tensor, **_: Any) -> FittedPreprocessor:
    return CenterFeatures(mean=fit_feature_mean(images))


def _fit_scaler(cls: type[FittedPreprocessor],
                fit: Callable[[Iterable[Tensor] | Tensor], tuple[Tensor, Tensor]]) -> Callable[..., FittedPreprocessor]:
    """The fit function of a two-statistic scaler: ``cls(**dict(zip(cls.buffer_names, fit(images))))``."""

    def fitter(images: Iterable[Tensor] | Tensor, **_: Any) -> FittedPreprocessor:
        return cls(**dict(zip(cls.buffer_names, fit(images), strict=True)))

    return fitter


def _fit_pca(images: Iterable[Tensor] | Tensor, pca_components: int | float = 0.99, **_: Any) -> FittedPreprocessor:
    mean, components, variance = fit_pca(images, pca_components)
    return PCAProject(mean=mean, components=components, explained_variance=variance)


def _fit_pca_whiten(images: Iterable[Tensor] | Tensor, pca_components: int | float = 0.99, zca_epsilon: float = 0.1,
                    **_: Any) -> FittedPreprocessor:
    mean, components, variance = fit_pca_whitening(images, pca_components, zca_epsilon)
    return PCAWhiten(mean=mean, components=components, explained_variance=variance,
                     epsilon=torch.tensor([float(zca_epsilon)]))


def _fit_zca(images: Iterable[Tensor] | Tensor, zca_epsilon: float = 0.1, **_: Any) -> FittedPreprocessor:
    mean, whitening = fit_zca(images, zca_epsilon)
    return ZCAWhiten(mean=mean, whitening=whitening)


#: name -> (module class, fit function taking the training images and the options pca_components / zca_epsilon;
#: zca_epsilon is the whitening epsilon of both zca and pca_whiten).
PREPROCESSING: dict[str, tuple[type[FittedPreprocessor], Callable[..., FittedPreprocessor]]] = {
    "none": (NoPreprocessing, _fit_none),
    "center": (CenterChannels, _fit_center),
    "center_per_feature": (CenterFeatures, _fit_center_per_feature),
    "standardize": (Standardize, _fit_scaler(Standardize, fit_channel_stats)),
    "minmax": (MinMaxScale, _fit_scaler(MinMaxScale, fit_channel_minmax)),
    "standardize_per_feature": (Standardize, _fit_scaler(Standardize, fit_feature_stats)),
    "minmax_per_feature": (MinMaxScale, _fit_scaler(MinMaxScale, fit_feature_minmax)),
    "pca": (PCAProject, _fit_pca),
    "pca_whiten": (PCAWhiten, _fit_pca_whiten),
    "zca": (ZCAWhiten, _fit_zca),
}


def _entry(kind: str) -> tuple[type[FittedPreprocessor], Callable[..., FittedPreprocessor]]:
    if kind not in PREPROCESSING:
        raise ValueError(f"preprocessing: expected one of {sorted(PREPROCESSING)}, got {kind!r}")
    return PREPROCESSING[kind]


def build_preprocessor(kind: str) -> FittedPreprocessor:
    """An unfitted preprocessor of ``kind`` (statistics come from ``load_state_dict``, e.g. a checkpoint)."""
    return _entry(kind)[0]()


def fit_preprocessor(kind: str, images: Iterable[Tensor] | Tensor, *, pca_components: int | float = 0.99,
                     zca_epsilon: float = 0.1) -> FittedPreprocessor:
    """Fit the ``kind`` preprocessor on ``images`` (the training split, raw, un-augmented; a tensor or chunks)."""
    return _entry(kind)[1](images, pca_components=pca_components, zca_epsilon=zca_epsilon)
