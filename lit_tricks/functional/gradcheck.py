"""Numerical gradient check of any module's loss: float64 copy, centered differences, relative error per tensor."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "GOOD",
    "KINK_MODULES",
    "OK",
    "ROUNDOFF_ULPS",
    "SUSPICIOUS",
    "WRONG",
    "GradCheckReport",
    "TensorCheck",
    "gradient_check",
    "relative_error",
    "verdict",
]

#: The notes' thresholds on the relative error (CS231n, "Gradient checks").
WRONG = 1e-2  # above: the gradient is probably wrong
SUSPICIOUS = 1e-4  # above: uncomfortable; below: usually fine when the loss has kinks
GOOD = 1e-7  # below: good, also for smooth losses (tanh, softmax)
OK = SUSPICIOUS
#: A float64 loss evaluation is trusted to this many ulps of ``max(|f|, 1)`` (reduction order differs between CPUs
#: and BLAS kernels); the centered difference then resolves a gradient entry only to ``ROUNDOFF_ULPS * eps * |f| / h``.
ROUNDOFF_ULPS = 10

#: Modules whose non-differentiable points (kinks) make isolated large errors expected.
KINK_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardshrink,
    nn.Softshrink, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss,
)

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def relative_error(analytic: torch.Tensor, numeric: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    """Elementwise ``|a - n| / max(|a|, |n|, floor)``; 0 where ``|a - n|`` is 0."""
    diff = (analytic - numeric).abs()
    scale = torch.maximum(analytic.abs(), numeric.abs()).clamp_min(floor)
    return diff / scale


def verdict(error: float, has_kinks: bool = False) -> str:
    """The notes' reading of a relative error: ``wrong`` > 1e-2 >= ``suspicious`` > 1e-4 >= ``ok`` > 1e-7 >= ``good``.

    Without kinks (tanh, softmax) an error in (1e-7, 1e-4] is already ``suspicious``.
    """
    if not math.isfinite(error) or error > WRONG:
        return "wrong"
    if error > SUSPICIOUS:
        return "suspicious"
    if error > GOOD:
        return "ok" if has_kinks else "suspicious"
    return "good"


@dataclass
class TensorCheck:
    """The check of one parameter tensor: the sampled flat indices and their gradients and errors."""

    name: str
    indices: list[int]
    analytic: list[float]
    numeric: list[float]
    errors: list[float]

    @property
    def max_error(self) -> float:
        return max(self.errors, default=0.0)


@dataclass
class GradCheckReport:
    """Result of :func:`gradient_check`; ``worst`` names the tensor with the largest relative error."""

    tensors: list[TensorCheck]
    has_kinks: bool
    eps: float
    notes: list[str] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max((t.max_error for t in self.tensors), default=0.0)

    @property
    def worst(self) -> TensorCheck | None:
        return max(self.tensors, key=lambda t: t.max_error, default=None)

    @property
    def verdict(self) -> str:
        return verdict(self.max_error, self.has_kinks)

    def summary(self) -> str:
        """A few lines: verdict, worst tensor and entry, and the notes."""
        worst = self.worst
        lines = [f"gradient check: {self.verdict} (max relative error {self.max_error:.3e}, eps={self.eps:g})"]
        if worst is not None and worst.errors:
            i = max(range(len(worst.errors)), key=worst.errors.__getitem__)
            lines.append(
                f"worst tensor {worst.name!r} entry {worst.indices[i]}: analytic {worst.analytic[i]:.6e} "
                f"numeric {worst.numeric[i]:.6e} relative error {worst.errors[i]:.3e}"
            )
        lines.extend(self.notes)
        return "\n".join(lines)


def _to_double(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, tuple | list):
        return type(batch)(_to_double(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_double(v) for k, v in batch.items()}
    return batch


def _head(batch: Any, n: int) -> Any:
    """The first ``n`` samples of every tensor in a batch (dim 0)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.dim() > 0 else batch
    if isinstance(batch, tuple | list):
        return type(batch)(_head(b, n) for b in batch)
    if isinstance(batch, dict):
        return {k: _head(v, n) for k, v in batch.items()}
    return batch


def _sample_indices(numel: int, k: int, generator: torch.Generator) -> list[int]:
    if numel <= k:
        return list(range(numel))
    return sorted(torch.randperm(numel, generator=generator)[:k].tolist())


