"""What a training run asks its callbacks after ``fit``: the one interface, instead of knowing their classes.

Two small typed protocols; a callback implements them by having the members (no base class, no registration):

- :class:`FailsFit`: ``stop_reason`` is None, or why the callback stopped the fit because training failed
  (:class:`~lit_tricks.callbacks.NaNGuard` after a diverged run). A run that ends so is a failed run.
- :class:`EvaluatesVariant`: the callback's weight variant (``"ema"``) produced the evaluated metrics, and
  ``variant_checkpoint(path)`` is the file holding that variant's weights beside checkpoint ``path``
  (:class:`~lit_tricks.callbacks.EMAWeights` and its ``ema-X.ckpt`` twins).

:func:`fit_failure`, :func:`evaluated_variant` and :func:`variant_checkpoint` ask a Trainer's callbacks. The
metric names of a variant (``val/acc_ema``) and how a module evaluates it are :mod:`lit_tricks.weight_variants`'.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

__all__ = ["EvaluatesVariant", "FailsFit", "evaluated_variant", "fit_failure", "variant_checkpoint"]


@runtime_checkable
class FailsFit(Protocol):
    """A callback that may stop a fit because training failed; ``stop_reason`` says why (None: it did not)."""

    stop_reason: str | None


@runtime_checkable
class EvaluatesVariant(Protocol):
    """A callback whose weight variant may be what validation/test evaluated, saved beside each checkpoint."""

    def evaluated_variant(self) -> str | None:
        """The variant name (``"ema"``) when the evaluated metrics come from its weights, else None."""
        ...

    def variant_checkpoint(self, path: str | os.PathLike[str]) -> str | None:
        """The existing file holding the variant's weights saved beside checkpoint ``path``, else None."""
        ...


def fit_failure(callbacks: Iterable[object]) -> str | None:
    """The ``stop_reason`` of the first callback that stopped the fit as failed, or None."""
    return next((cb.stop_reason for cb in callbacks if isinstance(cb, FailsFit) and cb.stop_reason), None)


def evaluated_variant(callbacks: Iterable[object]) -> str | None:
    """The weight variant the evaluated metrics come from (``"ema"``), or None: the trained weights."""
    return next((v for cb in callbacks if isinstance(cb, EvaluatesVariant) and (v := cb.evaluated_variant())), None)


def variant_checkpoint(callbacks: Iterable[object], path: str | os.PathLike[str] | None) -> str | None:
    """The file beside checkpoint ``path`` holding the evaluated variant's weights, or None."""
    if not path:
        return None
    found = (cb.variant_checkpoint(path) for cb in callbacks if isinstance(cb, EvaluatesVariant))
    return next((f for f in found if f), None)
