"""Zoneout for GRUs: each hidden unit keeps its previous value with probability ``p`` at every time step.

Krueger et al. (2017), "Zoneout: regularizing RNNs by randomly preserving hidden activations"; the notes (000):
"randomly chosen units remain unchanged across a time transition". Training: ``h_t = d_t * h_{t-1} + (1 - d_t) *
GRU(x_t, h_{t-1})`` with ``d_t ~ Bernoulli(p)`` per unit and step; eval: the expectation, ``p * h_{t-1} + (1 - p) *
GRU(x_t, h_{t-1})`` (the paper's test-time rule). :class:`ZoneoutGRU` replaces an ``nn.GRU`` sharing its parameters,
so every state-dict key stays; with ``p = 0`` it runs ``nn.GRU`` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["ZoneoutGRU", "apply_zoneout"]


class ZoneoutGRU(nn.GRU):
    """``nn.GRU`` with zoneout probability ``p`` on its hidden state (see the module docstring). Any number of layers,
    bidirectional, ``batch_first``, unbatched inputs; not ``PackedSequence`` (refused in one line)."""

    p: float = 0.0

    @classmethod
    def from_gru(cls, gru: nn.GRU, p: float) -> ZoneoutGRU:
        """A ZoneoutGRU sharing ``gru``'s parameters (built on the meta device: nothing is initialized)."""
        new = cls(gru.input_size, gru.hidden_size, num_layers=gru.num_layers, bias=gru.bias,
                  batch_first=gru.batch_first, dropout=gru.dropout, bidirectional=gru.bidirectional, device="meta")
        for name in gru._flat_weights_names:
            setattr(new, name, getattr(gru, name))
        new.p = p
        return new

    def zoneout_mask(self, h: Tensor) -> Tensor:
        """Training: 1 where a unit keeps its previous value (Bernoulli(p)); eval: ``p`` everywhere (the mean)."""
        if not self.training:
            return torch.full_like(h, self.p)
        return torch.empty_like(h).bernoulli_(self.p)

    def _cell(self, x: Tensor, h: Tensor, suffix: str) -> Tensor:
        """One GRU step (torch's gate order r, z, n): ``h' = (1 - z) * n + z * h``."""
        w_ih, w_hh = getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}")
        b_ih = getattr(self, f"bias_ih{suffix}") if self.bias else None
        b_hh = getattr(self, f"bias_hh{suffix}") if self.bias else None
        gi, gh = F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h

    def forward(self, input: Any, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if self.p == 0.0:
            return super().forward(input, hx)  # type: ignore[no-any-return]
        if isinstance(input, PackedSequence):
            raise TypeError("ZoneoutGRU (dropout_kind=zoneout) takes padded tensors, not a PackedSequence")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)  # (L, N, C)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            hx = x.new_zeros(self.num_layers * directions, x.shape[1], self.hidden_size)
        elif unbatched:
            hx = hx.unsqueeze(1)
        last = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                h = hx[layer * directions + direction]
                steps: list[Tensor | None] = [None] * x.shape[0]
                for t in (reversed(range(x.shape[0])) if direction else range(x.shape[0])):
                    d = self.zoneout_mask(h)
                    h = d * h + (1.0 - d) * self._cell(x[t], h, suffix)
                    steps[t] = h
                outputs.append(torch.stack(steps))  # type: ignore[arg-type]
                last.append(h)
            x = torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_n = torch.stack(last)
        if unbatched:
            return x.squeeze(1), h_n.squeeze(1)
        return (x.transpose(0, 1) if self.batch_first else x), h_n

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, zoneout={self.p}"


def apply_zoneout(model: nn.Module, p: float) -> int:
    """Give every ``nn.GRU`` of ``model`` zoneout probability ``p`` in place (each becomes a :class:`ZoneoutGRU`
    sharing its parameters; one already is gets the new ``p``); returns how many. A model with no GRU, or with an
    LSTM/RNN (zoneout is built for GRUs here), is refused in one line and left unchanged."""
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase) and type(m).__name__
                     not in ("GRU", "ZoneoutGRU")})
    grus = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.GRU)]
    if others or not grus:
        found = f"has {', '.join(others)}" if others else "has no nn.GRU layer"
        raise ValueError(f"dropout_kind='zoneout' acts on the hidden state of nn.GRU layers; the model {found}")
    for parent, name, gru in grus:
        if isinstance(gru, ZoneoutGRU):
            gru.p = p
        else:
            parent._modules[name] = ZoneoutGRU.from_gru(gru, p)
    return len(grus)
