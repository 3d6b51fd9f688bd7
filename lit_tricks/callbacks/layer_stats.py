"""LayerStats: per-layer activation mean/std, dead-ReLU fraction, gradient norm and update/weight ratio; optionally
activation and gradient histograms to TensorBoard."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_tricks.fault.state_keys import cached_state_key
from lit_tricks.functional.diagnosis import activation_stats, update_ratio
from lit_tricks.validation import check_number

__all__ = ["DEAD_MODULES", "STAT_MODULES", "LayerStats", "LayerStatsWarning"]

#: Modules whose outputs are summarized (mean, std; dead fraction for :data:`DEAD_MODULES`).
STAT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
    nn.Sigmoid,
)
#: Activations whose exact-zero outputs mean a unit is dead.
DEAD_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


class LayerStatsWarning(UserWarning):
    """Issued by :class:`LayerStats`, at most once per condition (``dead_relu``, ``ratio_high``, ``ratio_low``)."""


class LayerStats(pl.Callback):
    """Every ``every_n_steps`` optimizer steps, measure each layer and log it to the trainer's loggers.

    Logged under ``layer_stats/``: ``<module>/act_mean``, ``act_std``, ``dead_frac`` (ReLU outputs: units that are
    0 for the whole batch), ``<param>/grad_norm`` and ``<param>/update_ratio`` = ``||dW|| / ||W||`` of that
    optimizer step. Warns once per condition over the whole run: a layer with more than ``dead_threshold`` dead
    units, or a weight (ndim >= 2) whose update ratio is off from ``ratio_target`` (~1e-3, the notes' rule of thumb)
    by more than ``ratio_factor``. Conditions are checked from step ``check_from_step`` on (skip warm-up).
    Only ``nn.Module`` layers are seen: a functional ``F.relu`` in ``forward`` is invisible to the hooks.

    ``log_histograms``: at the same steps, also write the full distribution of each layer's output
    (``layer_stats/<module>/act``) and of each parameter's gradient (``layer_stats/<param>/grad``) to every
    ``TensorBoardLogger`` of the trainer (``logger.experiment.add_histogram``; its Histograms/Distributions tabs).
    Without a TensorBoardLogger it warns once at fit start and logs none. The tensors are copied only at those steps.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        dead_threshold: float = 0.5,
        ratio_target: float = 1e-3,
        ratio_factor: float = 10.0,
        check_from_step: int = 0,
        log: bool = True,
        log_histograms: bool = False,
    ) -> None:
        check_number("every_n_steps", every_n_steps, 1, integer=True, owner="LayerStats")
        check_number("dead_threshold", dead_threshold, 0.0, 1.0, hi_open=False, owner="LayerStats")
        check_number("ratio_target", ratio_target, 0.0, lo_open=True, owner="LayerStats")
        check_number("ratio_factor", ratio_factor, 1.0, lo_open=True, owner="LayerStats")
        self.every_n_steps = every_n_steps
        self.dead_threshold = dead_threshold
        self.ratio_target = ratio_target
        self.ratio_factor = ratio_factor
        self.check_from_step = check_from_step
        self.log = log
        self.log_histograms = bool(log_histograms)
        self._histograms: dict[str, torch.Tensor] = {}  # tag -> tensor, at a measured step with a TensorBoardLogger
        self._tensorboards: list[TensorBoardLogger] = []
        self.warned: set[str] = set()
        self.last: dict[str, float] = {}
        self._handles: list[Any] = []
        self._stats: dict[str, float] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._active_step = -1

    @property
    def state_key(self) -> str:
        return cached_state_key(self, every_n_steps=self.every_n_steps, ratio_target=self.ratio_target)

    def _hook(self, name: str, module: nn.Module) -> Any:
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.numel() == 0:
                return
            # units are features (last dim) after Linear and for (N, T, F) sequences, channels (dim 1) for images
            linear_like = isinstance(module, nn.Linear) or (output.dim() == 3 and not isinstance(module, nn.Conv1d))
            stats = activation_stats(output, -1 if linear_like else 1)
            self._stats[f"{name}/act_mean"] = stats["mean"]
            self._stats[f"{name}/act_std"] = stats["std"]
            if isinstance(module, DEAD_MODULES):
                self._stats[f"{name}/dead_frac"] = stats["dead_fraction"]
            if self._tensorboards:  # a copy: an in-place activation after this layer would change the output
                self._histograms[f"{name}/act"] = output.detach().clone()

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tensorboards = []
        if not self.log_histograms:
            return
        self._tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not self._tensorboards:
            kinds = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
            rank_zero_warn(f"LayerStats(log_histograms=True): histograms need a TensorBoardLogger, the trainer has "
                           f"{kinds}; no histograms are logged (add logger=tensorboard)", category=LayerStatsWarning)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        if self._handles and step != self._active_step:  # the measured step never reached an optimizer step
            self._remove_hooks()
            self._active_step = -1
        if step % self.every_n_steps or step == self._active_step:
            return
        self._active_step = step
        self._stats, self._before, self._histograms = {}, {}, {}
        self._remove_hooks()
        for name, module in pl_module.named_modules():
            if isinstance(module, STAT_MODULES):
                self._handles.append(module.register_forward_hook(self._hook(name or "model", module)))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._active_step != trainer.global_step:
            return
        self._remove_hooks()  # forward passes after this (e.g. closure re-evaluations) are not measured
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                if p.grad is not None:
                    self._stats[f"{name}/grad_norm"] = float(p.grad.detach().float().norm())
                    self._before[name] = p.detach().clone()
                    if self._tensorboards:
                        self._histograms[f"{name}/grad"] = p.grad.detach().clone()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._active_step < 0 or not self._before:  # not a measured step, or its optimizer step is still to come
            return
        params = dict(pl_module.named_parameters())
        for name, before in self._before.items():
            self._stats[f"{name}/update_ratio"] = update_ratio(before, params[name].detach())
        self._before = {}
        self._remove_hooks()
        self.last = dict(self._stats)
        step, self._active_step = self._active_step, -1
        if self.log and trainer.loggers:
            metrics = {f"layer_stats/{k}": v for k, v in self.last.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        for tensorboard in self._tensorboards:
            for tag, values in self._histograms.items():
                tensorboard.experiment.add_histogram(f"layer_stats/{tag}", values.float(), global_step=step)
        self._histograms = {}
        if step >= self.check_from_step:
            self._check(pl_module, step)

    def _check(self, pl_module: pl.LightningModule, step: int) -> None:
        weights = {name for name, p in pl_module.named_parameters() if p.dim() >= 2}
        dead = {k[: -len("/dead_frac")]: v for k, v in self.last.items()
                if k.endswith("/dead_frac") and v > self.dead_threshold}
        ratios = {k[: -len("/update_ratio")]: v for k, v in self.last.items() if k.endswith("/update_ratio")
                  and k[: -len("/update_ratio")] in weights}
        high = {k: v for k, v in ratios.items() if v > self.ratio_target * self.ratio_factor}
        low = {k: v for k, v in ratios.items() if v < self.ratio_target / self.ratio_factor}
        found = {
            "dead_relu": (dead, f"more than {self.dead_threshold:.0%} of the units are dead (0 on the whole batch); "
                                "lower the learning rate, check the init and biases, or use LeakyReLU"),
            "ratio_high": (high, f"update/weight ratio above {self.ratio_target * self.ratio_factor:g} "
                                 f"(rule of thumb ~{self.ratio_target:g}); the learning rate is likely too high"),
            "ratio_low": (low, f"update/weight ratio below {self.ratio_target / self.ratio_factor:g} "
                               f"(rule of thumb ~{self.ratio_target:g}); the learning rate is likely too low"),
        }
        for condition, (layers, advice) in found.items():
            if layers and condition not in self.warned:
                self.warned.add(condition)
                shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(layers.items())[:5])
                rank_zero_warn(f"LayerStats [{condition}] at step {step}: {shown}: {advice} (warned once)",
                               category=LayerStatsWarning)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "warned": sorted(self.warned)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warned = set(state_dict.get("warned", []))
