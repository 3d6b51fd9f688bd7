"""EMAState: the exponential moving average of one module's tensors, without a Trainer (torch only).

The shape of timm's ``ModelEmaV3`` and Composer's ``EMAParameters``: the state and its rule live here, with a unit
test of their own; :class:`lit_tricks.callbacks.EMAWeights` only decides *when* (which Lightning hook) to call
:meth:`EMAState.update`, :meth:`EMAState.swap_in` and :meth:`EMAState.swap_out`::

    state = EMAState(decay=0.999)
    state.bind(model)                      # the EMA starts as a copy of the model's tensors
    for batch in loader:
        ...; optimizer.step()
        state.update()                     # ema <- d * ema + (1 - d) * w
    with state.swapped_in(model):          # evaluate with the EMA, the trained weights are back after
        evaluate(model)

Two places decide the EMA's layout, each one method: :meth:`EMAState._shadow` creates every EMA tensor from the
model's (its device, its dtype by ``ema_dtype``, and for a DTensor parameter of a sharded model a DTensor clone
holding this rank's shard), and :meth:`EMAState._average_` applies one update (one foreach lerp over the local
shards, the current weights cast to the shadow's dtype): each rank averages its own shards, with no communication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.functional import sharded
from lit_tricks.functional.ema import (
    BUFFER_MODES,
    copy_,
    decay_from_half_life,
    ema_update_,
    named_ema_tensors,
    state_dict_aliases,
    update_buffers_,
    warmup_decay,
)
from lit_tricks.functional.ema_shadows import EMA_DTYPES, average_, new_shadow, shadow_dtype
from lit_tricks.functional.wrappers import match_wrapped_keys

__all__ = ["EMA_DTYPES", "EMAState", "shadow_dtype"]


def _plain_pairs(ema: Sequence[Tensor], model: Sequence[Tensor]) -> bool:
    """Whether ``ema`` and ``model`` pair plain tensors (no DTensor or other subclass) of one device and dtype each."""
    if len(ema) != len(model):
        return False
    for e, m in zip(ema, model):
        if type(e) is not Tensor or type(m) is not Tensor or e.dtype != m.dtype or e.device != m.device:
            return False
    return True


class EMAState:
    """The EMA of a module's floating parameters and its buffers, its decay rule, and swapping it into the module.

    Per update ``ema <- d * ema + (1 - d) * w`` with ``d = decay``, or ``0.5 ** (update_every_n_steps /
    half_life_steps)`` when ``half_life_steps`` is given, or with ``warmup`` ``min(d, (1 + t) / (10 + t))`` where
    ``t = num_updates`` (TensorFlow's ``ExponentialMovingAverage``). Buffers are copied (``buffers="copy"``) or
    averaged (``"average"``; integer buffers are always copied). ``device``: where the EMA lives (None: beside each
    weight). ``ema_dtype``: one of :data:`EMA_DTYPES` (default: an fp32 shadow for bf16/fp16 weights, costing 4
    bytes per parameter instead of 2; see :func:`shadow_dtype`). Sharded (DTensor) parameters get DTensor shadows
    placed like them (``device`` must be None then). Names are the module's ``state_dict`` keys; a loaded state is
    matched to the module on the next :meth:`bind` (tolerating ``_orig_mod.``/``module.`` prefixes), and refused
    when it belongs to another model.
    """

    def __init__(
        self,
        decay: float = 0.999,
        *,
        half_life_steps: float | None = None,
        update_every_n_steps: int = 1,
        warmup: bool = False,
        buffers: str = "copy",
        device: str | torch.device | None = None,
        ema_dtype: str | None = None,
    ) -> None:
        if ema_dtype not in EMA_DTYPES:
            raise ValueError(f"ema_dtype must be one of {list(EMA_DTYPES)}, got {ema_dtype!r}")
        if not (isinstance(decay, int | float) and not isinstance(decay, bool) and 0.0 <= decay <= 1.0):
            raise ValueError(f"decay must be a number in [0, 1], got {decay!r}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {list(BUFFER_MODES)}, got {buffers!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.buffers = buffers
        self.device = torch.device(device) if device is not None else None
        self.ema_dtype = ema_dtype
        #: per-update decay before warm-up (from ``half_life_steps`` when given)
        self.base_decay = (
            decay_from_half_life(half_life_steps, update_every_n_steps) if half_life_steps is not None else self.decay
        )
        self.num_updates = 0  # EMA updates done (t of the warm-up formula)
        self.names: list[str] = []  # state_dict keys of the EMA tensors: floating parameters, then buffers
        self.aliases: dict[str, list[str]] = {}  # every state_dict key of a tensor shared under several names
        self.ema_params: list[Tensor] = []
        self.ema_buffers: list[Tensor] = []
        self.pending: dict[str, Tensor] | None = None  # a loaded EMA, matched to the module by the next bind()
        # the module's live tensors (transient: dropped when pickled)
        self.model_params: list[Tensor] = []
        self.model_buffers: list[Tensor] = []
        self.model_dtypes: list[torch.dtype] = []  # the module's dtypes, in ``names`` order (the twin is cast back)
        self._backup: list[Tensor] = []  # the module's own weights while the EMA is in it
        self.swapped = False  # the EMA is in the module

    # ------------------------------------------------------------------ the rule
    def decay_at(self, num_updates: int) -> float:
        """The decay of update number ``num_updates`` (0-based), warm-up included."""
        return warmup_decay(self.base_decay, num_updates) if self.warmup else self.base_decay

    # ------------------------------------------------------------------ binding to a module
    @property
    def ready(self) -> bool:
        """EMA tensors exist and no loaded state waits to be matched."""
        return bool(self.names) and self.pending is None

    def attach(self, module: nn.Module) -> list[str]:
        """Point at ``module``'s live tensors (no EMA tensor changes); returns their names."""
        params, buffers = named_ema_tensors(module)
        self.model_params = [t.detach() for _, t in params]
        self.model_buffers = [t.detach() for _, t in buffers]
        self.aliases = state_dict_aliases(module)
        self.model_dtypes = [t.dtype for t in self.model_params + self.model_buffers]
        return [n for n, _ in params] + [n for n, _ in buffers]

    def bind(self, module: nn.Module) -> None:
        """Attach to ``module`` and create the EMA tensors from its tensors, or from the loaded state."""
        names = self.attach(module)
        model_tensors = self.model_params + self.model_buffers
        if self.pending is None and names == self.names and _same_shapes(self.ema_params, self.model_params) and all(
                sharded.is_dtensor(e) == sharded.is_dtensor(m) for e, m in zip(self.ema_params, self.model_params)):
            return
        source: dict[str, Tensor] = {}
        if self.pending is not None:
            matched = match_wrapped_keys(self.pending, names)  # the loaded EMA may come from a wrapped model
            by_name = dict(zip(names, model_tensors))
            missing = [n for n in names if n not in matched]
            wrong = [n for n in names if n not in missing and matched[n].shape != by_name[n].shape]
            if missing or wrong:
                raise RuntimeError(
                    f"EMAWeights: the loaded EMA state has no tensors for {missing[:5]} and other shapes for "
                    f"{wrong[:5]}; it belongs to another model"
                )
            source = {n: matched[n] for n in names}
        self.pending = None
        self.names = names
        ema = [self._shadow(t, source.get(n, t)) for n, t in zip(names, model_tensors)]
        n_params = len(self.model_params)
        self.ema_params, self.ema_buffers = ema[:n_params], ema[n_params:]

    def reset(self) -> None:
        """Forget the EMA tensors and the update count (the next :meth:`bind` starts from the module's weights)."""
        self.names, self.ema_params, self.ema_buffers = [], [], []
        self.num_updates = 0

    def release(self) -> None:
        """Drop the references to the module's tensors (kept while the EMA is in it: :meth:`swap_out` needs them)."""
        if not self.swapped:
            self.model_params, self.model_buffers = [], []

    def _shadow(self, model_tensor: Tensor, source: Tensor) -> Tensor:
        """A new EMA tensor holding ``source``, placed and typed for ``model_tensor``: the one creation point
        (:func:`~lit_tricks.functional.ema_shadows.new_shadow`; a DTensor ``model_tensor`` gets a DTensor placed like
        it, holding this rank's chunk of ``source``)."""
        if sharded.is_dtensor(model_tensor) and self.device is not None:
            raise ValueError(f"EMAWeights(device={str(self.device)!r}): offloading is not supported for sharded "
                             "(DTensor) weights; use device=None (each rank keeps its shard beside the weights)")
        return new_shadow(model_tensor, source, shadow_dtype(self.ema_dtype, model_tensor.dtype), self.device)

    # ------------------------------------------------------------------ updates
    def follow(self) -> None:
        """Make the EMA equal the module's tensors (before averaging starts)."""
        copy_(self.ema_params, self.model_params)
        copy_(self.ema_buffers, self.model_buffers)

    def update(self) -> float:
        """One EMA update from the module's current tensors; returns the decay used."""
        d = self.decay_at(self.num_updates)
        if (type(self)._average_ is EMAState._average_ and self.buffers == "copy"
                and _plain_pairs(self.ema_params, self.model_params)
                and _plain_pairs(self.ema_buffers, self.model_buffers)):
            # the common case (unsharded, one device, the shadows in the weights' dtypes): the kernels of _average_
            # and update_buffers_ without their per-tensor shard and dtype conversions
            ema_update_(self.ema_params, self.model_params, d)
            if self.ema_buffers:
                with torch.no_grad():
                    torch._foreach_copy_(self.ema_buffers, self.model_buffers)
        else:
            self._average_(self.ema_params, self.model_params, d)
            update_buffers_(self.ema_buffers, self.model_buffers, d, self.buffers)
        self.num_updates += 1
        return d

    def _average_(self, ema: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
        """``ema <- decay * ema + (1 - decay) * current`` over the floating parameters: the one update kernel
        (:func:`~lit_tricks.functional.ema_shadows.average_`: local shards, ``current`` cast to the shadow's dtype)."""
        average_(ema, current, decay)

    def set_buffers(self, values: Sequence[Tensor]) -> None:
        """Replace the EMA buffers (e.g. by rank 0's after a broadcast); the module's too while swapped in."""
        copy_(self.ema_buffers, values)
        if self.swapped:
            copy_(self.model_buffers, self.ema_buffers)

    def keep_model_buffers(self) -> None:
        """Copy the module's buffers into the EMA (after recomputing BatchNorm statistics with the EMA swapped in)."""
        copy_(self.ema_buffers, self.model_buffers)

    # ------------------------------------------------------------------ swapping
    def swap_in(self, module: nn.Module | None = None) -> None:
        """Put the EMA into the module (bound first when given), keeping its own weights aside; no-op when in."""
        if self.swapped:
            return
        if module is not None:
            self.bind(module)
        current = self.model_params + self.model_buffers
        if _same_shapes(self._backup, current):
            copy_(self._backup, current)
        else:
            self._backup = [t.detach().clone() for t in current]
        copy_(self.model_params, self.ema_params)
        copy_(self.model_buffers, self.ema_buffers)
        self.swapped = True

    def swap_out(self) -> None:
        """Put the module's own weights back; no-op when the EMA is not in it."""
        if not self.swapped:
            return
        copy_(self.model_params + self.model_buffers, self._backup)
        self.swapped = False

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module | None = None) -> Iterator[None]:
        """Context manager: the EMA is in the module inside, the previous weights are back after."""
        was_swapped = self.swapped
        self.swap_in(module)
        try:
            yield
        finally:
            if not was_swapped:
                self.swap_out()

    # ------------------------------------------------------------------ views and state
    @property
    def ema_state_dict(self) -> dict[str, Tensor]:
        """The EMA as ``{state_dict key: tensor}`` (empty before the first bind)."""
        return dict(zip(self.names, self.ema_params + self.ema_buffers))

    def write_into(self, state_dict: dict[str, Any], raw: bool = False, full: bool = False,
                   model_dtype: bool = False) -> None:
        """Write the EMA (``raw=True``: the module's own weights kept aside while swapped in, as copies) into a
        model ``state_dict`` under every key of each tensor (a tied tensor's names: else the last key loaded wins).

        ``full``: DTensors gathered into full CPU tensors first (a collective: every rank calls this, also a rank
        whose ``state_dict`` is empty); ``model_dtype``: cast to the module's dtypes (an fp32 shadow of bf16 weights
        is written as bf16)."""
        values = [t.detach().clone() for t in self._backup] if raw else self.ema_params + self.ema_buffers
        if model_dtype:
            values = [v.to(d) for v, d in zip(values, self.model_dtypes)]
        if full:
            values = [sharded.full(v).to("cpu") for v in values]
        for name, value in zip(self.names, values):
            for key in self.aliases.get(name, (name,)):
                if key in state_dict:
                    state_dict[key] = value

    def state_dict(self, full: bool = False) -> dict[str, Any]:
        """``{"num_updates": int, "ema": {name: tensor}}`` (a loaded, not yet bound EMA as loaded); ``full``:
        DTensors gathered into full CPU tensors (a collective: every rank calls it)."""
        ema = self.ema_state_dict
        if full:
            ema = {k: sharded.full(v).cpu() for k, v in ema.items()}
        if not ema and self.pending is not None:
            ema = dict(self.pending)
        return {"num_updates": self.num_updates, "ema": ema}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s output; matched to the module at the next :meth:`bind`."""
        self.num_updates = int(state_dict.get("num_updates", 0))
        self.pending = dict(state_dict.get("ema", {})) or None
        self.names, self.ema_params, self.ema_buffers = [], [], []
        self.swapped = False  # a restore has just put raw weights into the module

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # no references to the module's tensors in a pickle
        state.update(model_params=[], model_buffers=[], _backup=[], swapped=False)
        return state


def _same_shapes(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
