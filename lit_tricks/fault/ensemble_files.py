"""The member files of an ensemble callback: written atomically by rank 0, removed when a member leaves, agreed
across ranks, listed in the callback state so that resume is exact. The base of CheckpointEnsemble."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lit_tricks.compat import first_train_loader, module_trainer
from lit_tricks.fault.atomic import atomic_torch_save
from lit_tricks.fault.state_keys import warn_changed_args
from lit_tricks.functional.batchnorm import sampled_batches
from lit_tricks.functional.ensemble import EnsembleModule
from lit_tricks.functional.ensemble_members import EnsembleMembers, cpu_state
from lit_tricks.functional.soup import GreedySoup, accuracy

__all__ = ["EnsembleMembersCallback"]

_M = TypeVar("_M", bound=nn.Module)

_STATE_VERSION = 1


class EnsembleMembersCallback(Callback):
    """A callback holding :class:`~lit_tricks.functional.ensemble_members.EnsembleMembers` (:attr:`store`): the
    member files (``<dirpath>/member-epochEEE-stepSSSSSS.pt``, or inline with ``keep_inline``), the callback state,
    and the public use of the members (predict, export, weight average).

    ``dirpath=None``: one folder per run, ``<trainer.log_dir>/ensemble`` (``-v1``, ``-v2``... when another run's
    members are there; a resumed run or a second fit keeps its folder), so two runs never overwrite each other's.
    """

    def __init__(self, store: EnsembleMembers, dirpath: str | None, combine: str, use_vmap: bool | None) -> None:
        super().__init__()
        #: the members, the inline weights and the ensemble built from them (Trainer-free)
        self.store = store
        #: one record per member (path, score, epoch, step, tags), in capture order (the store's list)
        self.members = store.records
        #: the weights of the members kept inline, by ``inline:`` key (the store's dict)
        self.inline = store.inline
        self.dirpath = dirpath
        self.combine = combine
        self.use_vmap = use_vmap
        self._run_dir: str | None = None  # the member folder of this run (when dirpath is None)
        self._keep_members_on_load = False

    def member_paths(self) -> list[str]:
        """Paths (or inline keys) of the current members, in capture order."""
        return self.store.paths()

    # ------------------------------------------------------------------ files
    def _dirpath(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        if self._run_dir is None:
            self._run_dir = str(self._choose_run_dir(trainer))
        return Path(self._run_dir)

    def _choose_run_dir(self, trainer: pl.Trainer) -> Path:
        return self.store.member_folder(Path(trainer.log_dir or trainer.default_root_dir))

    def _capture(self, trainer: pl.Trainer, state: dict[str, Tensor], tag: str, score: float | None,
                 at: tuple[int, int] | None = None) -> dict[str, Any]:
        """Add ``tag`` to the member holding ``state`` at ``at`` = (epoch, step) (default: now), writing it if new."""
        epoch, step = at if at is not None else (int(trainer.current_epoch), int(trainer.global_step))
        folder = None if self.store.keep_inline else self._dirpath(trainer)
        record, write = self.store.capture(state, tag, score, epoch, step, folder)
        if write and trainer.is_global_zero:
            atomic_torch_save({"state_dict": state, "epoch": epoch, "global_step": step, "version": _STATE_VERSION},
                              record["path"])
        return record

    def _drop_tag(self, trainer: pl.Trainer, record: dict[str, Any], tag: str) -> None:
        if self.store.drop_tag(record, tag):
            self._remove_member_file(trainer, record["path"])

    def _remove_member_file(self, trainer: pl.Trainer, path: str) -> None:
        """Remove the file of a member that left (rank 0; only a file this ensemble wrote, in its folder)."""
        if trainer.is_global_zero and not path.startswith("inline:"):
            try:
                if Path(path).parent == self._dirpath(trainer):
                    os.remove(path)
            except FileNotFoundError:
                pass

    def _sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Rank 0's member list wins (scores may differ across ranks when not synced); wait for its files."""
        if trainer.world_size <= 1:
            return
        self.members[:] = trainer.strategy.broadcast(list(self.members), src=0)
        if self.store.keep_inline:  # weights are identical on all ranks: take the ones rank 0 kept and this lacks
            for m in self.members:
                if m["path"].startswith("inline:") and m["path"] not in self.inline:
                    self.inline[m["path"]] = cpu_state(pl_module)
            self.store.keep_only_listed_inline()
        trainer.strategy.barrier("lit_tricks_ensemble_capture")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, **self.store.state_dict()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt: dict[str, Any]) -> None:
        warn_changed_args(self, ckpt)  # state saved under other arguments: say that it is not restored
        # test(ckpt_path="best") after fit: keep this run's full member list, load only the single model
        self._keep_members_on_load = trainer.state.fn != "fit" and bool(self.members)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._keep_members_on_load:
            self._keep_members_on_load = False
            return
        self.store.load_state_dict(state_dict)

    # ------------------------------------------------------------------ using the ensemble
    def member_state_dicts(self) -> list[dict[str, Tensor]]:
        """The members' model state dicts (CPU), in capture order."""
        return self.store.state_dicts()

    def members_as_modules(self, pl_module: nn.Module) -> list[nn.Module]:
        """One frozen eval-mode copy of ``pl_module`` per member, on ``pl_module``'s device."""
        return self.store.as_modules(pl_module)

    def ensemble(self, pl_module: nn.Module) -> EnsembleModule:
        """The ensemble as an :class:`~lit_tricks.functional.ensemble.EnsembleModule` (cached until the members
        change); ``use_vmap=None``: a loop on CPU, ``torch.func.vmap`` on accelerators."""
        return self.store.ensemble(pl_module, self.combine, self.use_vmap)

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
        return self.store.export(pl_module, self.combine, example_input)

    def average_weights(
        self, pl_module: pl.LightningModule, dataloader: Iterable[Any] | None = None, bn_batches: int | None = None
    ) -> pl.LightningModule:
        """A copy of ``pl_module`` holding the uniform average of the members' weights (model soup), with BatchNorm
        statistics recomputed on ``bn_batches`` batches (all if None) of ``dataloader`` (default: the train dataset
        of the attached Trainer, in an order of its own: :func:`~lit_tricks.functional.batchnorm.sampled_batches`)."""
        return self.store.average(pl_module, _train_loader(pl_module, dataloader), bn_batches)

    def greedy_soup(self, pl_module: _M, val_dataloader: Iterable[Any], dataloader: Iterable[Any] | None = None,
                    bn_batches: int | None = None, score: Callable[[nn.Module], float] | None = None,
                    mode: str = "max") -> tuple[_M, GreedySoup]:
        """A copy of ``pl_module`` holding the greedy soup of the members (Wortsman et al. 2022, Recipe 1: members by
        held-out score, best first; each joins only when the soup with it scores strictly better), and its
        :class:`~lit_tricks.functional.soup.GreedySoup` (``members``: indices into :meth:`member_paths` in the order
        added, ``score``, ``trace``). ``score(module)`` (eval mode; ``mode`` ``"max"``/``"min"``): default the top-1
        accuracy on ``val_dataloader``'s ``(x, y, ...)`` batches. BatchNorm statistics are recomputed for every member
        and candidate as in :meth:`average_weights`. Members of different architectures are refused in one line. All
        four side by side (best member, uniform and greedy soup, prediction ensemble):
        :func:`lit_tricks.posthoc.soup.soup_report`, ``lit-tricks-ensemble RUN_DIR --soup``."""
        scorer = score if score is not None else (lambda m: accuracy(m, val_dataloader))
        return self.store.greedy_soup(pl_module, scorer, _train_loader(pl_module, dataloader), bn_batches, mode)


def _train_loader(pl_module: nn.Module, dataloader: Iterable[Any] | None) -> Iterable[Any] | None:
    """``dataloader``, else batches of the train dataset of the Trainer ``pl_module`` is attached to, in an order of
    their own (:func:`~lit_tricks.functional.batchnorm.sampled_batches`: the training loader's saved position stays
    where it is); None without one."""
    if dataloader is not None:
        return dataloader
    trainer = module_trainer(pl_module)
    train = first_train_loader(trainer) if trainer is not None else None
    return None if trainer is None or train is None else sampled_batches(train, seed=trainer.global_step)
