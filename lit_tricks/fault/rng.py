"""Collect and restore the torch, CUDA, numpy and python RNG states as plain types and tensors.

The result loads with ``torch.load(weights_only=True)``: the numpy key array becomes an int64 tensor and python's
state tuple becomes a list. One call covers one process; under DDP every rank has its own states (see
:class:`lit_tricks.callbacks.rng_state.RNGState`, which gathers them per rank).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["collect_rng_states", "restore_rng_states"]


def collect_rng_states(include_cuda: bool = True) -> dict[str, Any]:
    """This process's RNG states: ``torch`` (ByteTensor), ``cuda`` (list, one per device), ``numpy``, ``python``."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    py_version, py_internal, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set this process's RNG states from :func:`collect_rng_states`'s output; missing keys are left as they are."""
    if not isinstance(states, dict):
        raise TypeError(f"states: expected the dict of collect_rng_states(), got {type(states).__name__}")
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "numpy" in states:
        n = states["numpy"]
        keys = np.asarray(n["keys"].cpu().numpy() if isinstance(n["keys"], torch.Tensor) else n["keys"], np.uint32)
        np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    if "python" in states:
        p = states["python"]
        random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        cuda = list(states["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different device count: restore what the devices have in common
            for index, state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, index)
