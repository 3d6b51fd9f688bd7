"""Weight initialization of any ``nn.Module``: every Conv/Linear weight and every recurrent (RNN/LSTM/GRU) weight
matrix by one scheme, biases zero."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.validation import check_choice

__all__ = ["INIT_SCHEMES", "init_weights"]


def _gain(nonlinearity: str) -> float:
    return nn.init.calculate_gain(nonlinearity)  # type: ignore[arg-type]


def _kaiming(fn: Callable[..., Tensor]) -> Callable[..., None]:
    def init(w: Tensor, mode: str = "fan_in", nonlinearity: str = "relu", **_: Any) -> None:
        fn(w, mode=mode, nonlinearity=nonlinearity)

    return init


def _xavier(fn: Callable[..., Tensor]) -> Callable[..., None]:
    def init(w: Tensor, nonlinearity: str = "relu", gain: float | None = None, **_: Any) -> None:
        fn(w, gain=gain if gain is not None else _gain(nonlinearity))

    return init


def _orthogonal(w: Tensor, nonlinearity: str = "relu", gain: float | None = None, **_: Any) -> None:
    nn.init.orthogonal_(w, gain=gain if gain is not None else _gain(nonlinearity))


#: scheme -> weight initializer (None = keep PyTorch's default init).
INIT_SCHEMES: dict[str, Callable[..., None] | None] = {
    "default": None,
    "xavier_uniform": _xavier(nn.init.xavier_uniform_),
    "xavier_normal": _xavier(nn.init.xavier_normal_),
    "kaiming_uniform": _kaiming(nn.init.kaiming_uniform_),
    "kaiming_normal": _kaiming(nn.init.kaiming_normal_),
    "orthogonal": _orthogonal,
}


@torch.no_grad()
def init_weights(
    model: nn.Module,
    scheme: str | Mapping[str, Any] = "default",
    *,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
    gain: float | None = None,
) -> nn.Module:
    """Initialize every Conv/Linear weight with ``scheme`` and zero its bias (in place); returns ``model``.

    ``scheme`` may be a mapping ``{"scheme": ..., "mode": ..., "nonlinearity": ..., "gain": ...}`` (YAML form).
    kaiming_*: He et al. (2015), std ``gain / sqrt(fan)`` with ``mode`` fan_in|fan_out; xavier_*: Glorot & Bengio
    (2010), gain from ``nonlinearity`` unless ``gain``; orthogonal: Saxe et al. (2014). ``default`` keeps PyTorch's
    init (biases untouched too). The head is initialized like every other layer. A recurrent layer's input and
    hidden weight matrices (``weight_ih_l*``, ``weight_hh_l*``, all gates stacked, as Keras' kernels) get the scheme
    too, its biases zero.
    """
    if isinstance(scheme, Mapping):
        opts = dict(scheme)
        name = opts.pop("scheme", None)
        mode = opts.pop("mode", mode)
        nonlinearity = opts.pop("nonlinearity", nonlinearity)
        gain = opts.pop("gain", gain)
        if opts:
            raise ValueError(f"init: unknown keys {sorted(opts)}; allowed: scheme, mode, nonlinearity, gain")
    else:
        name = scheme
    check_choice("init", name, INIT_SCHEMES)
    check_choice("mode", mode, ("fan_in", "fan_out"), owner="init")
    fn = INIT_SCHEMES[name]
    if fn is None:
        return model
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fn(module.weight, mode=mode, nonlinearity=nonlinearity, gain=gain)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.RNNBase):
            for name, param in module.named_parameters(recurse=False):
                if name.startswith("weight_"):
                    fn(param, mode=mode, nonlinearity=nonlinearity, gain=gain)
                else:
                    param.zero_()
    return model
