"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2):
power-function EMA profiles tracked during training, and the least-squares reconstruction of an EMA of any other
length from snapshots of them (torch only).

A power-function EMA at training time ``t`` averages the weights ``theta(tau)``, ``0 < tau <= t``, with the density
``p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)``; its width relative to ``t`` is
``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (EDM2 eq. 123; ``gamma = 0``, the uniform average,
is the widest: ``sigma_rel = 1/sqrt(12)``). It is tracked by ``ema <- beta * ema + (1 - beta) * theta`` after each
update, ``beta = (1 - delta / t)^(gamma + 1)`` with ``t`` the optimizer steps done and ``delta`` the steps since the
previous update (eq. 127; ``beta = 0`` at the first update, so the initial weights never count).

Reconstruction (Algorithm 3): snapshots ``i`` of profiles ``(t_i, gamma_i)`` and a target ``(t_r, gamma_r)``;
``A_ij = <p_i, p_j>``, ``B_i = <p_i, p_r>`` (closed-form inner products, eq. 151), ``X = A^-1 B`` in float64, and
the synthesized EMA is ``sum_i X_i snapshot_i``. EDM2's code normalizes ``X`` to sum to 1 (``normalize=True``);
ema-pytorch's ``PostHocEMA`` does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lit_tricks.functional import sharded
from lit_tricks.functional.ema_shadows import average_, new_shadow
from lit_tricks.functional.wrappers import match_wrapped_keys

__all__ = [
    "SIGMA_REL_MAX",
    "PowerEMAProfiles",
    "gamma_to_sigma_rel",
    "power_ema_beta",
    "power_profile_inner",
    "sigma_rel_to_gamma",
    "solve_posthoc_coefficients",
    "synthesize",
]

#: ``sigma_rel`` of ``gamma = 0`` (the uniform average): no power-function profile is wider.
SIGMA_REL_MAX = 1.0 / math.sqrt(12.0)


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power-function profile of exponent ``gamma >= 0`` (EDM2 eq. 123)."""
    if not (isinstance(gamma, int | float) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    g = float(gamma)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma >= 0`` whose profile has relative standard deviation ``sigma_rel`` (EDM2 Algorithm 2).

    The largest real root of ``gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2)``; found by bisection in float64
    on ``[0, 2 / sigma_rel + 10]``, where :func:`gamma_to_sigma_rel` decreases strictly.
    """
    if not (isinstance(sigma_rel, int | float) and 0 < sigma_rel <= SIGMA_REL_MAX):
        raise ValueError(f"sigma_rel must be a number in (0, {SIGMA_REL_MAX:.6f}], got {sigma_rel!r}")
    lo, hi = 0.0, 2.0 / float(sigma_rel) + 10.0
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return hi if abs(gamma_to_sigma_rel(hi) - sigma_rel) < abs(gamma_to_sigma_rel(lo) - sigma_rel) else lo
        if gamma_to_sigma_rel(mid) > sigma_rel:
            lo = mid
        else:
            hi = mid


def power_ema_beta(gamma: float, step: int, delta: int = 1) -> float:
    """``(1 - delta / step)^(gamma + 1)``: the decay of the update after optimizer step ``step`` (1-based) when the
    previous update was ``delta`` steps earlier (EDM2 eq. 127)."""
    if step < 1 or not 1 <= delta <= step:
        raise ValueError(f"need 1 <= delta <= step, got step={step!r}, delta={delta!r}")
    return (1.0 - delta / step) ** (gamma + 1.0)


