"""Timing helpers shared by the benchmarks: hook timers, medians, machine info, markdown tables."""

from __future__ import annotations

import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "PER_STEP_HOOKS",
    "HookTimer",
    "KernelBound",
    "StepTimer",
    "TinyLit",
    "bench_trainer",
    "machine_info",
    "md_table",
    "median_time",
    "random_loader",
]

#: Callback hooks Lightning calls once per training batch / optimizer step.
PER_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    import lightning

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "cpu": cpu,
        "cpu cores": str(os.cpu_count()),
        "load average (1, 5, 15 min)": load,
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def median_time(fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class HookTimer:
    """Wraps every ``on_*``/``setup`` method of a callback instance and records the wall time of each call."""

    def __init__(self, callback: pl.Callback) -> None:
        self.callback = callback
        self.calls: dict[str, list[float]] = defaultdict(list)
        for name in dir(type(callback)):
            if not (name.startswith("on_") or name in ("setup", "teardown")):
                continue
            method = getattr(callback, name)
            if callable(method):
                setattr(callback, name, self._timed(name, method))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.calls[name].append(time.perf_counter() - t0)

        return wrapper

    def per_step(self, skip: int = 2) -> float:
        """Sum over the per-step hooks of the median time of one call (first ``skip`` calls dropped), seconds."""
        total = 0.0
        for name in PER_STEP_HOOKS:
            calls = self.calls.get(name, [])[skip:]
            if calls:
                total += statistics.median(calls)
        return total

    def once(self) -> float:
        """Total time of all other hooks over the run (set-up, epoch ends, ...), seconds."""
        return sum(sum(v) for k, v in self.calls.items() if k not in PER_STEP_HOOKS)


class StepTimer(pl.Callback):
    """Wall time from on_train_batch_start to on_train_batch_end (forward, backward, step and all other hooks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def median(self, skip: int = 2) -> float:
        return statistics.median(self.times[skip:] or self.times)


class KernelBound(pl.Callback):
    """Times the unavoidable kernels inside the same Trainer run, on separate buffers (training is unaffected):
    one ``torch._foreach_lerp_`` over the parameters (EMA) and, with ``norm_scale=True``, one foreach norm + scale
    of gradient-sized tensors (clipping). Listed after the measured callbacks, it sees the same steps and load."""

    def __init__(self, weight: float = 0.001, norm_scale: bool = False) -> None:
        self.weight, self.norm_scale = weight, norm_scale
        self.times: list[float] = []
        self._params: list[torch.Tensor] = []
        self._ema: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = [p.detach() for p in pl_module.parameters()]
        self._ema = [p.clone() for p in self._params]
        self._grads = [torch.randn_like(p) for p in self._params] if self.norm_scale else []

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        t0 = time.perf_counter()
        torch._foreach_lerp_(self._ema, self._params, self.weight)
        if self._grads:
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._grads, 2.0)))
            torch._foreach_mul_(self._grads, torch.clamp(1e9 / (total + 1e-6), max=1.0))
        self.times.append(time.perf_counter() - t0)

    def median(self, skip: int = 2) -> float:
        return statistics.median(self.times[skip:] or self.times)


class TinyLit(pl.LightningModule):
    """Wraps any classifier ``net`` with cross-entropy training and SGD."""

    def __init__(self, net: nn.Module, lr: float = 0.01) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def random_loader(shape: tuple[int, ...], num_classes: int, batch: int, steps: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * steps, *shape, generator=g)
    y = torch.randint(0, num_classes, (batch * steps,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def bench_trainer(root: str, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0, default_root_dir=root,
        callbacks=callbacks,
    )


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def params_of(module: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in module.parameters() if p.requires_grad)
