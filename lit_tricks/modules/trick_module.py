"""TrickModule: a LightningModule wrapping any classifier (or regressor) with the notes' training tricks.

Its parts live beside it: :mod:`~lit_tricks.modules.task_steps` (outputs, loss, evaluation steps; its base class),
:mod:`~lit_tricks.modules.trick_args` (its arguments, checked by group), :mod:`~lit_tricks.modules.specs` (plain
specs of the optimizer/scheduler partials), :mod:`~lit_tricks.modules.tasks` (what each ``loss`` means),
:mod:`~lit_tricks.modules.decay` (where weight decay is applied), :mod:`~lit_tricks.modules.surgery` (norm, dropout,
init) and :mod:`~lit_tricks.modules.finetune` (what BackboneFinetuning asks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_tricks.functional.param_groups import decoupled_weight_decay_, describe_param_groups, param_groups, split_decay
from lit_tricks.functional.regularization import jacobian_penalty, l1_penalty, l2_penalty
from lit_tricks.models.heads import find_head
from lit_tricks.modules.decay import build_optimizer, decay_mode
from lit_tricks.modules.finetune import backbone_layers, finetune_groups
from lit_tricks.modules.full_batch import check_full_batch_module, check_one_batch, second_order_class
from lit_tricks.modules.insertion import apply_dropout, apply_norm
from lit_tricks.modules.sharding import ShardedModel
from lit_tricks.modules.specs import (
    PREPROCESS_KEY,
    as_factory,
    callable_from_spec,
    callable_to_spec,
    plain,
    restored_preprocess,
    save_preprocess_class,
    scheduler_config,
)
from lit_tricks.modules.surgery import init_weights, noisy_layers
from lit_tricks.modules.task_steps import TaskSteps
from lit_tricks.modules.tasks import LOSSES, bin_edges, task_residual
from lit_tricks.modules.trick_args import check_config, check_groups, check_training, plain_bins
from lit_tricks.weight_variants import WeightVariants

__all__ = ["LOSSES", "PREPROCESS_KEY", "TrickModule", "callable_from_spec", "callable_to_spec"]


class TrickModule(ShardedModel, TaskSteps):
    """Train any ``nn.Module`` with the notes' tricks: norm swap, dropout, init, weight decay (coupled or decoupled),
    L1, Jacobian penalty, label smoothing, MixUp/CutMix soft targets, binned regression, TTA, EMA side-by-side.

    The keyword arguments come in groups, checked by :mod:`~lit_tricks.modules.trick_args`: task (``num_classes`` ..
    ``binned_point``, ``top_k``), surgery (``norm`` .. ``init``), regularization (``weight_decay`` ..
    ``jacobian_projections``), optimization (``optimizer`` .. ``scheduler_interval``), inputs (``preprocess`` ..
    ``tta``); flat, so that every key keeps its Hydra path (``module.weight_decay``).

    Args:
        model: the network; modified in place by ``init`` -> ``norm`` -> ``dropout`` (that order).
        num_classes: default from the last ``nn.Linear``'s ``out_features``, else from the first batch's output.
        loss: cross_entropy | mse (one-hot targets for integer labels, plain regression for float targets) |
            binned (regression as classification over ``bins``: the model outputs one logit per bin).
        bins: increasing bin edges for ``loss="binned"`` (K+1 edges -> K logits).
        binned_point: the point prediction taken from the bin distribution: mean (expected value; best for squared
            error) | median (best for absolute error) | mode.
        norm: keep | batch | group | ``group:<n>`` | ``{kind: group, num_groups: n}`` | layer | weight | none
            (swap_norm); a model without norm layers gets one inserted before each hidden activation, at the layers
            a mapping's ``layers`` selects (:func:`~lit_tricks.modules.insertion.apply_norm`).
        dropout: None keeps the model's dropout; a p in [0, 1) is applied by
            :func:`~lit_tricks.modules.insertion.apply_dropout` with ``dropout_kind`` (on activations, on linear/conv
            weights, on a GRU's state) and ``dropout_placement`` head (the head's input or weights) | every_hidden
            (after every hidden activation, on every hidden layer's weights, every GRU).
        init: default | xavier_uniform | xavier_normal | kaiming_uniform | kaiming_normal | orthogonal, or a dict
            ``{scheme, mode, nonlinearity, gain}``; biases zero.
        weight_decay: lambda of the decayed tensors (conv/linear weights; not biases, norm or embedding params,
            nor ``no_decay`` fnmatch patterns or a model's ``no_weight_decay()`` names). Every optimizer group
            carries its ``weight_decay`` explicitly; setting it in the optimizer partial too is an error.
        decoupled: True = ``w <- w * (1 - lr * lambda)`` before each update, for any optimizer (AdamW's own decay is
            used for AdamW); False = coupled L2, ``grad += lambda * w`` (torch's ``weight_decay`` for
            SGD/Adam/RMSprop/Adagrad/..., else the loss term ``0.5 * lambda * ||w||^2``).
        l1: adds ``l1 * sum |w|`` over the decayed tensors to the loss (with weight_decay: elastic net).
        jacobian_reg: adds ``jacobian_reg * mean_n ||d model(x_n) / d x_n||_F^2`` (random projections,
            Hoffman et al. 2019) where x is the model input (after ``preprocess``).
        optimizer: ``params -> Optimizer`` partial; None = ``SGD(lr=0.1, momentum=0.9)``. A second-order optimizer
            (``lit_tricks.optim.NewtonOptimizer``, ...) switches to manual optimization, one full-batch step per
            training batch (:mod:`~lit_tricks.modules.full_batch`).
        scheduler: ``optimizer -> LRScheduler`` partial, wrapped by ``lit_tricks.schedules.lr_scheduler_config``.
        scheduler_interval: "step" | "epoch" overrides the interval that config chose.
        preprocess: module applied to raw inputs inside ``forward`` (statistics as buffers: in checkpoints).
        batch_augment: ``(x, y) -> (x, y_soft)`` applied in ``training_step`` only (torchvision v2 MixUp/CutMix).
        tta: at test/predict average the softmax over the input and its horizontal flip.
        top_k: also log ``{stage}/top{k}_acc`` when ``num_classes > top_k`` (0 = off).
        shard: auto | none | root | blocks: FSDP2 units (:mod:`~lit_tricks.modules.sharding`).

    Logs ``train/loss`` (data loss; ``train/penalty`` when a penalty is on), ``val/loss``, ``val/acc``,
    ``test/loss``, ``test/acc`` (regression: ``{stage}/mae``, ``{stage}/mse``). Implements
    :class:`lit_tricks.weight_variants.SupportsWeightVariants`: the weight variants registered in
    ``self.weight_variants`` (e.g. by ``EMAWeights(validate_both=True)``) are evaluated too (``val/acc_ema``).

    Checkpoints hold plain hyperparameters only (the partials as ``{"_target_": ..., **kwargs}`` dicts), so they
    load with ``torch.load(weights_only=True)``. To reload for inference, pass the network again, built as for
    training; the surgery is re-applied from the hyperparameters before the weights load. The preprocessing module
    is rebuilt from its class path (saved in the checkpoint) when its constructor needs no arguments, as the
    DataModules' preprocessors (their buffers load whatever their shape); otherwise pass ``preprocess=`` too::

        module = TrickModule.load_from_checkpoint(path, model=SmallCNN(num_classes=10))
    """

    check_config: classmethod[Any, Any, None] = classmethod(check_config)  #: start-up check of the arguments (no model)

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        loss: str = "cross_entropy",
        label_smoothing: float = 0.0,
        bins: Sequence[float] | None = None,
        binned_point: str = "mean",
        norm: str | Mapping[str, Any] = "keep",
        dropout: float | None = None,
        dropout_kind: str = "dropout",
        dropout_placement: str = "head",
        init: str | Mapping[str, Any] = "default",
        weight_decay: float = 0.0,
        decoupled: bool = True,
        no_decay: Sequence[str] = (),
        l1: float = 0.0,
        jacobian_reg: float = 0.0,
        jacobian_projections: int = 1,
        optimizer: Callable[..., torch.optim.Optimizer] | Mapping[str, Any] | None = None,
        scheduler: Callable[..., Any] | Mapping[str, Any] | None = None,
        scheduler_interval: str | None = None,
        preprocess: nn.Module | None = None,
        batch_augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        tta: bool = False,
        top_k: int = 5,
        shard: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        #: weight variants (e.g. the EMA) evaluated beside the trained weights: lit_tricks.weight_variants
        self.weight_variants = WeightVariants()
        label_smoothing, dropout, (weight_decay, l1, jacobian_reg) = check_groups(  # every bad argument at once
            (loss, label_smoothing, binned_point, num_classes, top_k), (norm, dropout, dropout_kind, dropout_placement),
            (weight_decay, l1, jacobian_reg, jacobian_projections))
        edges = bin_edges(loss, bins)
        self._optimizer_factory = as_factory(optimizer, "optimizer")
        self._scheduler_factory = as_factory(scheduler, "scheduler")
        check_training(scheduler_interval, getattr(self._optimizer_factory, "keywords", None) or {}, shard)
        hparams = {
            "num_classes": num_classes, "loss": loss, "label_smoothing": label_smoothing, "bins": plain_bins(bins),
            "binned_point": binned_point, "norm": norm, "dropout": dropout, "dropout_kind": dropout_kind,
            "dropout_placement": dropout_placement, "init": init, "weight_decay": weight_decay,
            "decoupled": bool(decoupled), "no_decay": list(no_decay), "l1": l1, "jacobian_reg": jacobian_reg,
            "jacobian_projections": jacobian_projections,
            "optimizer": None if self._optimizer_factory is None else callable_to_spec(self._optimizer_factory),
            "scheduler": None if self._scheduler_factory is None else callable_to_spec(self._scheduler_factory),
            "scheduler_interval": scheduler_interval, "tta": bool(tta), "top_k": top_k, "shard": shard,
        }
        self.save_hyperparameters(plain(hparams), logger=True)

        init_weights(model, init)
        apply_norm(model, norm)
        if dropout is not None:
            apply_dropout(model, dropout, dropout_kind, dropout_placement)
        if loss == "mse" and (noisy := noisy_layers(model)):
            rank_zero_warn(f"TrickModule: dropout ({', '.join(noisy[:3])}{', ...' if len(noisy) > 3 else ''}) feeds a "
                           "regression output trained with the L2 loss (loss='mse'), which is fragile under dropout "
                           "(the notes advise against it, especially before the last layer); set module.dropout=0, "
                           "or loss='binned' to quantize the target into classes")
        self.model = model
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.batch_augment = batch_augment
        self.loss_name, self.label_smoothing, self.tta, self.top_k = loss, label_smoothing, bool(tta), top_k
        self.weight_decay, self.decoupled, self.l1, self.jacobian_reg = weight_decay, bool(decoupled), l1, jacobian_reg
        self.jacobian_projections, self.scheduler_interval = jacobian_projections, scheduler_interval
        self.no_decay, self.binned_point = tuple(no_decay), binned_point
        if edges is not None:
            self.register_buffer("bin_edges", edges, persistent=False)
        else:
            self.bin_edges = None
        if num_classes is None and edges is not None:
            num_classes = edges.numel() - 1
        elif num_classes is None and (head := find_head(model)) is not None:
            num_classes = head[2].out_features
        self.num_classes = num_classes
        self._decay_names = split_decay(model, exclude=self.no_decay)[0]
        self._decay_mode = "native"  # native | hook (decoupled, applied here) | loss (coupled, as a loss term)
        self._decay_pending = False
        self._flat_params = False
        self.metrics = nn.ModuleDict()
        self._second_order = second_order_class(self._optimizer_factory)
        self.automatic_optimization = self._second_order is None
        if self._second_order is not None:
            check_full_batch_module(self._second_order, model, loss=loss, weight_decay=weight_decay, l1=l1,
                                    jacobian_reg=jacobian_reg, batch_augment=batch_augment,
                                    scheduler=self._scheduler_factory)

    def _decay_params(self) -> list[Tensor]:
        return [self.model.get_parameter(n) for n in self._decay_names]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if not self.automatic_optimization:  # a second-order optimizer: one step on the full batch
            loss_before = self.optimizers().step(closure=lambda: (x, y))  # type: ignore[union-attr]
            self.log("train/loss", float(loss_before), on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=x.shape[0], sync_dist=True)
            return torch.as_tensor(float(loss_before))
        if self.batch_augment is not None:
            x, y = self.batch_augment(x, y)
        h = self.preprocess(x)
        if self.jacobian_reg > 0:
            h = h.detach().requires_grad_(True)
        out = self.model(h)
        loss = self.compute_loss(out, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0],
                 sync_dist=True)  # one scalar all-reduce per step under DDP; no warning, the mean over ranks
        penalty = loss.new_zeros(())
        if self.l1 > 0:
            penalty = penalty + self.l1 * l1_penalty(self._decay_params())
        if self._decay_mode == "loss" and self.weight_decay > 0:
            penalty = penalty + self.weight_decay * l2_penalty(self._decay_params())
        if self.jacobian_reg > 0:
            penalty = penalty + self.jacobian_reg * jacobian_penalty(out, h, self.jacobian_projections)
        if self.l1 > 0 or self.jacobian_reg > 0 or self._decay_mode == "loss":
            self.log("train/penalty", penalty.detach(), on_step=False, on_epoch=True, batch_size=x.shape[0],
                     sync_dist=True)
            return loss + penalty
        return loss

    # --------------------------------------------------------------------------------------------- optimizers
    def describe_param_groups(self) -> str:
        """A table of which tensors of the model get which weight decay and L1 (print it)."""
        return describe_param_groups(self.model, self.weight_decay, self.l1, exclude=self.no_decay)

    @property
    def backbone(self) -> nn.Module:
        """Every layer of the model but its head, for :class:`~lit_tricks.callbacks.BackboneFinetuning`
        (:func:`~lit_tricks.modules.finetune.backbone_layers`)."""
        return backbone_layers(self.model)

    def finetune_param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Optimizer groups for ``params`` unfrozen after :meth:`configure_optimizers` (BackboneFinetuning), under
        this module's weight-decay rule: decayed tensors and the rest (biases, norms, ``no_decay``), as there."""
        decayed = {id(p) for p in self._decay_params()}
        return finetune_groups(params, decayed, self.weight_decay, self._decay_mode == "native")

    def configure_optimizers(self) -> Any:
        factory = self._optimizer_factory
        if factory is None:
            factory = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
        groups = param_groups(self.model, self.weight_decay, exclude=self.no_decay)
        in_model = {id(p) for p in self.model.parameters()}
        extra = [p for p in self.parameters() if p.requires_grad and id(p) not in in_model]
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0, "lit_tricks_decay": 0.0})
        optimizer, self._flat_params = build_optimizer(factory, groups)
        if self._second_order is not None:
            optimizer.bind(self, self.compute_loss, functools.partial(task_residual, self.loss_name))  # type: ignore
        self._decay_mode = decay_mode(optimizer, self.weight_decay, self.decoupled, self._flat_params)
        if self._decay_mode != "native":
            for g in optimizer.param_groups:
                g["weight_decay"] = 0.0
        if self._scheduler_factory is None:
            return optimizer
        config = scheduler_config(self._scheduler_factory, optimizer, self.trainer, self.scheduler_interval)
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ----------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_preprocess_class(self.preprocess, checkpoint)  # load_from_checkpoint rebuilds it when not passed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preprocess = restored_preprocess(self.preprocess, checkpoint)

    def on_train_start(self) -> None:
        if self._second_order is not None:
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
            check_one_batch(self._second_order.name, self.trainer.num_training_batches,
                            len(dataset) if isinstance(dataset, Sized) else None)
        optimizers = self.trainer.optimizers
        if any(isinstance(o, torch.optim.LBFGS) for o in optimizers) and self.trainer.num_training_batches > 1:
            rank_zero_warn(f"L-BFGS is a full-batch method but gets {self.trainer.num_training_batches} mini-batches "
                           "per epoch: set data.batch_size >= the training set size (one batch per epoch).")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._decay_pending = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After backward, before the update; once per step (L-BFGS evaluates its closure several times per step).
        if self._decay_mode == "hook" and self._decay_pending:
            if self._flat_params:  # one group holds everything: decay the decayed tensors at that group's lr
                groups = [{"params": self._decay_params(), "lr": optimizer.param_groups[0]["lr"],
                           "lit_tricks_decay": self.weight_decay}]
                decoupled_weight_decay_(groups)
            else:
                decoupled_weight_decay_(optimizer.param_groups)
        self._decay_pending = False
