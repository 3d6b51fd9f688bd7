"""EnsembleMembers: the members of a checkpoint ensemble and what is done with them, without a Trainer (torch only).

The state and rules of :class:`lit_tricks.callbacks.CheckpointEnsemble`: which members there are (one record per
member: ``path``, ``score``, ``epoch``, ``step``, ``tags`` naming why it is a member), the top-k rule of Lightning's
ModelCheckpoint (:func:`top_k_decision`), the weights kept inline, and the ensemble built from them (predict,
export, uniform weight average). It writes no file: :meth:`EnsembleMembers.capture` says when a new member file
must be written and :meth:`EnsembleMembers.drop_tag` which record left; the callback does the IO.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lit_tricks.functional.batchnorm import recalibrate_bn_
from lit_tricks.functional.ensemble import EnsembleModule, average_state_dicts, export_ensemble
from lit_tricks.functional.sharded import full_state_dict, has_dtensors
from lit_tricks.functional.soup import GreedySoup, check_same_architecture, greedy_soup_module
from lit_tricks.functional.wrappers import match_wrapped_keys

__all__ = ["EXTERNAL_TAGS", "EnsembleMembers", "load_member_state_dict", "top_k_decision", "worst_index"]

_M = TypeVar("_M", bound=nn.Module)
#: tags of members whose files the ensemble did not write (given paths, ModelCheckpoint's best_k_models)
EXTERNAL_TAGS = ("path", "checkpoint_top_k")


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
    worst = worst_index(kept, mode)
    value = worst_value if math.isnan(kept[worst]) else kept[worst]
    better = score < value if mode == "min" else score > value
    return (True, worst, stored) if better else (False, None, stored)


def worst_index(kept: list[float], mode: str) -> int:
    """The index of the score a top-k holding ``kept`` (in the order they entered) gives up first: the worst (NaN
    worst of all), the first to have entered among equal ones (``ModelCheckpoint``'s ``max()`` over its dict)."""
    worst_value = float("inf") if mode == "min" else float("-inf")
    values = [worst_value if math.isnan(v) else v for v in kept]
    pick = max if mode == "min" else min
    return pick(range(len(values)), key=values.__getitem__)


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


def cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``module.state_dict()`` (a member's weights); the full tensors of a sharded module (gathered: a
    collective every rank enters)."""
    return full_state_dict(module)


def _device_of(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.zeros(())).device


def _record(m: dict[str, Any]) -> dict[str, Any]:
    """A member record as plain types (``top_k_order`` only when present)."""
    return {"path": str(m["path"]), "score": None if m.get("score") is None else float(m["score"]),
            "epoch": int(m.get("epoch", -1)), "step": int(m.get("step", -1)), "tags": list(m.get("tags", [])),
            **({"top_k_order": int(m["top_k_order"])} if "top_k_order" in m else {})}


class EnsembleMembers:
    """Ensemble members in capture order, the weights kept inline (``keep_inline``), and the ensemble built from them.

    ``checkpoint_paths`` become members tagged ``"path"``. ``clone(module)`` makes a member module from a template
    (default ``copy.deepcopy``; a callback passes one that shares the Trainer instead of copying it).
    """

    def __init__(self, checkpoint_paths: Iterable[str] = (), keep_inline: bool = False,
                 clone: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.keep_inline = keep_inline
        self.records: list[dict[str, Any]] = [
            {"path": str(p), "score": None, "epoch": -1, "step": -1, "tags": ["path"]} for p in checkpoint_paths
        ]
        self.inline: dict[str, dict[str, Tensor]] = {}
        self._clone = clone
        self._ensemble: EnsembleModule | None = None
        self._ensemble_key: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ membership
    def paths(self) -> list[str]:
        """Paths (or ``inline:`` keys) of the members, in capture order."""
        return [m["path"] for m in self.records]

    def owned_folders(self) -> list[Path]:
        """The folders of the member files this ensemble wrote, in capture order."""
        return [Path(m["path"]).parent for m in self.records
                if not m["path"].startswith("inline:") and not set(EXTERNAL_TAGS) & set(m["tags"])]

    def member_folder(self, base: Path) -> Path:
        """Where this ensemble's member files go: where they already are (resume, second fit), else
        ``<base>/ensemble``, versioned ``ensemble-v1``, ``-v2``... when another run's members are already there."""
        owned = self.owned_folders()
        if owned:
            return owned[-1]
        candidate, n = base / "ensemble", 0
        while candidate.is_dir() and any(candidate.glob("member-*.pt")):
            n += 1
            candidate = base / f"ensemble-v{n}"
        return candidate

    def use_checkpoint_top_k(self, best_k_models: dict[str, Any], k: int, mode: str) -> None:
        """Make the ``k`` best of a ModelCheckpoint's ``best_k_models`` ({path: score}) the ``checkpoint_top_k``
        members (replacing earlier ones)."""
        best = sorted(best_k_models.items(), key=lambda kv: float(kv[1]), reverse=mode == "max")[:k]
        self.records[:] = [m for m in self.records if "checkpoint_top_k" not in m["tags"]]
        self.records.extend({"path": str(path), "score": float(score), "epoch": -1, "step": -1,
                             "tags": ["checkpoint_top_k"]} for path, score in best)

    def same_weights(self, record: dict[str, Any], state: dict[str, Tensor]) -> bool:
        stored = self.inline.get(record["path"])
        if stored is None:
            stored = load_member_state_dict(record["path"])
        return stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)

    def capture(self, state: dict[str, Tensor], tag: str, score: float | None, epoch: int, step: int,
                folder: Path | None) -> tuple[dict[str, Any], bool]:
        """Add ``tag`` to the member holding ``state`` at (``epoch``, ``step``), creating it when new; returns the
        record and whether its file must be written now (``<folder>/member-epochEEE-stepSSSSSS.pt``).

        Two sources hitting the same step share one member when their weights are equal (they differ when an EMA
        callback had its weights swapped in for the validation that scored a top-k member).
        """
        same_step = [m for m in self.records if m["epoch"] == epoch and m["step"] == step and "path" not in m["tags"]]
        record = next((m for m in same_step if self.same_weights(m, state)), None)
        new = record is None
        if record is None:
            name = f"member-epoch{epoch:03d}-step{step:06d}{f'-{len(same_step)}' if same_step else ''}.pt"
            if self.keep_inline or folder is None:
                path = f"inline:{name}"
                self.inline[path] = state
            else:
                path = str(folder / name)
            record = {"path": path, "score": score, "epoch": epoch, "step": step, "tags": []}
            self.records.append(record)
        if tag not in record["tags"]:
            record["tags"].append(tag)
        if score is not None:
            record["score"] = score
        return record, new and not record["path"].startswith("inline:")

    def drop_tag(self, record: dict[str, Any], tag: str) -> bool:
        """Remove ``tag`` from ``record``; True when it was the last and the member left (its file may go)."""
        if tag in record["tags"]:
            record["tags"].remove(tag)
        if record["tags"]:
            return False
        self.records.remove(record)
        self.inline.pop(record["path"], None)
        return True

    def keep_only_listed_inline(self) -> None:
        """Drop inline weights no member lists any more."""
        kept = {m["path"] for m in self.records}
        for key in [k for k in self.inline if k not in kept]:
            del self.inline[key]

    def _ranked(self) -> list[dict[str, Any]]:
        return sorted((m for m in self.records if "top_k" in m["tags"]), key=lambda m: m.get("top_k_order", 0))

    def top_k_entry(self, score: float, k: int, mode: str) -> tuple[bool, dict[str, Any] | None, float, int]:
        """Whether ``score`` enters the top-k members, the member it displaces, the score stored, and its order."""
        ranked = self._ranked()
        enters, drop, stored = top_k_decision([float(m["score"]) for m in ranked], score, k, mode)
        order = 1 + max((int(m.get("top_k_order", 0)) for m in self.records), default=0)
        return enters, None if drop is None else ranked[drop], stored, order

    def trim_top_k(self, k: int, mode: str) -> list[dict[str, Any]]:
        """Keep the ``k`` best ``top_k`` members (a top-k saved with a larger ``k``), giving up the others in the
        order :func:`top_k_decision` displaces them; returns the records that left (their files may go)."""
        left = []
        while len(ranked := self._ranked()) > k:
            record = ranked[worst_index([float(m["score"]) for m in ranked], mode)]
            if self.drop_tag(record, "top_k"):
                left.append(record)
        return left

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"members": [_record(m) for m in self.records], "inline": {k: dict(v) for k, v in self.inline.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s output, in place (``records`` and ``inline`` stay the same objects)."""
        self.records[:] = [_record(m) for m in state_dict.get("members", [])]
        inline = {str(k): dict(v) for k, v in state_dict.get("inline", {}).items()}
        self.inline.clear()
        self.inline.update(inline)
        self._ensemble = None

    # ------------------------------------------------------------------ using the members
    def state_dicts(self) -> list[dict[str, Tensor]]:
        """The members' model state dicts (CPU), in capture order."""
        return [self.inline[m["path"]] if m["path"] in self.inline
                else load_member_state_dict(m["path"], trusted=bool(set(EXTERNAL_TAGS) & set(m["tags"])))
                for m in self.records]

    def _copy_of(self, template: _M, state_dict: dict[str, Tensor]) -> _M:
        module: Any = self._clone(template) if self._clone is not None else copy.deepcopy(template)
        module.load_state_dict(match_wrapped_keys(state_dict, module.state_dict().keys()))
        return module  # type: ignore[no-any-return]

    def as_modules(self, template: nn.Module) -> list[nn.Module]:
        """One frozen eval-mode copy of ``template`` per member, on ``template``'s device."""
        if not self.records:
            raise ValueError("CheckpointEnsemble has no members yet (nothing captured, no checkpoint_paths)")
        if has_dtensors(template):
            raise ValueError("CheckpointEnsemble: the model given is sharded (DTensor parameters); pass an unsharded "
                             "instance of it (members are full state dicts), e.g. predict_proba(x, Model())")
        device = _device_of(template)
        return [self._copy_of(template, sd).to(device).eval().requires_grad_(False) for sd in self.state_dicts()]

    def ensemble(self, template: nn.Module, combine: str, use_vmap: bool | None = None) -> EnsembleModule:
        """The members as an :class:`~lit_tricks.functional.ensemble.EnsembleModule` (cached until they change);
        ``use_vmap=None``: vmap on accelerators, a loop on CPU."""
        device = _device_of(template)
        vmap = device.type != "cpu" if use_vmap is None else use_vmap
        key = (id(template), device, tuple(self.paths()), combine, vmap)
        if self._ensemble is None or self._ensemble_key != key:
            self._ensemble = EnsembleModule(self.as_modules(template), combine, use_vmap=vmap)
            self._ensemble_key = key
        return self._ensemble

    def export(self, template: nn.Module, combine: str,
               example_input: Tensor | None = None) -> nn.Module | torch.export.ExportedProgram:
        """:func:`~lit_tricks.functional.ensemble.export_ensemble` of the members."""
        return export_ensemble(self.as_modules(template), combine, example_input)

    def average(self, template: _M, batches: Iterable[Any] | None = None, bn_batches: int | None = None) -> _M:
        """A copy of ``template`` holding the uniform average of the members' weights (a model soup), in eval mode,
        with BatchNorm statistics recomputed on ``bn_batches`` (all if None) of ``batches`` when given."""
        soup = self._copy_of(template, average_state_dicts(self.state_dicts()))
        if batches is not None:
            recalibrate_bn_(soup, batches, num_batches=bn_batches, device=_device_of(soup))
        return soup.eval()

    def greedy_soup(self, template: _M, score: Callable[[nn.Module], float], batches: Iterable[Any] | None = None,
                    bn_batches: int | None = None, mode: str = "max") -> tuple[_M, GreedySoup]:
        """A copy of ``template`` holding the greedy soup of the members and its record
        (:func:`~lit_tricks.functional.soup.greedy_soup_module`: ``score(module)`` on held-out data, BatchNorm
        recomputed on ``bn_batches`` of ``batches`` for every member and candidate when given)."""
        if not self.records:
            raise ValueError("CheckpointEnsemble has no members yet (nothing captured, no checkpoint_paths)")
        states = self.state_dicts()
        check_same_architecture(states, self.paths())
        return greedy_soup_module(self._copy_of(template, states[0]), states, score, bn_batches=batches,
                                  num_bn_batches=bn_batches, mode=mode, names=self.paths())
