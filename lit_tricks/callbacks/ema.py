"""EMAWeights: an exponential moving average of the weights, used for evaluation, saved beside each checkpoint."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lit_tricks.compat import first_train_loader
from lit_tricks.fault.ema_checkpoint import EMA_CHECKPOINT_PREFIX, EMAStateCallback, ema_checkpoint_path
from lit_tricks.fault.state_keys import cached_state_key
from lit_tricks.functional.batchnorm import batch_inputs, batchnorm_layers, recalibrate_bn_, sampled_batches
from lit_tricks.functional.ema import BUFFER_MODES, optimizer_steps_since
from lit_tricks.functional.ema_state import EMA_DTYPES, EMAState
from lit_tricks.validation import check_choice, check_number
from lit_tricks.weight_variants import weight_variants_of

__all__ = ["EMA_CHECKPOINT_PREFIX", "EMAWeights", "ema_checkpoint_path"]

EVALUATE_WITH = ("ema", "raw")
_STATE_VERSION = 1


class EMAWeights(EMAStateCallback):
    """Keep an exponential moving average (EMA) of the weights; evaluate with it; save it beside each checkpoint.

    The EMA (tensors, decay rule ``decay`` / ``half_life_steps`` / ``warmup``, ``buffers`` copy | average, swapping)
    is a Trainer-free :class:`~lit_tricks.functional.ema_state.EMAState` in :attr:`state`; this class maps
    Lightning's hooks to it: after each optimizer step past ``start_step`` (until then the EMA equals the raw
    weights) it updates when :meth:`should_update` says so. A second ``fit()`` on the same module continues the EMA.

    Args:
        device: where the EMA lives: ``None`` beside each weight, or e.g. ``"cpu"`` to offload it.
        evaluate_with: ``"ema"`` swaps the EMA into the model for validation/test/predict (and back after), also
            after ``trainer.test(ckpt_path="best")``; ``"raw"`` evaluates the trained weights.
        validate_both: log raw and EMA metrics side by side (``val/acc``, ``val/acc_ema``) through
            :mod:`lit_tricks.weight_variants` (variant ``"ema"``); the model is not swapped then.
        recalibrate_bn_batches: before each evaluation with the EMA, recompute BatchNorm statistics on this many
            train batches (:meth:`bn_forward` runs one); the EMA buffers (and checkpoint) keep them. The batches come
            from the train dataset in an order seeded by the global step
            (:func:`~lit_tricks.functional.batchnorm.sampled_batches`), never from the training loader's iterator.
        apply_at_end: put the EMA into the model when training ends; :meth:`restore_raw_weights` undoes it.
        save_ema_checkpoint: beside each ``X.ckpt`` write ``ema-X.ckpt`` (:meth:`write_ema_twin`), removed with it;
            the twin holds the EMA in the model's dtype.
        ema_dtype: the EMA's dtype (:data:`~lit_tricks.functional.ema_state.EMA_DTYPES`); default: fp32 for bf16/fp16
            weights (4 bytes per parameter instead of 2: a bf16 EMA at decay 0.999 never moves), else the weight's.

    Checkpoints hold the raw weights in ``state_dict``; the EMA and its counters are callback state, so resume is
    exact (:class:`~lit_tricks.fault.ema_checkpoint.EMAStateCallback`). Under DDP every rank holds the same EMA
    (BatchNorm statistics from rank 0); under ``ModelParallelStrategy`` (FSDP2) each rank averages its own shards,
    with no communication per update (:mod:`lit_tricks.fault.ema_shards`). Guide: docs/parts/ema.md.

    Polyak & Juditsky (1992); TensorFlow ``ExponentialMovingAverage`` (warm-up); Composer ``EMA`` (half-life).
    """

    def __init__(
        self,
        decay: float = 0.999,
        *,
        half_life_steps: float | None = None,
        warmup: bool = False,
        update_every_n_steps: int = 1,
        start_step: int = 0,
        device: str | torch.device | None = None,
        evaluate_with: str = "ema",
        validate_both: bool = False,
        recalibrate_bn_batches: int = 0,
        apply_at_end: bool = True,
        save_ema_checkpoint: bool = True,
        buffers: str = "copy",
        ema_dtype: str | None = None,
    ) -> None:
        check_number("decay", decay, 0.0, 1.0, hi_open=False, owner="EMAWeights")
        check_number("update_every_n_steps", update_every_n_steps, 1, integer=True, owner="EMAWeights")
        check_number("start_step", start_step, 0, integer=True, owner="EMAWeights")
        check_number("recalibrate_bn_batches", recalibrate_bn_batches, 0, integer=True, owner="EMAWeights")
        if half_life_steps is not None:
            check_number("half_life_steps", half_life_steps, 0.0, lo_open=True, owner="EMAWeights")
        check_choice("evaluate_with", evaluate_with, EVALUATE_WITH, owner="EMAWeights")
        check_choice("buffers", buffers, BUFFER_MODES, owner="EMAWeights")
        check_choice("ema_dtype", ema_dtype, EMA_DTYPES, owner="EMAWeights")
        self.decay, self.half_life_steps, self.warmup = float(decay), half_life_steps, warmup
        self.update_every_n_steps, self.start_step = update_every_n_steps, start_step
        self.device = torch.device(device) if device is not None else None
        self.recalibrate_bn_batches = recalibrate_bn_batches
        self.apply_at_end, self.buffers, self.ema_dtype = apply_at_end, buffers, ema_dtype
        super().__init__(EMAState(decay, half_life_steps=half_life_steps, update_every_n_steps=update_every_n_steps,
                                  warmup=warmup, buffers=buffers, device=device, ema_dtype=ema_dtype),
                         save_ema_checkpoint, evaluate_with, validate_both)
        # persistent state (in state_dict), besides the EMA's
        self.last_step = 0  # trainer.global_step when the callback last saw an optimizer step (this Trainer)
        self.steps = 0  # optimizer steps seen over every fit of the same module (step_idx + 1 of should_update)
        # transient (dropped when pickled)
        self._module: pl.LightningModule | None = None
        self._trainer: pl.Trainer | None = None
        self._applied = False  # the EMA is in the model and stays there (apply_at_end)
        self._recalibrated_at: tuple[int, int] | None = None  # (last_step, num_updates) of the last recalibration
        self._bound_module: weakref.ref[pl.LightningModule] | None = None  # the module the EMA belongs to

    @property
    def state_key(self) -> str:
        return cached_state_key(self, decay=self.decay, half_life_steps=self.half_life_steps)

    def state_dict(self) -> dict[str, Any]:
        ema = self.ema_entries()  # under sharding: gathered (full-file checkpoints) or named shards (directories)
        return {"version": _STATE_VERSION, "last_step": self.last_step, "steps": self.steps, **ema}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_ema_entries(state_dict)
        self.last_step = int(state_dict.get("last_step", 0))
        self.steps = int(state_dict.get("steps", self.last_step))
        self._recalibrated_at = None
        self._applied = False  # a checkpoint restore has just put raw weights into the model

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # picklable under ddp_spawn: no module, trainer or wrapped IO references
        state.update(_module=None, _trainer=None, _installed_io=None, _applied=False, _bound_module=None, _saves=None)
        return state

    @contextlib.contextmanager
    def ema_weights(self, pl_module: pl.LightningModule | None = None, recalibrate: bool = False) -> Iterator[None]:
        """Context manager: the EMA is in ``pl_module`` inside, the previous weights are back after."""
        module = pl_module if pl_module is not None else self._module
        if module is None:
            raise RuntimeError("EMAWeights.ema_weights() needs a LightningModule (pass it, or use it inside fit)")
        was_swapped = self.state.swapped
        self._swap_in(module, recalibrate=recalibrate)
        try:
            yield
        finally:
            if not was_swapped:
                self.state.swap_out()

    def ema_context(self) -> contextlib.AbstractContextManager[None]:
        """The ``"ema"`` weight variant offered to the module (a bound method: picklable, unlike a closure)."""
        sanity = self._trainer is not None and self._trainer.sanity_checking
        return self.ema_weights(recalibrate=self.recalibrate_bn_batches > 0 and not sanity)

    def restore_raw_weights(self, pl_module: pl.LightningModule | None = None) -> None:
        """Put the raw (trained) weights back into the model after ``apply_at_end`` (also after fit returned)."""
        if pl_module is not None and self.state.swapped:
            self.state.attach(pl_module)
        self._applied = False
        self.state.swap_out()

    def recalibrate_bn(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Recompute BatchNorm running stats of ``pl_module`` on ``recalibrate_bn_batches`` train batches."""
        if not batchnorm_layers(pl_module) or self.recalibrate_bn_batches == 0:
            return
        loader = first_train_loader(trainer)
        if loader is None:
            rank_zero_warn("EMAWeights: no train dataloader to recalibrate BatchNorm with; using the EMA buffers.")
            return
        # batches of its own (sampled_batches): the training loader's position stays what a checkpoint saves
        recalibrate_bn_(pl_module, sampled_batches(loader, seed=trainer.global_step),
                        lambda _model, batch: self.bn_forward(pl_module, trainer.strategy.batch_to_device(batch)),
                        num_batches=self.recalibrate_bn_batches)

    def bn_forward(self, pl_module: pl.LightningModule, batch: Any) -> None:
        """One forward pass for BN recalibration; override for batches that are not ``(x, ...)`` or ``x``."""
        pl_module(batch_inputs(batch))

    def should_update(self, step_idx: int, epoch_idx: int) -> bool:
        """Whether to update the EMA after optimizer step ``step_idx`` (0-based; counted over every fit of the same
        module, ``trainer.global_step - 1`` in one fit) of epoch ``epoch_idx``; called past ``start_step`` only.
        Default: every ``update_every_n_steps``-th step after ``start_step``."""
        return (step_idx + 1 - self.start_step) % self.update_every_n_steps == 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # refuses sharded strategies; installs the twin-writing IO
        self._module, self._trainer = pl_module, trainer
        variants = weight_variants_of(pl_module)
        if self.validate_both and variants is not None:
            variants.add("ema", self.ema_context)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        variants = weight_variants_of(pl_module)
        if variants is not None:
            variants.remove("ema", self.ema_context)
        super().teardown(trainer, pl_module, stage)
        self._module = self._trainer = None
        self.state.release()  # kept while the EMA stays applied, so that restore_raw_weights() works after fit

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._applied:  # a second fit() after apply_at_end trains on from the raw weights
            self.restore_raw_weights()
        bound = self._bound_module() if self._bound_module is not None else None
        if bound is not None and bound is not pl_module and self.state.pending is None:
            # another module (not a restore from a checkpoint): its EMA starts from its own weights
            self.state.reset()
            self.steps = 0
        self._bound_module = weakref.ref(pl_module)
        self._ensure(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # this Trainer's step counter (restored from a checkpoint, or 0 in a new fit): a second fit with a new
        # Trainer continues the EMA and the step count of the first instead of mistaking step 0 for a new step
        self.last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        taken = optimizer_steps_since(self.last_step, trainer.global_step)
        if not taken:  # no optimizer step on this batch (gradient accumulation)
            return
        self.steps, self.last_step = self.steps + taken, trainer.global_step
        if not self.state.ready:  # state restored after on_fit_start (FSDP, DeepSpeed)
            self._ensure(pl_module)
        if self.steps <= self.start_step:  # not started: the EMA follows the raw weights
            self.state.follow()
        elif self.should_update(self.steps - 1, trainer.current_epoch):
            self.state.update()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync_buffers(trainer)  # before ModelCheckpoint (always last) saves at train epoch end

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync_buffers(trainer)
        if self.apply_at_end:
            # before on_fit_end, so that EarlyStopping(restore_best_weights=True) has the last word
            self._swap_in(pl_module, recalibrate=self.recalibrate_bn_batches > 0)
            self._applied = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._sync_buffers(trainer)
        if self._should_swap(for_metrics=True):
            self._swap_in(pl_module, recalibrate=self.recalibrate_bn_batches > 0 and not trainer.sanity_checking)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_test_end(trainer, pl_module)
        variants = weight_variants_of(pl_module)
        logged = variants is not None and any(m in trainer.callback_metrics for m in variants.metrics_of("ema"))
        if self.validate_both and not trainer.sanity_checking and not logged:
            rank_zero_warn(
                "EMAWeights(validate_both=True): no EMA metric was logged; the LightningModule must implement "
                "lit_tricks.weight_variants.SupportsWeightVariants (see that module's docstring)."
            )

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_swap(for_metrics=True):
            self._swap_in(pl_module, recalibrate=self.recalibrate_bn_batches > 0)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_swap(for_metrics=False):
            self._swap_in(pl_module, recalibrate=self.recalibrate_bn_batches > 0)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._applied:
            self.state.swap_out()

    on_predict_end = on_test_end

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_test_end(trainer, pl_module)

    def _should_swap(self, for_metrics: bool) -> bool:
        if self.evaluate_with != "ema" or self.state.swapped:
            return False
        return not (for_metrics and self.validate_both)  # the module evaluates both variants itself

    def _swap_in(self, pl_module: pl.LightningModule, recalibrate: bool) -> None:
        if self.state.swapped:
            return
        self._ensure(pl_module)  # a restored EMA is matched (or its shards loaded) before it goes in
        self.state.swap_in(pl_module)
        # once per EMA state: a module following the variants protocol enters the context once per batch
        if recalibrate and self._trainer is not None and self._recalibrated_at != (self.last_step, self.num_updates):
            self._recalibrated_at = (self.last_step, self.num_updates)
            self.recalibrate_bn(self._trainer, pl_module)
            self.state.keep_model_buffers()  # the EMA (and its checkpoint) keep the new statistics
            self._sync_buffers(self._trainer)

