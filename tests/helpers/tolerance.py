"""Tolerances from the dtype's machine epsilon and the magnitudes compared, never from one machine's result.

Two computations of the same value through different kernels (vmap vs a loop, foreach vs per tensor, another CPU's
BLAS or vector width) differ by a few units in the last place (ulps) of the result, more for long reductions.
"""

from __future__ import annotations

import torch


def ulps(dtype: torch.dtype, n: float, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` of ``n`` ulps of ``dtype`` for values of magnitude up to ``scale``, for
    ``torch.testing.assert_close`` and ``torch.allclose``."""
    eps = torch.finfo(dtype).eps
    return {"rtol": n * eps, "atol": n * eps * scale}