def power_profile_inner(t_a: Tensor, gamma_a: Tensor, t_b: Tensor, gamma_b: Tensor) -> Tensor:
    """Inner products ``<p_a, p_b>`` of power-function profiles (broadcast; EDM2 eq. 151, Algorithm 3)."""
    ratio = t_a / t_b
    exponent = torch.where(t_a < t_b, gamma_b, -gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio**exponent / ((gamma_a + gamma_b + 1) * torch.maximum(t_a, t_b))


def solve_posthoc_coefficients(
    in_steps: Sequence[float], in_gammas: Sequence[float], out_steps: Sequence[float], out_gammas: Sequence[float],
    normalize: bool = True,
) -> Tensor:
    """Least-squares coefficients ``X [n_in, n_out]`` (float64) such that ``sum_i X[i, j] * snapshot_i`` is the EMA
    of profile ``(out_steps[j], out_gammas[j])``; snapshot ``i`` is the profile ``(in_steps[i], in_gammas[i])``.

    ``normalize=True`` scales each column to sum to 1, as EDM2's ``solve_posthoc_coefficients`` does.
    """
    if len(in_steps) != len(in_gammas) or len(out_steps) != len(out_gammas) or not in_steps:
        raise ValueError(f"need as many steps as gammas and at least one snapshot, got {len(in_steps)} steps, "
                         f"{len(in_gammas)} gammas (in), {len(out_steps)} steps, {len(out_gammas)} gammas (out)")
    pairs = list(zip(map(float, in_steps), map(float, in_gammas)))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"snapshots must be distinct (step, gamma) pairs, got duplicates among {pairs}")
    f64 = torch.float64
    t_i, g_i = torch.tensor(in_steps, dtype=f64), torch.tensor(in_gammas, dtype=f64)
    t_r, g_r = torch.tensor(out_steps, dtype=f64), torch.tensor(out_gammas, dtype=f64)
    if bool((t_i <= 0).any() | (t_r <= 0).any() | (g_i < 0).any() | (g_r < 0).any()):
        raise ValueError("steps must be > 0 and gammas >= 0")
    a = power_profile_inner(t_i[:, None], g_i[:, None], t_i[None, :], g_i[None, :])
    b = power_profile_inner(t_i[:, None], g_i[:, None], t_r[None, :], g_r[None, :])
    x = torch.linalg.solve(a, b)
    return x / x.sum(0, keepdim=True) if normalize else x


@torch.no_grad()
def synthesize(inputs: Iterable[Mapping[str, Tensor]], coefficients: Tensor) -> list[dict[str, Tensor]]:
    """``out[j][k] = sum_i coefficients[i, j] * inputs[i][k]`` for every key ``k``, accumulated in float64 and cast
    back to the dtype of the first input; one pass over ``inputs`` (a generator that loads each snapshot in turn
    keeps one in memory). Every input must hold the same keys and shapes."""
    coefficients = coefficients.to(torch.float64)
    n_in, n_out = coefficients.shape
    acc: list[dict[str, Tensor]] = []
    dtypes: dict[str, torch.dtype] = {}
    count = 0
    for i, tensors in enumerate(inputs):
        if i >= n_in:
            raise ValueError(f"more inputs than coefficient rows ({n_in})")
        if not acc:
            dtypes = {k: v.dtype for k, v in tensors.items()}
            acc = [{k: torch.zeros(v.shape, dtype=torch.float64) for k, v in tensors.items()} for _ in range(n_out)]
        if tensors.keys() != dtypes.keys():
            raise ValueError(f"input {i} holds other tensors than input 0: {sorted(set(tensors) ^ set(dtypes))[:5]}")
        for j in range(n_out):
            c = float(coefficients[i, j])
            for k, v in tensors.items():
                acc[j][k].add_(v.detach().to(device="cpu", dtype=torch.float64), alpha=c)
        count += 1
    if count != n_in:
        raise ValueError(f"got {count} inputs for {n_in} coefficient rows")
    return [{k: v.to(dtypes[k]) for k, v in out.items()} for out in acc]


