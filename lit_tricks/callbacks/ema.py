"""EMAWeights: an exponential moving average of the weights, used for evaluation, saved beside each checkpoint."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from lit_tricks.compat import installed_checkpoint_io
from lit_tricks.fault.atomic import atomic_torch_save
from lit_tricks.fault.state_keys import warn_changed_args
from lit_tricks.functional.ema import (
    BUFFER_MODES,
    copy_,
    decay_from_half_life,
    ema_update_,
    named_ema_tensors,
    state_dict_aliases,
    update_buffers_,
    warmup_decay,
)
from lit_tricks.functional.ensemble import recalibrate_bn_
from lit_tricks.functional.wrappers import match_wrapped_keys
from lit_tricks.weight_variants import weight_variants_of

__all__ = ["EMA_CHECKPOINT_SUFFIX", "EMAWeights", "ema_checkpoint_path"]

log = logging.getLogger(__name__)

EVALUATE_WITH = ("ema", "raw")
EMA_CHECKPOINT_SUFFIX = "-ema"
_STATE_VERSION = 1


def ema_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Where the EMA-only twin of checkpoint ``path`` goes: ``last.ckpt -> ema-last.ckpt``, beside it.

    Never a name starting with ``last``: Lightning's ``fit(ckpt_path="last")`` resumes from the newest ``last*`` file
    of a ModelCheckpoint's folder, and a twin holds no training state.
    """
    p = Path(path)
    return p.with_name("ema-" + p.name)


