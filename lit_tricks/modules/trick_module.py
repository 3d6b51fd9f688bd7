"""TrickModule: a LightningModule wrapping any classifier (or regressor) with the notes' training tricks.

Its parts live beside it: :mod:`~lit_tricks.modules.specs` (plain specs of the optimizer/scheduler partials),
:mod:`~lit_tricks.modules.tasks` (what each ``loss`` means), :mod:`~lit_tricks.modules.decay` (where weight decay
is applied), :mod:`~lit_tricks.modules.surgery` (norm, dropout, init) and :func:`lit_tricks.augment.tta.tta_flip`.
This file stays near 400 lines because the one class documents its ~20 YAML-facing arguments in one place.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_tricks.augment.tta import tta_flip
from lit_tricks.functional.losses import binned_expected_value, binned_point
from lit_tricks.functional.param_groups import (
    decoupled_weight_decay_,
    describe_param_groups,
    param_groups,
    split_decay,
)
from lit_tricks.functional.regularization import jacobian_penalty, l1_penalty, l2_penalty
from lit_tricks.models.heads import find_head
from lit_tricks.modules.decay import build_optimizer, decay_mode
from lit_tricks.modules.full_batch import check_full_batch_module, check_one_batch, second_order_class
from lit_tricks.modules.insertion import DROPOUT_PLACEMENTS, apply_dropout, apply_norm
from lit_tricks.modules.specs import as_factory, callable_from_spec, callable_to_spec, plain
from lit_tricks.modules.surgery import DROPOUT_KINDS, init_weights, noisy_layers, parse_norm
from lit_tricks.modules.tasks import BINNED_POINTS, LOSSES, bin_edges, is_regression_output, task_loss, task_residual
from lit_tricks.validation import check_number
from lit_tricks.weight_variants import WeightVariants

__all__ = ["LOSSES", "TrickModule", "callable_from_spec", "callable_to_spec"]

#: Checkpoint key holding the import path of the preprocessing module's class.
PREPROCESS_KEY = "lit_tricks_preprocess"


class TrickModule(pl.LightningModule):
    """Train any ``nn.Module`` with the notes' tricks: norm swap, dropout, init, weight decay (coupled or decoupled),
    L1, Jacobian penalty, label smoothing, MixUp/CutMix soft targets, binned regression, TTA, EMA side-by-side.

    Args:
        model: the network; modified in place by ``init`` -> ``norm`` -> ``dropout`` (that order).
        num_classes: default from the last ``nn.Linear``'s ``out_features``, else from the first batch's output.
        loss: cross_entropy | mse (one-hot targets for integer labels, plain regression for float targets) |
            binned (regression as classification over ``bins``: the model outputs one logit per bin).
        bins: increasing bin edges for ``loss="binned"`` (K+1 edges -> K logits).
        binned_point: the point prediction taken from the bin distribution: mean (expected value; best for squared
            error) | median (best for absolute error) | mode.
        norm: keep | batch | group | ``group:<n>`` | ``{kind: group, num_groups: n}`` | layer | weight | none
            (see :func:`~lit_tricks.modules.surgery.swap_norm`); on a model without norm layers, batch/group/layer
            insert one before each hidden activation (:func:`~lit_tricks.modules.insertion.apply_norm`).
        dropout: None keeps the model's dropout; a p in [0, 1) is set by
            :func:`~lit_tricks.modules.insertion.apply_dropout` with ``dropout_kind`` dropout | dropconnect |
            gaussian and ``dropout_placement`` head (one layer before the head) | every_hidden (after every hidden
            activation).
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
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        #: weight variants (e.g. the EMA) evaluated beside the trained weights: lit_tricks.weight_variants
        self.weight_variants = WeightVariants()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
        weight_decay = check_number("weight_decay", weight_decay, 0.0)
        l1 = check_number("l1", l1, 0.0)
        jacobian_reg = check_number("jacobian_reg", jacobian_reg, 0.0)
        if dropout is not None:
            dropout = check_number("dropout", dropout, 0.0, 1.0)
        if dropout_kind not in DROPOUT_KINDS:
            raise ValueError(f"dropout_kind must be one of {list(DROPOUT_KINDS)}, got {dropout_kind!r}")
        if dropout_placement not in DROPOUT_PLACEMENTS:
            raise ValueError(f"dropout_placement must be one of {list(DROPOUT_PLACEMENTS)}, got {dropout_placement!r}")
        parse_norm(norm)
        if scheduler_interval not in (None, "step", "epoch"):
            raise ValueError(f"scheduler_interval must be one of [None, 'step', 'epoch'], got {scheduler_interval!r}")
        if not isinstance(jacobian_projections, int) or jacobian_projections < 1:
            raise ValueError(f"jacobian_projections must be an integer >= 1, got {jacobian_projections!r}")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        if binned_point not in BINNED_POINTS:
            raise ValueError(f"binned_point must be one of {list(BINNED_POINTS)}, got {binned_point!r}")
        edges = bin_edges(loss, bins)
        self._optimizer_factory = as_factory(optimizer, "optimizer")
        self._scheduler_factory = as_factory(scheduler, "scheduler")
        opt_kwargs = getattr(self._optimizer_factory, "keywords", None) or {}
        if float(opt_kwargs.get("weight_decay", 0.0) or 0.0) != 0.0:
            raise ValueError(f"optimizer: weight_decay={opt_kwargs['weight_decay']!r} set in the optimizer; set "
                             "module weight_decay instead (decay is applied through parameter groups)")

        hparams = {
            "num_classes": num_classes, "loss": loss, "label_smoothing": label_smoothing,
            "bins": None if bins is None else [float(b) for b in bins], "binned_point": binned_point,
            "norm": norm, "dropout": dropout, "dropout_kind": dropout_kind, "dropout_placement": dropout_placement,
            "init": init, "weight_decay": weight_decay, "decoupled": bool(decoupled),
            "no_decay": list(no_decay), "l1": l1, "jacobian_reg": jacobian_reg,
            "jacobian_projections": jacobian_projections,
            "optimizer": None if self._optimizer_factory is None else callable_to_spec(self._optimizer_factory),
            "scheduler": None if self._scheduler_factory is None else callable_to_spec(self._scheduler_factory),
            "scheduler_interval": scheduler_interval, "tta": bool(tta), "top_k": top_k,
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
        if num_classes is None:
            if edges is not None:
                num_classes = edges.numel() - 1
            else:
                head = find_head(model)
                num_classes = head[2].out_features if head is not None else None
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

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Outputs on raw inputs: ``model(preprocess(x))``."""
        return self.model(self.preprocess(x))  # type: ignore[no-any-return]

    def _outputs(self, x: Tensor, tta: bool) -> Tensor:
        """Outputs, or with ``tta`` the flip-averaged ones (lit_tricks.augment.tta): log of the mean probabilities,
        or the mean output for regression."""
        out = self(x)
        if not tta:
            return out
        if self._is_regression_output(out):
            return tta_flip(self, x, probabilities=False)
        return torch.log(tta_flip(self, x))

    def _is_regression_output(self, out: Tensor) -> bool:
        return is_regression_output(self.loss_name, out)

    # ----------------------------------------------------------------------------------------------- the loss
    def compute_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Data loss of outputs ``out`` against targets ``y`` (indices, soft (N, K) targets, or real values)."""
        return task_loss(self.loss_name, out, y, self.label_smoothing, self.bin_edges)

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

    # ------------------------------------------------------------------------------------------------ metrics
    def _log_metric(self, key: str, factory: Callable[[], Any], preds: Tensor, target: Tensor,
                    **kwargs: Any) -> None:
        """Update the torchmetrics object logged as ``key`` (created on first use) and log it."""
        safe = key.replace("/", "__")
        if safe not in self.metrics:
            self.metrics[safe] = factory().to(self.device)
        metric: Any = self.metrics[safe]
        metric.update(preds, target)
        self.log(key, metric, metric_attribute=f"metrics.{safe}", **kwargs)

    def _evaluate(self, batch: Any, stage: str, variant: str | None) -> None:
        import torchmetrics.classification as tmc
        import torchmetrics.regression as tmr

        def key(metric: str) -> str:
            return metric if variant is None else self.weight_variants.metric_name(metric, variant)

        x, y = batch[0], batch[1]
        out = self._outputs(x, tta=self.tta and stage == "test")
        n = x.shape[0]
        log = functools.partial(self.log, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        log(key(f"{stage}/loss"), self.compute_loss(out, y), prog_bar=stage == "val" and variant is None)
        if self.loss_name == "binned" or self._is_regression_output(out):
            if self.bin_edges is not None:
                pred = binned_point(out, self.bin_edges, self.binned_point)
            else:
                pred = out.reshape(y.shape)
            for name, cls in (("mae", tmr.MeanAbsoluteError), ("mse", tmr.MeanSquaredError)):
                self._log_metric(key(f"{stage}/{name}"), cls, pred.detach(), y.to(pred.dtype), on_step=False,
                                 on_epoch=True)
            return
        if self.num_classes is None:
            self.num_classes = int(out.shape[-1])
        classes = self.num_classes
        target = y.argmax(-1) if y.is_floating_point() and y.ndim == out.ndim else y
        self._log_metric(key(f"{stage}/acc"), lambda: tmc.MulticlassAccuracy(classes, average="micro"),
                         out.detach(), target, on_step=False, on_epoch=True,
                         prog_bar=stage == "val" and variant is None)
        if self.top_k and classes > self.top_k:
            k = self.top_k
            self._log_metric(key(f"{stage}/top{k}_acc"),
                             lambda: tmc.MulticlassAccuracy(classes, top_k=k, average="micro"), out.detach(), target,
                             on_step=False, on_epoch=True)

    def _eval_step(self, batch: Any, stage: str) -> None:
        self._evaluate(batch, stage, None)
        for name, ctx in self.weight_variants.items():
            with ctx():
                self._evaluate(batch, stage, name)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Class probabilities; for binned regression ``{"value": binned_point, "mean": expected value, "probs"}``;
        raw outputs for mse regression."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        out = self._outputs(x, tta=self.tta)
        if self.loss_name == "binned":
            assert self.bin_edges is not None
            return {"value": binned_point(out, self.bin_edges, self.binned_point),
                    "mean": binned_expected_value(out, self.bin_edges), "probs": out.softmax(-1)}
        if self._is_regression_output(out):
            return out
        return out.softmax(-1)

    # --------------------------------------------------------------------------------------------- optimizers
    def describe_param_groups(self) -> str:
        """A table of which tensors of the model get which weight decay and L1 (print it)."""
        return describe_param_groups(self.model, self.weight_decay, self.l1, exclude=self.no_decay)

    @property
    def backbone(self) -> nn.Module:
        """Every layer of the model but its head (:func:`~lit_tricks.models.heads.find_head`), for
        :class:`~lit_tricks.callbacks.backbone_finetuning.BackboneFinetuning`: a ``ModuleList`` of the model's leaf
        layers, plus holders of the parameters that a parent module owns itself (e.g. a ViT's class token)."""
        head = find_head(self.model)
        if head is None:
            raise AttributeError("backbone: the model has no nn.Linear head (lit_tricks.models.heads.find_head)")
        layers: list[nn.Module] = []
        for module in self.model.modules():
            if module is head[2]:
                continue
            if not list(module.children()):
                layers.append(module)
            elif module._parameters:
                holder = nn.Module()
                for name, p in module.named_parameters(recurse=False):
                    holder.register_parameter(name, p)
                layers.append(holder)
        return nn.ModuleList(layers)

    def finetune_param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Optimizer groups for ``params`` unfrozen after :meth:`configure_optimizers` (BackboneFinetuning), under
        this module's weight-decay rule: decayed tensors and the rest (biases, norms, ``no_decay``), as there."""
        decayed = {id(p) for p in self._decay_params()}
        native = self._decay_mode == "native"
        groups = [
            {"params": [p for p in params if id(p) in decayed], "weight_decay": self.weight_decay if native else 0.0,
             "lit_tricks_decay": self.weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0, "lit_tricks_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

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
        return {"optimizer": optimizer, "lr_scheduler": self._scheduler_config(optimizer)}

    def _scheduler_config(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        assert self._scheduler_factory is not None
        try:
            lr_scheduler_config = getattr(importlib.import_module("lit_tricks.schedules"), "lr_scheduler_config", None)
        except ImportError:  # plain torch schedulers need no lit_tricks.schedules
            lr_scheduler_config = None
        if lr_scheduler_config is not None:
            config = dict(lr_scheduler_config(self._scheduler_factory, optimizer, self.trainer))
        else:
            scheduler = self._scheduler_factory(optimizer)
            config = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config["monitor"] = "val/loss"
        if self.scheduler_interval is not None:
            config["interval"] = self.scheduler_interval
        return config

    # ----------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The preprocessing class (a plain string), so load_from_checkpoint can rebuild it when it is not passed.
        if not isinstance(self.preprocess, nn.Identity):
            cls = type(self.preprocess)
            checkpoint[PREPROCESS_KEY] = f"{cls.__module__}.{cls.__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        has_stats = any(k.startswith("preprocess.") for k in checkpoint.get("state_dict", {}))
        if not has_stats or not isinstance(self.preprocess, nn.Identity):
            return
        target = checkpoint.get(PREPROCESS_KEY)
        try:
            self.preprocess = callable_from_spec({"_target_": target})()
        except Exception as err:
            raise ValueError(f"preprocess: this checkpoint carries input preprocessing statistics ({target}); pass "
                             "preprocess=<an instance of that class> to load_from_checkpoint") from err

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