class PowerEMAProfiles:
    """Power-function EMAs of one list of floating-point tensors, one per exponent in ``gammas``: the Trainer-free
    state of :class:`lit_tricks.callbacks.PostHocEMA`.

    :meth:`bind` names the tensors (and matches a loaded state to them); :meth:`step` counts optimizer steps and
    updates every ``update_every``-th one (the first update copies). The shadows are EMAState's
    (:mod:`~lit_tricks.functional.ema_shadows`): fp32 for bf16/fp16 tensors, and for DTensor parameters of a sharded
    model DTensors placed like them, updated on the local shards without communication; ``full=True`` in
    :meth:`profiles` and :meth:`state_dict` gathers them (a collective every rank enters).
    """

    def __init__(self, gammas: Sequence[float], update_every: int = 1) -> None:
        if not gammas or any(not (math.isfinite(g) and g >= 0) for g in gammas):
            raise ValueError(f"gammas must be finite numbers >= 0, got {list(gammas)!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {update_every!r}")
        self.gammas = [float(g) for g in gammas]
        self.update_every = update_every
        self.steps = 0  # optimizer steps counted
        self.last_update = 0  # self.steps at the last update (0: none yet)
        self.names: list[str] = []
        self.shadows: list[list[Tensor]] = []  # [profile][tensor]
        self._pending: list[dict[str, Tensor]] | None = None

    def bind(self, named: Sequence[tuple[str, Tensor]]) -> None:
        """Name the tracked tensors; create the shadows (copies), or take them from a loaded state."""
        names = [n for n, _ in named]
        if self._pending is None and names == self.names and self.shadows:
            return
        sources: list[Mapping[str, Tensor]] = [{} for _ in self.gammas]
        if self._pending is not None:
            sources = [match_wrapped_keys(p, names) for p in self._pending]
            bad = [n for (n, t) in named if any(n not in s or s[n].shape != t.shape for s in sources)]
            if bad:
                raise RuntimeError(f"the loaded post-hoc EMA state has no tensors or other shapes for {bad[:5]}; "
                                   "it belongs to another model")
        self._pending = None
        self.names = names
        self.shadows = [[new_shadow(t, src.get(n, t)) for n, t in named] for src in sources]

    @torch.no_grad()
    def step(self, tensors: Sequence[Tensor], steps: int = 1) -> bool:
        """Count ``steps`` optimizer steps; after every ``update_every``-th, update each profile from ``tensors``
        (aligned with :meth:`bind`'s names). Returns whether it updated."""
        self.steps += steps
        if self.steps % self.update_every != 0 and self.steps - self.last_update < self.update_every:
            return False
        delta = self.steps - self.last_update
        for gamma, shadow in zip(self.gammas, self.shadows):
            average_(shadow, tensors, power_ema_beta(gamma, self.steps, delta))
        self.last_update = self.steps
        return True

    def profiles(self, full: bool = False) -> list[dict[str, Tensor]]:
        """Each profile's shadows as ``{name: tensor}``: the live tensors, or with ``full`` CPU copies, DTensors
        gathered into full tensors (a collective every rank enters)."""
        if full:
            return [{n: sharded.full(t).detach().to("cpu", copy=True) for n, t in zip(self.names, shadow)}
                    for shadow in self.shadows]
        return [dict(zip(self.names, shadow)) for shadow in self.shadows]

    def state_dict(self, full: bool = False) -> dict[str, Any]:
        """Counters and profiles (a loaded, not yet bound state as loaded); ``full``: see :meth:`profiles`."""
        ema = self.profiles(full) if self.shadows else list(self._pending or [])
        return {"gammas": list(self.gammas), "update_every": self.update_every, "steps": self.steps,
                "last_update": self.last_update, "ema": ema}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        gammas = [float(g) for g in state.get("gammas", self.gammas)]
        if gammas != self.gammas:
            raise ValueError(f"the state tracks gammas {gammas}, this object {self.gammas}")
        self.steps = int(state.get("steps", 0))
        self.last_update = int(state.get("last_update", 0))
        ema = list(state.get("ema", []))
        self._pending = [dict(p) for p in ema] if ema else None
        self.names, self.shadows = [], []
