"""Ensembles of models: combining members' outputs, loop and vmap evaluation, export, uniform weight averaging (soup).

BatchNorm recalibration of a soup is :func:`lit_tricks.functional.batchnorm.recalibrate_bn_` (re-exported here).

``combine`` rules map stacked member logits ``[M, N, C]`` to class probabilities ``[N, C]``:
``mean_prob`` = (1/M) sum_m softmax(z_m) (the default), ``mean_logit`` = softmax((1/M) sum_m z_m),
``vote`` = fraction of members whose argmax is each class (majority vote; ties go to the lower class index).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.functional.batchnorm import recalibrate_bn_

__all__ = [
    "COMBINERS",
    "EnsembleModule",
    "average_state_dicts",
    "combine",
    "export_ensemble",
    "recalibrate_bn_",
    "stack_logits_loop",
    "stack_logits_vmap",
]


def _mean_prob(logits: Tensor) -> Tensor:
    return logits.float().softmax(-1).mean(0)


def _mean_logit(logits: Tensor) -> Tensor:
    return logits.float().mean(0).softmax(-1)


def _vote(logits: Tensor) -> Tensor:
    winners = logits.argmax(-1, keepdim=True)
    votes = torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, winners, 1.0)
    return votes.mean(0)


#: name -> function of stacked logits ``[M, N, C]`` returning probabilities ``[N, C]``.
COMBINERS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean_prob": _mean_prob,
    "mean_logit": _mean_logit,
    "vote": _vote,
}


def combine(logits: Tensor, method: str = "mean_prob") -> Tensor:
    """Combine stacked member logits ``[M, N, C]`` into ensemble probabilities ``[N, C]`` (see the module doc)."""
    fn = COMBINERS.get(method)
    if fn is None:
        raise ValueError(f"combine must be one of {sorted(COMBINERS)}, got {method!r}")
    return fn(logits)


def stack_logits_loop(models: Sequence[nn.Module], x: Any) -> Tensor:
    """Outputs of each model on ``x``, one after the other, stacked to ``[M, ...]``."""
    return torch.stack([m(x) for m in models])


def stack_logits_vmap(
    models: Sequence[nn.Module], x: Tensor, stacked: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
) -> Tensor:
    """Outputs of same-architecture models on ``x`` in one ``torch.func.vmap`` over their stacked weights.

    ``stacked`` = ``torch.func.stack_module_state(models)`` may be passed to avoid re-stacking on every call. The
    models must be in eval mode (no batch statistics, no dropout randomness).
    """
    if stacked is None:
        stacked = torch.func.stack_module_state(list(models))  # type: ignore[arg-type]
    params, buffers = stacked
    base = models[0]

    def one(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(base, (p, b), (x,))

    return torch.func.vmap(one)(params, buffers)


class EnsembleModule(nn.Module):
    """``forward(x)`` = ensemble class probabilities ``[N, C]`` of ``members`` (each mapping x to logits).

    ``use_vmap``: evaluate members with ``torch.func.vmap`` over stacked weights instead of a loop (the loop is the
    CPU default: vmap measured 0.7-0.8x its speed there). Members are put in eval mode and treated as frozen: the
    stacked weights for vmap are cached per device (call :meth:`refresh` after changing a member).
    """

    def __init__(self, members: Iterable[nn.Module], combine: str = "mean_prob", use_vmap: bool = False) -> None:
        super().__init__()
        if combine not in COMBINERS:
            raise ValueError(f"combine must be one of {sorted(COMBINERS)}, got {combine!r}")
        self.members = nn.ModuleList(members)
        if len(self.members) == 0:
            raise ValueError("members must hold at least one model, got none")
        self.combine = combine
        self.use_vmap = use_vmap
        self._stacked: dict[torch.device, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
        self.eval()

    def refresh(self) -> None:
        """Forget the cached stacked weights (after a member changed)."""
        self._stacked.clear()

    def member_logits(self, x: Tensor) -> Tensor:
        """Stacked member outputs ``[M, N, C]``."""
        if self.use_vmap and len(self.members) > 1:
            device = x.device
            if device not in self._stacked:
                with torch.no_grad():
                    self._stacked[device] = torch.func.stack_module_state(list(self.members))  # type: ignore[arg-type]
            return stack_logits_vmap(list(self.members), x, self._stacked[device])
        return stack_logits_loop(list(self.members), x)

    def forward(self, x: Tensor) -> Tensor:
        return COMBINERS[self.combine](self.member_logits(x))


class _TraceableEnsemble(nn.Module):
    """A loop-only ensemble whose forward ``torch.fx`` can trace into plain torch calls."""

    def __init__(self, members: Sequence[nn.Module], combine: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: Tensor) -> Tensor:
        return COMBINERS[self.combine](torch.stack([m(x) for m in self.members]))


def export_ensemble(
    members: Sequence[nn.Module], combine: str = "mean_prob", example_input: Tensor | None = None
) -> nn.Module | torch.export.ExportedProgram:
    """One ``nn.Module`` computing the ensemble probabilities that loads without lit_tricks (nor the members' classes).

    Without ``example_input`` the members are traced with ``torch.fx.symbolic_trace`` into a ``GraphModule`` made of
    ``torch.nn`` layers only; pickle it with ``torch.save(m, path)`` and load it anywhere torch is installed with
    ``torch.load(path, weights_only=False)``. With ``example_input`` it uses ``torch.export`` (for members fx cannot
    trace) and returns the ``torch.export.ExportedProgram`` itself: save it with ``torch.export.save(program, path)``
    and ``torch.export.load(path).module()`` is the callable module again (``program.module()`` holds local closures
    that no pickler accepts, and a program saved with ``torch.save`` does not load back in torch 2.14, so use
    ``torch.export.save``).
    """
    if combine not in COMBINERS:
        raise ValueError(f"combine must be one of {sorted(COMBINERS)}, got {combine!r}")
    frozen = [copy.deepcopy(m).eval() for m in members]
    for m in frozen:
        m.requires_grad_(False)
    wrapper = _TraceableEnsemble(frozen, combine).eval()
    if example_input is not None:
        return torch.export.export(wrapper, (example_input,))
    try:
        return torch.fx.symbolic_trace(wrapper)
    except Exception as err:  # fx cannot trace data-dependent control flow
        raise RuntimeError(
            "torch.fx could not trace the ensemble members "
            f"({type(err).__name__}: {err}); pass example_input=<a batch> to export with torch.export instead"
        ) from err


def average_state_dicts(state_dicts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Uniform average of state dicts with the same keys (a "uniform model soup", Wortsman et al. 2022).

    Floating-point entries are averaged in float64 then cast back; integer entries (BatchNorm's
    ``num_batches_tracked``) are taken from the first state dict.
    """
    if not state_dicts:
        raise ValueError("state_dicts must hold at least one state dict, got none")
    keys = list(state_dicts[0].keys())
    for i, sd in enumerate(state_dicts[1:], start=1):
        if list(sd.keys()) != keys:
            missing = sorted(set(keys) ^ set(sd.keys()))
            raise ValueError(f"state_dicts[{i}] has different keys than state_dicts[0]: {missing[:5]}")
    out: dict[str, Tensor] = {}
    for key in keys:
        first = state_dicts[0][key]
        if torch.is_floating_point(first) or torch.is_complex(first):
            acc = torch.stack([sd[key].detach().to(torch.float64) for sd in state_dicts]).mean(0)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = first.detach().clone()
    return out
