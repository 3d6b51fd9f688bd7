"""The fault battery's shared pieces: run the driver in a subprocess, compare two final states bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

DRIVER = Path(__file__).with_name("driver.py")
#: Bound on one driver process (they take ~5-10 s; a hang must fail, not stall CI).
PROCESS_TIMEOUT_S = 100


def run_driver(*args: str, env: dict[str, str] | None = None, expect: int | None = 0) -> subprocess.CompletedProcess:
    """``python driver.py *args`` in a fresh process; checks the exit code when ``expect`` is not None."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "RANK",
                                                                  "WORLD_SIZE", "NODE_RANK")}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})})
    proc = subprocess.run([sys.executable, str(DRIVER), *args], env=full_env, capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT_S)
    if expect is not None and proc.returncode != expect:
        raise AssertionError(f"driver {' '.join(args)} exited {proc.returncode}, expected {expect}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two nested structures differ (tensors compared with ``torch.equal``: bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k} (missing on one side)" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b), key=str):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} (length {len(a)} != {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path} ({a!r} != {b!r})"]


#: What must equal the uninterrupted run: weights, optimizer, step, early stopping, lit_tricks callback states
#: (EMA weights, ensemble members, RNG states, NaNGuard, ...).
COMPARED = ("state_dict", "optimizer", "global_step", "epoch", "early_stopping", "callbacks")


def final_state_differences(reference: dict[str, Any], resumed: dict[str, Any]) -> list[str]:
    diffs = [d for key in COMPARED for d in differences(reference[key], resumed[key], key)]
    by_step = {r["step"]: r for r in reference["records"]}
    for rec in resumed["records"]:  # every step the resumed process ran: same batch, same loss, same weights
        ref = by_step[rec["step"]]
        diffs += [f"step {rec['step']}: {d}" for d in differences(
            {k: ref[k] for k in ("batch", "loss", "params")}, {k: rec[k] for k in ("batch", "loss", "params")})]
    return diffs


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted single-process run every resume is compared with."""
    root = tmp_path_factory.mktemp("reference")
    run_driver("--root", str(root), "--out", str(root / "result.pt"))
    return load(root / "result.pt")
