"""BackboneFinetuning: Lightning's callback (freeze the backbone for N epochs, then train it at a lower lr), with the
parameter groups it adds following the module's weight-decay rule and the lr schedulers.

The interface a module offers (the one place it is written down):

- ``backbone`` (required, as for Lightning's callback): an ``nn.Module`` holding the parameters to freeze.
  :class:`~lit_tricks.modules.trick_module.TrickModule` returns every layer of its model but the head
  (:func:`lit_tricks.models.heads.find_head`).
- ``finetune_param_groups(params) -> list[dict]`` (optional, :class:`SupportsFinetuneParamGroups`): the optimizer
  groups for ``params`` that were frozen when ``configure_optimizers`` ran, split and tagged as the module's own
  groups are (TrickModule: no decay on biases and norm layers, ``lit_tricks_decay`` for its decoupled decay). Without
  it the unfrozen parameters get one group with the optimizer's defaults, as in Lightning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BackboneFinetuning as _LightningBackboneFinetuning
from torch import nn
from torch.optim import Optimizer

from lit_tricks.fault.exact_resume import run_skipped_epoch_start
from lit_tricks.fault.state_keys import cached_state_key
from lit_tricks.validation import check_number

__all__ = ["BackboneFinetuning", "SupportsFinetuneParamGroups"]

log = logging.getLogger(__name__)


@runtime_checkable
class SupportsFinetuneParamGroups(Protocol):
    """A module that builds the optimizer groups of parameters unfrozen after ``configure_optimizers``."""

    def finetune_param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]: ...


def _constant(value: float, epoch: int) -> float:
    return value


class BackboneFinetuning(_LightningBackboneFinetuning):
    """Freeze ``pl_module.backbone`` before training; at epoch ``unfreeze_backbone_at_epoch`` unfreeze it and train it
    with ``lr = backbone_initial_ratio_lr * (the first group's lr)``, the ratio then multiplied by ``lambda_func(epoch
    + 1)`` at each later epoch (default: ``lr_growth``, 1 = keep the ratio), capped at 1 with ``should_align``.

    What it adds to Lightning's callback (its freezing, its ``state_dict`` and its restore of the groups on resume
    are kept):

    - the new parameter groups follow the module's weight-decay rule (``finetune_param_groups``, see the module
      docstring), e.g. two groups for TrickModule: decayed weights and undecayed biases/norm parameters;
    - the new groups follow the lr schedulers: a scheduler with per-group lists (``base_lrs``, ``LambdaLR``'s
      ``lr_lambdas``) gets an entry for each (``base = ratio * base_lrs[0]``), so ``Schedule`` gives the backbone
      ``ratio`` times the head's lr at every step. Torch's schedulers zip the groups with these lists: without the
      entries a group added mid-run keeps a constant lr;
    - the ramp changes the ratio (the new groups' ``base_lrs`` and lr), not only the last group's lr;
    - a resume after the unfreezing trains the backbone (Lightning's callback freezes it again in ``setup`` and
      restores its groups, so it stays frozen);
    - parameters already in the optimizer are recognised by identity (Lightning compares values with
      ``torch.equal``, so a zero-initialised bias equal to a BatchNorm's bias is dropped).
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 5,
        backbone_initial_ratio_lr: float = 0.1,
        lr_growth: float = 1.0,
        lambda_func: Callable[[int], float] | None = None,
        should_align: bool = True,
        train_bn: bool = True,
        verbose: bool = False,
    ) -> None:
        check_number("unfreeze_backbone_at_epoch", unfreeze_backbone_at_epoch, 0, integer=True,
                     owner="BackboneFinetuning")
        check_number("backbone_initial_ratio_lr", backbone_initial_ratio_lr, 0.0, lo_open=True,
                     owner="BackboneFinetuning")
        check_number("lr_growth", lr_growth, 0.0, lo_open=True, owner="BackboneFinetuning")
        func = lambda_func if lambda_func is not None else functools.partial(_constant, float(lr_growth))
        super().__init__(unfreeze_backbone_at_epoch=unfreeze_backbone_at_epoch, lambda_func=func,
                         backbone_initial_ratio_lr=float(backbone_initial_ratio_lr), should_align=should_align,
                         train_bn=train_bn, verbose=verbose)
        self.lr_growth = float(lr_growth)
        #: backbone lr / first group's lr (None while frozen); the number of groups added at the end of the optimizer
        self.lr_ratio: float | None = None
        self.num_backbone_groups = 0
        self.applied_epoch = -1  # the last epoch whose lr change was applied (a mid-epoch resume must not redo it)
        self._trainer: pl.Trainer | None = None

    @property
    def state_key(self) -> str:
        return cached_state_key(self, unfreeze_backbone_at_epoch=self.unfreeze_backbone_at_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(version=1, lr_ratio=self.lr_ratio, num_backbone_groups=self.num_backbone_groups,
                     applied_epoch=self.applied_epoch)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        ratio = state_dict.get("lr_ratio")
        self.lr_ratio = None if ratio is None else float(ratio)
        self.num_backbone_groups = int(state_dict.get("num_backbone_groups", 0))
        self.applied_epoch = int(state_dict.get("applied_epoch", -1))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"BackboneFinetuning: {type(pl_module).__name__} has no nn.Module `backbone` (got "
                             f"{type(backbone).__name__}); TrickModule gives every layer but the head (a model with "
                             "an nn.Linear head)")
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # a resume: puts the saved param groups back into the optimizers
        if self.num_backbone_groups:  # setup froze the backbone again; Lightning's callback leaves it frozen
            self.make_trainable(pl_module.backbone)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed from an epoch's last batch, Lightning would start the next epoch without on_train_epoch_start:
        # the unfreezing due then would wait an epoch
        run_skipped_epoch_start(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        super().on_train_epoch_start(trainer, pl_module)  # calls finetune_function for each optimizer
        if self.num_backbone_groups:  # after a resume the restored groups need their scheduler entries again
            for optimizer in trainer.optimizers:
                self._follow_schedulers(trainer, optimizer)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_backbone_at_epoch or epoch <= self.applied_epoch:
            return
        self.applied_epoch = epoch
        if self.num_backbone_groups == 0:
            self.lr_ratio = self.backbone_initial_ratio_lr
            self._unfreeze(pl_module, optimizer)
            if not self.num_backbone_groups:
                return
        else:
            assert self.lr_ratio is not None
            ratio = self.lambda_func(epoch + 1) * self.lr_ratio
            self.lr_ratio = min(ratio, 1.0) if self.should_align else ratio
        head_lr = float(optimizer.param_groups[0]["lr"])
        self.previous_backbone_lr = head_lr * self.lr_ratio
        for group in optimizer.param_groups[-self.num_backbone_groups:]:
            group["lr"] = self.previous_backbone_lr
        if self._trainer is not None:
            self._follow_schedulers(self._trainer, optimizer, reset=True)
        if self.verbose:
            log.info("BackboneFinetuning: epoch %d, head lr %g, backbone lr %g (x%g)", epoch, head_lr,
                     self.previous_backbone_lr, self.lr_ratio)

    def _unfreeze(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        backbone = pl_module.backbone
        self.make_trainable(backbone)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = _unique(p for p in self.filter_params(backbone, train_bn=self.train_bn, requires_grad=True)
                         if id(p) not in present)
        if not params:
            return
        if isinstance(pl_module, SupportsFinetuneParamGroups):
            groups = [g for g in pl_module.finetune_param_groups(params) if g["params"]]
        else:
            groups = [{"params": params}]
        for group in groups:
            optimizer.add_param_group(group)
        self.num_backbone_groups = len(groups)

    def _follow_schedulers(self, trainer: pl.Trainer, optimizer: Optimizer, reset: bool = False) -> None:
        """Give every scheduler of ``optimizer`` an entry per backbone group: ``base_lrs`` (``ratio`` times the first
        group's) and ``lr_lambdas`` (the first group's); ``reset`` rewrites existing backbone entries (a new ratio)."""
        n = len(optimizer.param_groups)
        first_new = n - self.num_backbone_groups
        for config in trainer.lr_scheduler_configs:
            scheduler: Any = config.scheduler
            if getattr(scheduler, "optimizer", None) is not optimizer:
                continue
            base = getattr(scheduler, "base_lrs", None)
            if isinstance(base, list) and base and self.lr_ratio is not None:
                kept = base[:first_new] if reset else base
                wanted = [float(base[0]) * self.lr_ratio] * (n - len(kept))
                scheduler.base_lrs = list(kept) + wanted
                for group, value in zip(optimizer.param_groups[len(kept):], wanted):
                    group["initial_lr"] = value
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if isinstance(lambdas, list) and lambdas and len(lambdas) < n:
                lambdas.extend([lambdas[0]] * (n - len(lambdas)))
            last_lr = getattr(scheduler, "_last_lr", None)
            if isinstance(last_lr, list) and len(last_lr) < n:
                scheduler._last_lr = list(last_lr) + [g["lr"] for g in optimizer.param_groups[len(last_lr):]]


def _unique(params: Iterable[torch.Tensor]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out  # type: ignore[return-value]
