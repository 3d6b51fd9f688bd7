"""CheckpointEnsemble: snapshot / top-k / cycle-end / given-checkpoint ensembles of any LightningModule."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from lit_tricks.compat import module_trainer, time_based_validation
from lit_tricks.fault.atomic import atomic_torch_save
from lit_tricks.fault.state_keys import warn_changed_args
from lit_tricks.functional.batchnorm import recalibrate_bn_
from lit_tricks.functional.ensemble import (
    COMBINERS,
    EnsembleModule,
    average_state_dicts,
    export_ensemble,
)
from lit_tricks.functional.wrappers import match_wrapped_keys

__all__ = ["CheckpointEnsemble", "load_member_state_dict", "top_k_decision"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_MODES = ("min", "max")
_M = TypeVar("_M", bound=nn.Module)


def top_k_decision(kept: list[float], score: float, k: int, mode: str) -> tuple[bool, int | None, float]:
    """Lightning ``ModelCheckpoint``'s top-k rule: does ``score`` enter a top-k holding ``kept`` (stored scores, in
    the order they entered), which index does it displace, and the value stored for it.

    As ``ModelCheckpoint.check_monitor_top_k`` and ``_update_best_and_save`` (Lightning 2.x): while fewer than ``k``
    are kept every score enters (NaN too); then a score enters only when strictly better than the worst kept one
    (``<`` for ``min``, ``>`` for ``max``; NaN never is), and displaces that worst one (the first to have entered
    among equal worst scores). A NaN is stored as ``+inf`` (``min``) / ``-inf`` (``max``): the worst possible
    score, which any finite score displaces later. ``±inf`` are ordinary scores.
    """
    worst_value = float("inf") if mode == "min" else float("-inf")
    stored = worst_value if math.isnan(score) else float(score)
    if len(kept) < k:
        return True, None, stored
    values = [worst_value if math.isnan(v) else v for v in kept]
    pick = max if mode == "min" else min
    worst = pick(range(len(values)), key=values.__getitem__)  # first among ties, as max() over a dict
    better = score < values[worst] if mode == "min" else score > values[worst]
    return (True, worst, stored) if better else (False, None, stored)


def _clone(module: _M) -> _M:
    """``deepcopy(module)`` that shares (never copies) the Trainer and its callbacks, which a module may reference
    through bound methods (e.g. the weight-variants protocol)."""
    memo: dict[int, Any] = {}
    trainer = module_trainer(module)
    if trainer is not None:
        memo[id(trainer)] = trainer
        for callback in getattr(trainer, "callbacks", []):
            memo[id(callback)] = callback
    return copy.deepcopy(module, memo)


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_member_state_dict(path: str | os.PathLike[str], trusted: bool = False) -> dict[str, Tensor]:
    """The model ``state_dict`` stored in a member file or a Lightning checkpoint (its ``"state_dict"`` entry).

    Loaded with ``weights_only=True``; ``trusted=True`` (files the user named) falls back to a full unpickle when a
    Lightning checkpoint holds non-plain hyper-parameters.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        if not trusted:
            raise
        payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload["state_dict"]
    if isinstance(payload, dict) and all(isinstance(v, Tensor) for v in payload.values()):
        return payload
    raise ValueError(f"{path} holds neither a Lightning checkpoint nor a state_dict")