class EMAWeights(Callback):
    """Keep an exponential moving average (EMA) of the weights; evaluate with it; save it beside each checkpoint.

    After every ``update_every_n_steps``-th optimizer step past ``start_step``:
    ``ema <- d * ema + (1 - d) * w`` for floating-point parameters (one ``torch._foreach_lerp_``, no host sync),
    with ``d = decay``, or ``d = 0.5 ** (update_every_n_steps / half_life_steps)`` when ``half_life_steps`` is
    given (it overrides ``decay``), or with ``warmup=True`` ``d_t = min(d, (1 + t) / (10 + t))`` where ``t`` is
    the number of updates done. Buffers are copied (``buffers="copy"``) or averaged (``"average"``); integer
    buffers such as BatchNorm's ``num_batches_tracked`` are always copied. Until ``start_step`` the EMA equals
    the raw weights.

    Args:
        device: where the EMA lives: ``None`` beside each weight, or e.g. ``"cpu"`` to offload it.
        evaluate_with: ``"ema"`` swaps the EMA into the model for validation/test/predict (and back after), also
            after ``trainer.test(ckpt_path="best")``; ``"raw"`` evaluates the trained weights.
        validate_both: log raw and EMA metrics side by side (``val/acc`` and ``val/acc_ema``). The callback adds
            the variant ``"ema"`` to ``pl_module.weight_variants``; a module implementing
            :class:`lit_tricks.weight_variants.SupportsWeightVariants` (TrickModule does) runs its metrics once
            normally and once inside the variant's context (which swaps the EMA in and back). The model is not
            swapped then.
        recalibrate_bn_batches: before each evaluation with the EMA, recompute BatchNorm running statistics for the
            EMA weights on this many train batches (cumulative average, as ``torch.optim.swa_utils.update_bn``);
            the recalibrated statistics are written into the EMA buffers (so into the EMA checkpoint).
        apply_at_end: put the EMA into the model when training ends; :meth:`restore_raw_weights` undoes it.
        save_ema_checkpoint: beside each checkpoint ``X.ckpt`` write ``X-ema.ckpt`` (EMA weights in
            ``state_dict``, no optimizer state; loadable with ``LightningModule.load_from_checkpoint``).

    How the ``-ema`` twins are written (explicitly): in ``setup`` the callback wraps ``trainer.strategy.checkpoint_io``
    in a delegating CheckpointIO (undone in ``teardown``) that, for every checkpoint file the Trainer writes or
    removes, (1) puts the raw weights into weights-only checkpoints (Lightning skips callback hooks for them),
    (2) after the strategy's own IO saved ``X.ckpt``, calls :meth:`write_ema_twin` when ``save_ema_checkpoint`` is
    true, (3) removes ``X-ema.ckpt`` with ``X.ckpt`` (ModelCheckpoint's top-k rotation). A user CheckpointIO plugin
    is kept underneath and does the actual IO.

    When to update: after each optimizer step past ``start_step``, when :meth:`should_update` (Lightning's
    ``WeightAveraging.should_update(step_idx, epoch_idx)`` signature; override it) says so. A second ``fit()`` of
    the same instance on the same module (a new Trainer, other ``accumulate_grad_batches``...) continues the EMA and
    its step count; a fit of another module starts a new EMA from that module's weights.

    Sharded strategies (FSDP, ModelParallel, DeepSpeed ZeRO-3) are refused at ``setup`` with a ``ValueError``: each
    rank would average only its own shard and no checkpoint would gather the EMA. DDP and single-device runs are
    supported (under DDP every rank holds the same EMA; BatchNorm statistics come from rank 0).

    Checkpoints always hold the raw weights in ``state_dict`` (also when saved while the EMA is swapped in),
    so resuming with or without this callback trains on from the raw weights; the EMA and its counters are
    in the callback state, so resuming is exact. Tensor names tolerate ``_orig_mod.``/``module.`` prefixes.

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
    ) -> None:
        super().__init__()
        if not (isinstance(decay, (int, float)) and 0.0 <= decay <= 1.0):
            raise ValueError(f"`decay` must be a number in [0, 1], got {decay!r}")
        _check_int("update_every_n_steps", update_every_n_steps, minimum=1)
        _check_int("start_step", start_step, minimum=0)
        _check_int("recalibrate_bn_batches", recalibrate_bn_batches, minimum=0)
        if evaluate_with not in EVALUATE_WITH:
            raise ValueError(f"`evaluate_with` must be one of {EVALUATE_WITH}, got {evaluate_with!r}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"`buffers` must be one of {BUFFER_MODES}, got {buffers!r}")
        self.decay = float(decay)
        self.half_life_steps = half_life_steps
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self.device = torch.device(device) if device is not None else None
        self.evaluate_with = evaluate_with
        self.validate_both = validate_both
        self.recalibrate_bn_batches = recalibrate_bn_batches
        self.apply_at_end = apply_at_end
        self.save_ema_checkpoint = save_ema_checkpoint
        self.buffers = buffers
        #: per-update decay before warm-up (from ``half_life_steps`` when given)
        self.base_decay = (
            decay_from_half_life(half_life_steps, update_every_n_steps) if half_life_steps is not None else self.decay
        )
        # persistent state (in state_dict)
        self.num_updates = 0  # EMA updates done (t of the warm-up formula)
        self.last_step = 0  # trainer.global_step when the callback last saw an optimizer step (this Trainer)
        self.steps = 0  # optimizer steps seen over every fit of the same module (step_idx + 1 of should_update)
        # EMA tensors, aligned with the model tensors below (names are pl_module.state_dict keys)
        self._names: list[str] = []
        self._aliases: dict[str, list[str]] = {}  # every state_dict key of a tensor shared under several names
        self._ema_params: list[Tensor] = []
        self._ema_buffers: list[Tensor] = []
        self._pending: dict[str, Tensor] | None = None  # loaded state, matched to the model on first use
        # transient (dropped when pickled)
        self._module: pl.LightningModule | None = None
        self._trainer: pl.Trainer | None = None
        self._model_params: list[Tensor] = []
        self._model_buffers: list[Tensor] = []
        self._backup: list[Tensor] = []  # raw weights while the EMA is in the model
        self._swapped = False  # the EMA is in the model
        self._applied = False  # ... and stays there (apply_at_end)
        self._installed_io: _EMACheckpointIO | None = None
        self._recalibrated_at: tuple[int, int] | None = None  # (last_step, num_updates) of the last recalibration
        self._bound_module: weakref.ref[pl.LightningModule] | None = None  # the module the EMA belongs to

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, half_life_steps=self.half_life_steps)

    def state_dict(self) -> dict[str, Any]:
        ema = dict(zip(self._names, self._ema_params + self._ema_buffers))
        if not ema and self._pending is not None:
            ema = dict(self._pending)
        return {"version": _STATE_VERSION, "num_updates": self.num_updates, "last_step": self.last_step,
                "steps": self.steps, "ema": ema}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict.get("num_updates", 0))
        self.last_step = int(state_dict.get("last_step", 0))
        self.steps = int(state_dict.get("steps", self.last_step))
        self._pending = dict(state_dict.get("ema", {})) or None
        self._names, self._ema_params, self._ema_buffers = [], [], []
        self._recalibrated_at = None
        # a checkpoint restore has just put raw weights into the model: nothing of ours is swapped in any more
        self._swapped = self._applied = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # picklable under ddp_spawn: no module, trainer or wrapped IO references
        state.update(_module=None, _trainer=None, _model_params=[], _model_buffers=[], _backup=[],
                     _installed_io=None, _swapped=False, _applied=False, _bound_module=None)
        return state

    # ------------------------------------------------------------------ public helpers
    @property
    def ema_state_dict(self) -> dict[str, Tensor]:
        """The EMA as ``{state_dict key: tensor}`` (empty before the first fit/restore)."""
        return dict(zip(self._names, self._ema_params + self._ema_buffers))

    def decay_at(self, num_updates: int) -> float:
        """The decay of update number ``num_updates`` (0-based), warm-up included."""
        return warmup_decay(self.base_decay, num_updates) if self.warmup else self.base_decay

    @contextlib.contextmanager
    def ema_weights(self, pl_module: pl.LightningModule | None = None, recalibrate: bool = False) -> Iterator[None]:
        """Context manager: the EMA is in ``pl_module`` inside, the previous weights are back after."""
        module = pl_module if pl_module is not None else self._module
        if module is None:
            raise RuntimeError("EMAWeights.ema_weights() needs a LightningModule (pass it, or use it inside fit)")
        was_swapped = self._swapped
        self._swap_in(module, recalibrate=recalibrate)
        try:
            yield
        finally:
            if not was_swapped:
                self._swap_out()

    def ema_context(self) -> contextlib.AbstractContextManager[None]:
        """The ``"ema"`` weight variant offered to the module (a bound method: picklable, unlike a closure)."""
        sanity = self._trainer is not None and self._trainer.sanity_checking
        return self.ema_weights(recalibrate=self.recalibrate_bn_batches > 0 and not sanity)

    def restore_raw_weights(self, pl_module: pl.LightningModule | None = None) -> None:
        """Put the raw (trained) weights back into the model after ``apply_at_end`` (also after fit returned)."""
        if pl_module is not None and self._swapped:
            params, buffers = named_ema_tensors(pl_module)
            self._model_params = [t.detach() for _, t in params]
            self._model_buffers = [t.detach() for _, t in buffers]
        self._applied = False
        self._swap_out()

    def recalibrate_bn(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Recompute BatchNorm running stats of ``pl_module`` on ``recalibrate_bn_batches`` train batches."""
        bns = [m for m in pl_module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        if not bns or self.recalibrate_bn_batches == 0:
            return
        loader: Any = trainer.train_dataloader
        while isinstance(loader, (list, tuple, dict)) and loader:  # several train loaders: use the first
            loader = next(iter(loader.values())) if isinstance(loader, dict) else loader[0]
        if loader is None or isinstance(loader, (list, tuple, dict)):
            rank_zero_warn("EMAWeights: no train dataloader to recalibrate BatchNorm with; using the EMA buffers.")
            return
        recalibrate_bn_(
            pl_module, itertools.islice(loader, self.recalibrate_bn_batches),
            lambda _model, batch: self.bn_forward(pl_module, trainer.strategy.batch_to_device(batch)),
        )

    def bn_forward(self, pl_module: pl.LightningModule, batch: Any) -> None:
        """One forward pass for BN recalibration; override for batches that are not ``(x, ...)`` or ``x``."""
        pl_module(batch[0] if isinstance(batch, (list, tuple)) else batch)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        sharded = _sharded_strategy(trainer.strategy)
        if sharded:
            raise ValueError(
                f"EMAWeights does not support sharded strategies (got {sharded}): each rank holds only its shard of "
                "the weights and nothing gathers the EMA; use a ddp strategy or remove EMAWeights"
            )
        self._module, self._trainer = pl_module, trainer
        variants = weight_variants_of(pl_module)
        if self.validate_both and variants is not None:
            variants.add("ema", self.ema_context)
        if self._installed_io is None:  # writes the -ema twins; keeps weights-only checkpoints raw too
            self._installed_io = _EMACheckpointIO(trainer.strategy.checkpoint_io, self)
            trainer.strategy.checkpoint_io = self._installed_io

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        variants = weight_variants_of(pl_module)
        if variants is not None:
            variants.remove("ema", self.ema_context)
        if self._installed_io is not None and installed_checkpoint_io(trainer.strategy) is self._installed_io:
            trainer.strategy.checkpoint_io = self._installed_io.inner
        self._installed_io = None
        self._module = self._trainer = None
        if not self._swapped:  # kept while the EMA stays applied, so that restore_raw_weights() works after fit
            self._model_params, self._model_buffers = [], []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._applied:  # a second fit() after apply_at_end trains on from the raw weights
            self.restore_raw_weights()
        bound = self._bound_module() if self._bound_module is not None else None
        if bound is not None and bound is not pl_module and self._pending is None:
            # another module (not a restore from a checkpoint): its EMA starts from its own weights
            self._names, self._ema_params, self._ema_buffers = [], [], []
            self.num_updates = self.steps = 0
        self._bound_module = weakref.ref(pl_module)
        self._ensure(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # this Trainer's step counter (restored from a checkpoint, or 0 in a new fit): a second fit with a new
        # Trainer continues the EMA and the step count of the first instead of mistaking step 0 for a new step
        self.last_step = trainer.global_step

    def should_update(self, step_idx: int, epoch_idx: int) -> bool:
        """Whether to update the EMA after optimizer step ``step_idx`` (0-based) of epoch ``epoch_idx``.

        Lightning's ``WeightAveraging.should_update`` signature; override it for another rule. ``step_idx`` counts
        the optimizer steps this callback saw over every fit of the same module (``trainer.global_step - 1`` in a
        single fit or a resumed one). Called only past ``start_step`` (until then the EMA follows the raw
        weights). Default: every ``update_every_n_steps``-th step after ``start_step``.
        """
        return (step_idx + 1 - self.start_step) % self.update_every_n_steps == 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self.last_step:  # no optimizer step on this batch (gradient accumulation)
            return
        self.steps += max(1, step - self.last_step)
        self.last_step = step
        if self._pending is not None or not self._names:  # state restored after on_fit_start (FSDP, DeepSpeed)
            self._ensure(pl_module)
        if self.steps <= self.start_step:  # not started: the EMA follows the raw weights
            copy_(self._ema_params, self._model_params)
            copy_(self._ema_buffers, self._model_buffers)
        elif self.should_update(self.steps - 1, trainer.current_epoch):
            d = self.decay_at(self.num_updates)
            ema_update_(self._ema_params, self._model_params, d)
            update_buffers_(self._ema_buffers, self._model_buffers, d, self.buffers)
            self.num_updates += 1

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
        if self._swapped and not self._applied:
            self._swap_out()
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

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped and not self._applied:
            self._swap_out()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_swap(for_metrics=False):
            self._swap_in(pl_module, recalibrate=self.recalibrate_bn_batches > 0)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped and not self._applied:
            self._swap_out()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._swapped and not self._applied:
            self._swap_out()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._put_raw_weights(checkpoint)

    def _put_raw_weights(self, checkpoint: dict[str, Any]) -> None:
        """If the EMA is in the model (evaluation or apply_at_end), put the raw weights into ``state_dict``."""
        if not self._swapped or "state_dict" not in checkpoint:
            return
        sd = checkpoint["state_dict"]
        for name, raw in zip(self._names, self._backup):
            value = raw.detach().clone()
            for key in self._aliases.get(name, (name,)):  # a tied tensor: all its names, else the last one wins
                if key in sd:
                    sd[key] = value

    # ------------------------------------------------------------------ internals
    def _should_swap(self, for_metrics: bool) -> bool:
        if self.evaluate_with != "ema" or self._swapped:
            return False
        return not (for_metrics and self.validate_both)  # the module evaluates both variants itself

    def _ensure(self, pl_module: pl.LightningModule) -> None:
        """Bind to the model's tensors and create (or match the loaded) EMA tensors."""
        params, buffers = named_ema_tensors(pl_module)
        names = [n for n, _ in params] + [n for n, _ in buffers]
        self._model_params = [t.detach() for _, t in params]
        self._model_buffers = [t.detach() for _, t in buffers]
        self._aliases = state_dict_aliases(pl_module)
        if self._pending is None and names == self._names and _same_shapes(self._ema_params, self._model_params):
            return
        source: dict[str, Tensor] = {}
        if self._pending is not None:
            matched = match_wrapped_keys(self._pending, names)  # the loaded EMA may come from a wrapped model
            model_by_name = dict(params + buffers)
            missing = [n for n in names if n not in matched]
            wrong = [n for n in names if n not in missing and matched[n].shape != model_by_name[n].shape]
            if missing or wrong:
                raise RuntimeError(
                    f"EMAWeights: the loaded EMA state has no tensors for {missing[:5]} and other shapes for "
                    f"{wrong[:5]}; it belongs to another model"
                )
            source = {n: matched[n] for n in names}
        self._pending = None
        self._names = names
        model_tensors = self._model_params + self._model_buffers
        ema = [
            source.get(n, t).detach().to(device=self.device or t.device, dtype=t.dtype, copy=True)
            for n, t in zip(names, model_tensors)
        ]
        self._ema_params, self._ema_buffers = ema[: len(params)], ema[len(params):]

    def _swap_in(self, pl_module: pl.LightningModule, recalibrate: bool) -> None:
        if self._swapped:
            return
        self._ensure(pl_module)
        current = self._model_params + self._model_buffers
        if len(self._backup) == len(current) and _same_shapes(self._backup, current):
            copy_(self._backup, current)
        else:
            self._backup = [t.detach().clone() for t in current]
        copy_(self._model_params, self._ema_params)
        copy_(self._model_buffers, self._ema_buffers)
        self._swapped = True
        # once per EMA state: a module following the variants protocol enters the context once per batch
        if recalibrate and self._trainer is not None and self._recalibrated_at != (self.last_step, self.num_updates):
            self._recalibrated_at = (self.last_step, self.num_updates)
            self.recalibrate_bn(self._trainer, pl_module)
            copy_(self._ema_buffers, self._model_buffers)  # the EMA (and its checkpoint) keep the new statistics
            self._sync_buffers(self._trainer)

    def _swap_out(self) -> None:
        if not self._swapped:
            return
        copy_(self._model_params + self._model_buffers, self._backup)
        self._swapped = False

    def _sync_buffers(self, trainer: pl.Trainer) -> None:
        """Give every rank rank 0's EMA buffers (BatchNorm statistics differ per rank under DDP)."""
        if trainer.world_size <= 1 or not self._ema_buffers:
            return
        received = trainer.strategy.broadcast([b.cpu() for b in self._ema_buffers], src=0)
        copy_(self._ema_buffers, received)
        if self._swapped:
            copy_(self._model_buffers, self._ema_buffers)

    def write_ema_twin(self, checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
        """Write ``<path stem>-ema.ckpt``: the checkpoint with EMA weights in ``state_dict``, no training state.

        The hook called (rank 0, after the strategy's CheckpointIO wrote ``checkpoint`` to ``path``) for every
        checkpoint while ``save_ema_checkpoint=True``; override it to write the twin elsewhere or otherwise.
        """
        if Path(path).stem.endswith(EMA_CHECKPOINT_SUFFIX) or not self._names:
            return
        skip = {"optimizer_states", "lr_schedulers", "callbacks", "loops"}
        ema_ckpt = {k: v for k, v in checkpoint.items() if k not in skip}
        sd = dict(checkpoint["state_dict"])
        for name, tensor in self.ema_state_dict.items():
            for key in self._aliases.get(name, (name,)):  # a tied tensor: all its names, else the last one wins
                if key in sd:
                    sd[key] = tensor
        ema_ckpt["state_dict"] = sd
        ema_ckpt["lit_tricks_ema"] = {"version": _STATE_VERSION, "num_updates": self.num_updates,
                                      "decay": self.base_decay, "source": Path(path).name}
        atomic_torch_save(ema_ckpt, ema_checkpoint_path(path))


class _EMACheckpointIO(CheckpointIO):
    """Delegates to the strategy's CheckpointIO; also writes and removes the ``-ema`` twin of each checkpoint."""

    def __init__(self, inner: CheckpointIO, callback: EMAWeights) -> None:
        self.inner = inner
        self.callback = callback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "callbacks" not in checkpoint:  # weights-only save: Lightning skipped on_save_checkpoint
            self.callback._put_raw_weights(checkpoint)
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        if self.callback.save_ema_checkpoint:
            self.callback.write_ema_twin(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        twin = ema_checkpoint_path(path)
        if twin.exists():
            twin.unlink()

    def teardown(self) -> None:
        self.inner.teardown()


def _sharded_strategy(strategy: Any) -> str | None:
    """The name of ``strategy`` when it shards parameters across ranks (FSDP, ModelParallel, DeepSpeed stage 3)."""
    from lightning.pytorch import strategies

    kinds = tuple(getattr(strategies, name) for name in ("FSDPStrategy", "ModelParallelStrategy")
                  if hasattr(strategies, name))
    if isinstance(strategy, kinds):
        return type(strategy).__name__
    deepspeed = getattr(strategies, "DeepSpeedStrategy", None)
    if deepspeed is not None and isinstance(strategy, deepspeed) and bool(getattr(strategy, "zero_stage_3", False)):
        return "DeepSpeedStrategy (ZeRO stage 3)"
    return None


def _same_shapes(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")