def gradient_check(
    module: nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    entries_per_tensor: int = 10,
    eps: float | None = None,
    seed: int = 0,
    rel_floor: float = 1e-3,
    max_samples: int | None = None,
    param_filter: Callable[[str, nn.Parameter], bool] | None = None,
) -> GradCheckReport:
    """Compare autograd gradients of ``loss_fn(module, batch)`` with centered differences on a float64 copy.

    The module is deep-copied and cast to float64 (``module`` itself is untouched); dropout layers are put in eval
    mode, every loss evaluation runs under a forked RNG seeded with ``seed`` (so batch-level augmentation draws the
    same numbers each time) and the batch is fixed.
    ``loss_fn``: ``(module, batch) -> scalar`` (for a LightningModule's own ``training_step`` pass
    :func:`lit_tricks.diagnostics.training_step.training_step_loss_fn`). ``entries_per_tensor``: sampled entries of each
    parameter tensor (all when smaller). ``eps``: the step ``h``; None = 1e-5 for smooth models, 1e-6 with kinks
    (fewer kinks crossed). ``rel_floor``: an entry whose gradient is below
    ``rel_floor`` times the largest sampled one of its tensor is compared relative to that floor instead. The
    centered difference itself resolves an entry only to ``noise = ROUNDOFF_ULPS * eps_mach * max(|f|, 1) / h``
    (~2.2e-10 for |f| ~ 1, h = 1e-5, whatever the CPU), so the denominator is also floored at ``noise / GOOD``
    (``noise / SUSPICIOUS`` with kinks): round-off alone then reads at most as ``good`` (``ok``), never
    ``suspicious``, while a 1% error still reads ``suspicious`` on entries above 1% of that floor. ``max_samples``:
    check on the first samples of the batch only; fewer samples mean fewer kinks a +-h step can cross (CS231n).

    Numeric gradient ``n = (f(w + h) - f(w - h)) / 2h``, relative error ``|a - n| / max(|a|, |n|)``; verdicts by
    CS231n's thresholds (see :func:`verdict`).
    """
    if entries_per_tensor < 1:
        raise ValueError(f"entries_per_tensor must be >= 1, got {entries_per_tensor}")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0 or None, got {eps}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    fn = loss_fn
    model = copy.deepcopy(module).double()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.eval()
    batch64 = _to_double(batch if max_samples is None else _head(batch, max_samples))
    has_kinks = any(isinstance(m, KINK_MODULES) for m in model.modules())
    if eps is None:  # a kink is crossed with probability ~h: small h; a smooth loss: larger h, less round-off
        eps = 1e-6 if has_kinks else 1e-5
    named = [(n, p) for n, p in model.named_parameters()
             if p.requires_grad and (param_filter is None or param_filter(n, p))]
    if not named:
        raise ValueError("gradient_check: the module has no trainable parameters to check (see param_filter)")

    def evaluate() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            loss = fn(model, batch64)
        if loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        return loss.reshape(())

    model.zero_grad(set_to_none=True)
    loss = evaluate()
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    # The centered difference's own round-off (ROUNDOFF_ULPS * eps_mach * |f| / h) must read as at most the finest
    # error the verdict distinguishes (GOOD; SUSPICIOUS with kinks), so smaller gradients are compared against that.
    noise = ROUNDOFF_ULPS * torch.finfo(torch.float64).eps * max(abs(loss.item()), 1.0) / eps
    noise_floor = noise / (SUSPICIOUS if has_kinks else GOOD)
    generator = torch.Generator().manual_seed(seed)
    tensors: list[TensorCheck] = []
    with torch.no_grad():
        for (name, p), g in zip(named, grads):
            grad = torch.zeros_like(p) if g is None else g
            flat, gflat = p.view(-1), grad.reshape(-1)
            idx = _sample_indices(p.numel(), entries_per_tensor, generator)
            numeric: list[float] = []
            for i in idx:
                orig = flat[i].item()
                flat[i] = orig + eps
                plus = evaluate().item()
                flat[i] = orig - eps
                minus = evaluate().item()
                flat[i] = orig
                numeric.append((plus - minus) / (2 * eps))
            analytic = gflat[idx]
            num = torch.tensor(numeric, dtype=torch.float64)
            # Entries far below the tensor's largest sampled gradient are drowned in round-off (eps_mach * |f| / h),
            # so their denominator is floored at rel_floor times that largest gradient.
            floor = max(rel_floor * float(torch.maximum(analytic.abs(), num.abs()).max()), noise_floor)
            errors = relative_error(analytic, num, floor)
            tensors.append(TensorCheck(name, idx, analytic.tolist(), numeric, errors.tolist()))
    notes: list[str] = []
    if has_kinks:
        notes.append("note: the model has kinks (ReLU/max/abs); an entry whose +-eps step crosses a kink can show a "
                     "large error although the gradient is right; errors up to 1e-4 are fine, re-check with "
                     "another seed or a smaller eps before trusting a single outlier.")
    if any(g is None for g in grads):
        unused = [n for (n, _), g in zip(named, grads) if g is None]
        notes.append(f"note: parameters not used by the loss (gradient taken as 0): {unused}")
    return GradCheckReport(tensors, has_kinks, eps, notes)