class CheckpointEnsemble(Callback):
    """Collect ensemble members during training and evaluate their average at test time.

    Members come from any mix of: every ``every_n_epochs`` epochs (snapshot ensemble, Huang et al. 2017), the
    ``top_k`` epochs by ``monitor`` (``mode`` min/max; with ``monitor=None`` the ``best_k_models`` of the Trainer's
    ModelCheckpoint are used at fit end), the end of each warm-restart cycle (``at_cycle_ends``: the LR scheduler's
    ``cycle_ends()`` method, step indices = ``trainer.global_step`` right after a cycle's last optimizer step), and
    the files in ``checkpoint_paths`` (Lightning checkpoints or state dicts, e.g. the best checkpoint of each job of
    a multirun). Snapshots are captured at train epoch end (after validation, so ModelCheckpoint's ``last.ckpt``
    of that epoch lists them when it saves at train epoch end, Lightning's default when validating every epoch),
    cycle-end members at the step ending a cycle. Top-k members are the weights validation evaluated (the module's
    weights when no validation ran); they are ranked when ModelCheckpoint ranks (its
    ``_should_save_on_train_epoch_end`` rule): at validation end when validation runs every few epochs or several
    times an epoch, else at train epoch end after the module's ``on_train_epoch_end`` (so a metric logged only in
    training, even in that hook, ranks), before ModelCheckpoint's save of that epoch lists the members.

    Members are files ``<dirpath>/member-epochEEE-stepSSSSSS.pt`` written atomically by rank 0, or kept inside the
    callback state with ``keep_inline=True``. The callback state lists them (path, score, epoch, step, why), so
    resume is exact; under DDP rank 0 decides and broadcasts.

    ``dirpath`` defaults to one folder per run, so that two runs in one ``default_root_dir`` never overwrite each
    other's members (as ModelCheckpoint's folder under the logger's version): ``<trainer.log_dir>/ensemble`` (the
    logger's version folder; ``default_root_dir`` without a logger), ``ensemble-v1``, ``ensemble-v2``, ... when that
    folder already holds another run's members; a resumed run or a second fit of the same instance keeps its folder.
    An explicit ``dirpath`` is used as given.

    Test: logs ``test/acc_ensemble`` and ``test/loss_ensemble`` (NLL of the ensemble probabilities) next to the
    module's own ``test/acc``, for batches ``(x, y, ...)``. ``combine``: ``mean_prob`` (mean softmax, default),
    ``mean_logit``, ``vote``. ``use_vmap``: None = loop on CPU, ``torch.func.vmap`` on accelerators.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int | None = None,
        top_k: int | None = None,
        monitor: str | None = None,
        mode: str = "min",
        at_cycle_ends: bool = False,
        checkpoint_paths: list[str] | None = None,
        combine: str = "mean_prob",
        dirpath: str | None = None,
        keep_inline: bool = False,
        use_vmap: bool | None = None,
        log_test: bool = True,
        log_prefix: str = "test",
    ) -> None:
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
            raise ValueError(f"every_n_epochs must be None or an int >= 1, got {every_n_epochs!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
        if combine not in COMBINERS:
            raise ValueError(f"combine must be one of {sorted(COMBINERS)}, got {combine!r}")
        if monitor is not None and top_k is None:
            raise ValueError(f"monitor={monitor!r} is only used with top_k; set top_k (e.g. 3) or monitor=None")
        paths = [str(p) for p in (checkpoint_paths or [])]
        if every_n_epochs is None and top_k is None and not at_cycle_ends and not paths:
            raise ValueError(
                "CheckpointEnsemble needs a member source: every_n_epochs, top_k, at_cycle_ends=True or "
                "checkpoint_paths; got none"
            )
        self.every_n_epochs = every_n_epochs
        self.top_k = top_k
        self.monitor = monitor
        self.mode = mode
        self.at_cycle_ends = at_cycle_ends
        self.checkpoint_paths = paths
        self.combine = combine
        self.dirpath = dirpath
        self.keep_inline = keep_inline
        self.use_vmap = use_vmap
        self.log_test = log_test
        self.log_prefix = log_prefix
        # state: one record per member, in the order captured
        self.members: list[dict[str, Any]] = [
            {"path": p, "score": None, "epoch": -1, "step": -1, "tags": ["path"]} for p in paths
        ]
        self.inline: dict[str, dict[str, Tensor]] = {}
        # runtime only
        self._cycle_ends: set[int] = set()
        self._ensemble: EnsembleModule | None = None
        self._ensemble_key: tuple[Any, ...] | None = None
        self._keep_members_on_load = False
        self._warned_batch = False
        self._warned_monitor = False
        self._evaluated: dict[str, Tensor] | None = None
        self._unranked: tuple[dict[str, Tensor], int, int] | None = None  # (state, epoch, step) awaiting its score
        self._run_dir: str | None = None  # the member folder of this run (when dirpath is None)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_epochs=self.every_n_epochs, top_k=self.top_k, monitor=self.monitor, mode=self.mode,
            at_cycle_ends=self.at_cycle_ends,
        )

    # ------------------------------------------------------------------ members
    def _dirpath(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        if self._run_dir is None:
            self._run_dir = str(self._choose_run_dir(trainer))
        return Path(self._run_dir)

    def _choose_run_dir(self, trainer: pl.Trainer) -> Path:
        """This run's member folder: where this instance's members already are (resume, second fit), else
        ``<trainer.log_dir>/ensemble`` (the logger's version folder, or ``default_root_dir`` without a logger),
        versioned ``ensemble-v1``, ``-v2``... when another run's members are already there."""
        owned = [Path(m["path"]).parent for m in self.members
                 if not m["path"].startswith("inline:") and not {"path", "checkpoint_top_k"} & set(m["tags"])]
        if owned:
            return owned[-1]
        base = Path(trainer.log_dir or trainer.default_root_dir)
        candidate, n = base / "ensemble", 0
        while candidate.is_dir() and any(candidate.glob("member-*.pt")):
            n += 1
            candidate = base / f"ensemble-v{n}"
        return candidate

    def member_paths(self) -> list[str]:
        """Paths (or inline keys) of the current members, in capture order."""
        return [m["path"] for m in self.members]

    def _at(self, epoch: int, step: int) -> list[dict[str, Any]]:
        return [m for m in self.members if m["epoch"] == epoch and m["step"] == step and "path" not in m["tags"]]

    def _same_weights(self, record: dict[str, Any], state: dict[str, Tensor]) -> bool:
        stored = self.inline.get(record["path"])
        if stored is None:
            stored = load_member_state_dict(record["path"])
        return stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)

    def _capture(
        self, trainer: pl.Trainer, state: dict[str, Tensor], tag: str, score: float | None,
        at: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Add ``tag`` to the member holding ``state`` at ``at`` = (epoch, step) (default: now), writing it if new.

        Two sources hitting the same step share one member when their weights are equal (they differ when an EMA
        callback had its weights swapped in for the validation that scored a top-k member).
        """
        epoch, step = at if at is not None else (int(trainer.current_epoch), int(trainer.global_step))
        same_step = self._at(epoch, step)
        record = next((m for m in same_step if self._same_weights(m, state)), None)
        if record is None:
            suffix = f"-{len(same_step)}" if same_step else ""
            name = f"member-epoch{epoch:03d}-step{step:06d}{suffix}.pt"
            if self.keep_inline:
                path = f"inline:{name}"
                self.inline[path] = state
            else:
                path = str(self._dirpath(trainer) / name)
                if trainer.is_global_zero:
                    atomic_torch_save(
                        {"state_dict": state, "epoch": epoch, "global_step": step, "version": _STATE_VERSION}, path
                    )
            record = {"path": path, "score": score, "epoch": epoch, "step": step, "tags": []}
            self.members.append(record)
        if tag not in record["tags"]:
            record["tags"].append(tag)
        if score is not None:
            record["score"] = score
        return record

    def _drop_tag(self, trainer: pl.Trainer, record: dict[str, Any], tag: str) -> None:
        if tag in record["tags"]:
            record["tags"].remove(tag)
        if record["tags"]:
            return
        self.members.remove(record)
        self.inline.pop(record["path"], None)
        path = record["path"]
        if trainer.is_global_zero and not path.startswith("inline:"):
            try:
                if Path(path).parent == self._dirpath(trainer):
                    os.remove(path)
            except FileNotFoundError:
                pass

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _update_top_k(
        self, trainer: pl.Trainer, state: dict[str, Tensor], at: tuple[int, int] | None = None
    ) -> None:
        if self.monitor is None or self.top_k is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_monitor:
                log.warning(
                    "CheckpointEnsemble(monitor=%r): no such metric at the end of epoch %d; logged metrics: %s",
                    self.monitor, trainer.current_epoch if at is None else at[0], sorted(trainer.callback_metrics),
                )
                self._warned_monitor = True
            return
        score = float(value)
        ranked = sorted((m for m in self.members if "top_k" in m["tags"]), key=lambda m: m.get("top_k_order", 0))
        enters, drop, stored = top_k_decision([float(m["score"]) for m in ranked], score, self.top_k, self.mode)
        if not enters:
            return
        if drop is not None:
            self._drop_tag(trainer, ranked[drop], "top_k")
        order = 1 + max((int(m.get("top_k_order", 0)) for m in self.members), default=0)
        record = self._capture(trainer, state, "top_k", stored, at)
        record["top_k_order"] = order

    def _sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0's member list wins (scores may differ across ranks when not synced); wait for its files."""
        if trainer.world_size <= 1:
            return
        self.members = trainer.strategy.broadcast(self.members, src=0)
        if self.keep_inline:  # weights are identical on all ranks: take the ones rank 0 kept and this rank lacks
            for m in self.members:
                if m["path"].startswith("inline:") and m["path"] not in self.inline:
                    self.inline[m["path"]] = _cpu_state(pl_module)
            kept = {m["path"] for m in self.members}
            self.inline = {k: v for k, v in self.inline.items() if k in kept}
        trainer.strategy.barrier("lit_tricks_ensemble_capture")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._keep_members_on_load = False
        if stage == "fit":
            self._run_dir = None
            self._evaluated = self._unranked = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dirpath is None and not self.keep_inline:  # after a restore: rank 0 picks the folder for all
            self._run_dir = str(trainer.strategy.broadcast(str(self._choose_run_dir(trainer)), src=0))
        self._cycle_ends = set()
        if not self.at_cycle_ends:
            return
        found = []
        for config in trainer.lr_scheduler_configs:
            fn = getattr(config.scheduler, "cycle_ends", None)
            found.append(type(config.scheduler).__name__)
            if callable(fn):
                self._cycle_ends.update(int(s) for s in fn())
        if not any(callable(getattr(c.scheduler, "cycle_ends", None)) for c in trainer.lr_scheduler_configs):
            raise ValueError(
                "CheckpointEnsemble(at_cycle_ends=True) needs an LR scheduler with a cycle_ends() method "
                f"(e.g. lit_tricks' SGDR schedules); the Trainer has: {found or 'no LR scheduler'}"
            )

    def _scores_validation(self, trainer: pl.Trainer) -> bool:
        return (
            not trainer.sanity_checking and trainer.state.fn == "fit" and self.top_k is not None
            and self.monitor is not None
        )

    @staticmethod
    def _ranks_at_train_epoch_end(trainer: pl.Trainer) -> bool:
        """ModelCheckpoint's ``_should_save_on_train_epoch_end`` (Lightning 2.x) without its explicit override:
        not with time-based validation, nor with ``check_val_every_n_epoch != 1``; yes without validation
        batches; else when validation runs once per epoch (``val_check_interval == 1.0``)."""
        if time_based_validation(trainer):
            return False
        if trainer.check_val_every_n_epoch != 1:
            return False
        num_val = trainer.num_val_batches
        if (sum(num_val) if isinstance(num_val, list) else num_val) == 0:
            return True
        return bool(trainer.val_check_interval == 1.0)

    def _rank_unranked(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Rank the train-epoch-end candidate, now that the module's ``on_train_epoch_end`` has logged."""
        if self._unranked is None:
            return False
        state, epoch, step = self._unranked
        self._unranked = None
        self._update_top_k(trainer, state, at=(epoch, step))
        self._sync(trainer, pl_module)
        return True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # what is evaluated now (EMA weights if a callback swapped them in); the score is known at validation end
        self._evaluated = _cpu_state(pl_module) if self._scores_validation(trainer) else None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # top-k members are the weights that produced the score, captured before ModelCheckpoint saves
        if not self._scores_validation(trainer) or self._evaluated is None or self._ranks_at_train_epoch_end(trainer):
            return  # ranked at train epoch end (with the weights evaluated here)
        state, self._evaluated = self._evaluated, None
        self._update_top_k(trainer, state)
        self._sync(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step not in self._cycle_ends:
            return
        # once per optimizer step: with gradient accumulation the hook repeats at this step, also on the first
        # batches of the next epoch (whose forward passes have already moved the BatchNorm statistics)
        if not any("cycle" in m["tags"] and m["step"] == step for m in self.members):
            self._capture(trainer, _cpu_state(pl_module), "cycle", None)
            self._sync(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        changed = False
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._capture(trainer, _cpu_state(pl_module), "epoch", None)
            changed = True
        if self._scores_validation(trainer) and self._ranks_at_train_epoch_end(trainer):
            # Lightning calls the module's on_train_epoch_end (which may log the monitor) after this hook and
            # before ModelCheckpoint's: rank there (on_save_checkpoint) or at the next hook, whichever is first
            state = self._evaluated if self._evaluated is not None else _cpu_state(pl_module)
            self._evaluated = None
            self._unranked = (state, int(trainer.current_epoch), int(trainer.global_step))
        if changed:
            self._sync(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rank_unranked(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning has already put state_dict() in the checkpoint: refresh it when a member was just ranked
        if self._rank_unranked(trainer, pl_module) and self.state_key in checkpoint.get("callbacks", {}):
            checkpoint["callbacks"][self.state_key] = self.state_dict()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rank_unranked(trainer, pl_module)
        if self.top_k is None or self.monitor is not None:
            return
        ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        if ckpt is None or not ckpt.best_k_models:
            log.warning("CheckpointEnsemble(top_k, monitor=None): no ModelCheckpoint with a monitor and best_k_models")
            return
        reverse = ckpt.mode == "max"
        best = sorted(ckpt.best_k_models.items(), key=lambda kv: float(kv[1]), reverse=reverse)[: self.top_k]
        self.members = [m for m in self.members if "checkpoint_top_k" not in m["tags"]]
        for path, score in best:
            self.members.append(
                {"path": str(path), "score": float(score), "epoch": -1, "step": -1, "tags": ["checkpoint_top_k"]}
            )

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.log_test or not self.members:
            return
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor)):
            if not self._warned_batch:
                log.warning("CheckpointEnsemble: test batches are not (x, y, ...); no ensemble metrics logged")
                self._warned_batch = True
            return
        x, y = batch[0], batch[1]
        probs = self.predict_proba(x, pl_module)
        acc = (probs.argmax(-1) == y).float().mean()
        nll = nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)
        n = int(y.shape[0])
        pl_module.log(f"{self.log_prefix}/acc_ensemble", acc, on_step=False, on_epoch=True, batch_size=n,
                      sync_dist=True)
        pl_module.log(f"{self.log_prefix}/loss_ensemble", nll, on_step=False, on_epoch=True, batch_size=n,
                      sync_dist=True)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "members": [
                {"path": m["path"], "score": m["score"], "epoch": m["epoch"], "step": m["step"],
                 "tags": list(m["tags"]), **({"top_k_order": int(m["top_k_order"])} if "top_k_order" in m else {})}
                for m in self.members
            ],
            "inline": {k: dict(v) for k, v in self.inline.items()},
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored
        # test(ckpt_path="best") after fit: keep this run's full member list, load only the single model
        self._keep_members_on_load = trainer.state.fn != "fit" and bool(self.members)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._keep_members_on_load:
            self._keep_members_on_load = False
            return
        self.members = [
            {"path": str(m["path"]), "score": None if m.get("score") is None else float(m["score"]),
             "epoch": int(m.get("epoch", -1)), "step": int(m.get("step", -1)), "tags": list(m.get("tags", [])),
             **({"top_k_order": int(m["top_k_order"])} if "top_k_order" in m else {})}
            for m in state_dict.get("members", [])
        ]
        self.inline = {str(k): dict(v) for k, v in state_dict.get("inline", {}).items()}
        self._ensemble = None

    # ------------------------------------------------------------------ using the ensemble
    def member_state_dicts(self) -> list[dict[str, Tensor]]:
        """The members' model state dicts (CPU), in capture order."""
        out = []
        for m in self.members:
            path = m["path"]
            if path in self.inline:
                out.append(self.inline[path])
            else:
                out.append(load_member_state_dict(path, trusted="path" in m["tags"] or "checkpoint_top_k" in m["tags"]))
        return out

    def members_as_modules(self, pl_module: nn.Module) -> list[nn.Module]:
        """One frozen eval-mode copy of ``pl_module`` per member, on ``pl_module``'s device."""
        if not self.members:
            raise ValueError("CheckpointEnsemble has no members yet (nothing captured, no checkpoint_paths)")
        device = next(iter(pl_module.parameters()), torch.zeros(())).device
        modules = []
        for sd in self.member_state_dicts():
            member = _clone(pl_module)
            member.load_state_dict(match_wrapped_keys(sd, member.state_dict().keys()))
            member.to(device).eval().requires_grad_(False)
            modules.append(member)
        return modules

    def ensemble(self, pl_module: nn.Module) -> EnsembleModule:
        """The ensemble as an :class:`EnsembleModule` (cached until the members change)."""
        device = next(iter(pl_module.parameters()), torch.zeros(())).device
        use_vmap = device.type != "cpu" if self.use_vmap is None else self.use_vmap
        key = (id(pl_module), device, tuple(self.member_paths()), self.combine, use_vmap)
        if self._ensemble is None or self._ensemble_key != key:
            self._ensemble = EnsembleModule(self.members_as_modules(pl_module), self.combine, use_vmap=use_vmap)
            self._ensemble_key = key
        return self._ensemble

    @torch.no_grad()
    def predict_proba(self, x: Tensor, pl_module: nn.Module) -> Tensor:
        """Ensemble class probabilities ``[N, C]`` for a batch ``x`` (what ``pl_module(x)`` maps to logits)."""
        return self.ensemble(pl_module)(x)

    def export(
        self, pl_module: nn.Module, example_input: Tensor | None = None
    ) -> nn.Module | torch.export.ExportedProgram:
        """The ensemble (x -> ensemble probabilities) in a form that saves and reloads without lit_tricks: an fx
        ``GraphModule`` (``torch.save`` / ``torch.load(weights_only=False)``), or with ``example_input`` a
        ``torch.export.ExportedProgram`` (``torch.export.save`` / ``torch.export.load(path).module()``); see
        :func:`lit_tricks.functional.ensemble.export_ensemble`."""
        return export_ensemble(self.members_as_modules(pl_module), self.combine, example_input)

    def average_weights(
        self, pl_module: pl.LightningModule, dataloader: Iterable[Any] | None = None, bn_batches: int | None = None
    ) -> pl.LightningModule:
        """A copy of ``pl_module`` holding the uniform average of the members' weights (model soup), with BatchNorm
        statistics recomputed on ``bn_batches`` batches (all if None) of ``dataloader`` (default: the Trainer's train
        dataloader, when attached)."""
        soup = _clone(pl_module)
        averaged = average_state_dicts(self.member_state_dicts())
        soup.load_state_dict(match_wrapped_keys(averaged, soup.state_dict().keys()))
        if dataloader is None:
            trainer = module_trainer(pl_module)
            dataloader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        if dataloader is not None:
            device = next(iter(soup.parameters()), torch.zeros(())).device
            recalibrate_bn_(soup, dataloader, num_batches=bn_batches, device=device)
        return soup.eval()
