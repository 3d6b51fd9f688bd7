"""The resume-equivalence harness: run a recipe through ``lit_tricks.run.train`` (the CLI's own path, in-process),
interrupt it at a chosen point, resume it, and compare everything it leaves with the uninterrupted run.

A **recipe** is a list of Hydra overrides of ``conf/train.yaml`` on top of :data:`BASE` (tiny digits, a per-step
``last.ckpt``, validation twice an epoch). Its train data module records the sample ids of every batch it hands to
Lightning (:class:`DigitsWithIds`, :class:`MNIST1DWithIds`), and a :class:`Probe` callback (in every run, also the
uninterrupted one) appends one JSON line per training batch to ``<run>/harness/records.jsonl``: epoch, batch index,
global step, the sample ids, every parameter group's lr and the loss.

A **fault** is ``"<kind>@<hook>:<epoch>:<batch>"``; the probe fires it at the first event matching (hook, epoch,
batch), where ``batch`` is the index of the training batch that ran last (for ``batch`` hooks: the one starting):

- ``kill``: a ``kill -9`` there, simulated in-process: the run directory is copied as it is at that instant (a torn
  temp file included when inside a write) to ``<run>.killed``, then the fit is aborted with :class:`Killed` (which
  nothing of lit_tricks catches); the resume runs in the copy with ``resume=auto`` (the newest intact checkpoint).
- ``realkill``: ``kill -9`` of this process there (for runs in a subprocess, ``test_real_kills.py``).
- ``term``: a SIGTERM to this process there; the ``Preemption`` callback saves and ends the fit (``SystemExit``);
  the resume runs in the same directory with ``resume=auto``.

Hooks: ``batch`` (``on_train_batch_start``), ``valstart`` / ``valend`` (``on_validation_start`` / ``_end``, outside
the sanity check) and ``write`` (inside the first atomic write at that batch, after half of its bytes: a checkpoint
through :class:`ProbeIO`, or any file of :func:`lit_tricks.fault.atomic.atomic_write_bytes`: ensemble members,
PostHocEMA snapshots, EMA twins).

:func:`outcome` gathers what a finished run left, with the run directory's path replaced by ``<RUN>``; two outcomes
are compared with :func:`differences` (tensors with ``torch.equal``: bit for bit).
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import logging
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from unittest import mock

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from lit_tricks.data.digits import DigitsDataModule
from lit_tricks.data.mnist1d import MNIST1DDataModule
from lit_tricks.data.sampling import SplitDataset, train_loader
from lit_tricks.fault.checkpoint_io import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

#: Training batches per epoch and epochs of every recipe (96 samples, batches of 16).
BATCHES, EPOCHS = 6, 3
#: Validation runs after these batches of each epoch (``val_check_interval=0.5``: after 3 and 6 batches).
VAL_AFTER = (2, 5)

#: Every recipe: tiny digits and a tiny model, validation twice an epoch, a per-step ``last.ckpt``, one CSV row per
#: step, a short test. The data module records batch ids; the probe records per step and injects the fault.
BASE = (
    "seed=7", f"trainer.max_epochs={EPOCHS}", "+trainer.val_check_interval=0.5", "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_train_steps=1",
)
#: The digits recipes' data and model (``model.width=4``: a tiny SmallCNN).
DIGITS = ("data._target_=tests.resume.harness.DigitsWithIds", "data.train_size=96", "data.batch_size=16",
          "model.width=4")
#: The callbacks every single-callback recipe keeps: the per-step checkpoint, the RNG states, the signal handler.
ALONE = "last_checkpoint,rng_state,preemption"

RECIPES: dict[str, tuple[str, ...]] = {
    # the default recipe: warm-up + cosine Schedule, EMA, clipping, NaNGuard, Preemption, RNGState
    "default": (),
    "ema": (f"callbacks=[{ALONE},ema]",),
    "clipping_auto": (f"callbacks=[{ALONE},clipping]", "callbacks.clipping.mode=auto", "callbacks.clipping.history=8"),
    "nan_guard": (f"callbacks=[{ALONE},nan_guard]", "callbacks.nan_guard.divergence_factor=3.0"),
    "early_stopping": (f"callbacks=[{ALONE},early_stopping]", "callbacks.early_stopping.patience=2",
                       "callbacks.early_stopping.restore_best_weights=true"),
    "ensemble": (f"callbacks=[{ALONE},checkpoint_ensemble]",),
    "learning_curves": (f"callbacks=[{ALONE},learning_curves]", "++callbacks.learning_curves.plot=false"),
    "layer_stats": (f"callbacks=[{ALONE},layer_stats]", "callbacks.layer_stats.every_n_steps=2"),
    "model_checkpoint": (f"callbacks=[{ALONE},model_checkpoint,lr_monitor]",),
    # PostHocEMA: its profiles (callback state) and snapshot files every 2 steps (and at the end), then the
    # end-of-run reconstruction's exported checkpoint
    "posthoc_ema": (f"callbacks=[{ALONE},posthoc_ema]", "callbacks.posthoc_ema.snapshot_every_n_steps=2"),
    "backbone": ("callbacks=[default,backbone_finetuning]",
                 "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch=1"),
    # the full stack of the issue
    "full": ("callbacks=[default,early_stopping,checkpoint_ensemble,learning_curves,layer_stats]",
             "callbacks.ema.recalibrate_bn_batches=2", "callbacks.clipping.mode=auto", "callbacks.clipping.history=8",
             "callbacks.early_stopping.restore_best_weights=true", "callbacks.early_stopping.stopping_threshold=0.05",
             "++callbacks.learning_curves.plot=false", "callbacks.layer_stats.every_n_steps=2"),
    # a short MNIST-1D tricks run: no validation split (the recipe's protocol)
    "mnist1d": ("experiment=mnist1d_tricks", "data._target_=tests.resume.harness.MNIST1DWithIds",
                "data.num_samples=600", "data.batch_size=16", "+data.train_size=96", "model.channels=4",
                "callbacks=[mnist1d,last_checkpoint,rng_state,preemption]", "trainer.enable_checkpointing=true",
                f"trainer.max_epochs={EPOCHS}", "++trainer.val_check_interval=1.0", "trainer.log_every_n_steps=1"),
}
#: Recipes without a validation split (no validation points).
NO_VALIDATION = {"mnist1d"}
#: Recipes with their own data and model (not :data:`DIGITS`).
OWN_DATA = {"mnist1d"}


class Killed(BaseException):
    """A simulated ``kill -9``: the run directory was copied, the fit is abandoned (nothing may catch this)."""


# ----------------------------------------------------------------------------------------------- data with ids
class _IdDataset(SplitDataset):
    """A training split that also yields each sample's index into the pool (its id)."""

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:  # type: ignore[override]
        x, y = super().__getitem__(key)
        index = key[1] if isinstance(key, tuple) else key
        return x, y, int(self.indices[index])


class _RecordsIds:
    """Mixin for a SplitDataModule: train batches carry sample ids; ``on_before_batch_transfer`` keeps them in
    ``last_ids`` and hands Lightning ``(x, y)``."""

    last_ids: list[int] | None = None

    def train_dataloader(self: Any) -> Any:
        source = self._require_setup()
        seed = self.data_seed()
        dataset = _IdDataset(source, self.split_indices["train"], self.train_transform, seed=seed)
        return train_loader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, seed=seed,
                            shuffle=self.shuffle, drop_last=self.drop_last)

    def on_before_batch_transfer(self: Any, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, list | tuple) and len(batch) == 3 and self.trainer.training:
            self.last_ids = [int(i) for i in batch[2]]
            return batch[0], batch[1]
        return batch


class DigitsWithIds(_RecordsIds, DigitsDataModule):
    """``DigitsDataModule`` whose training batches report their sample ids."""


class MNIST1DWithIds(_RecordsIds, MNIST1DDataModule):
    """``MNIST1DDataModule`` whose training batches report their sample ids."""


# ----------------------------------------------------------------------------------------------- probe + faults
@dataclass(frozen=True)
class Fault:
    kind: str  # kill | realkill | term | none
    hook: str = ""  # batch | valstart | valend | write
    epoch: int = -1
    batch: int = -1

    @staticmethod
    def parse(text: str) -> Fault:
        if not text or text == "none":
            return Fault("none")
        kind, where = text.split("@")
        hook, epoch, batch = where.split(":")
        return Fault(kind, hook, int(epoch), int(batch))

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}@{self.hook}:{self.epoch}:{self.batch}"


class Probe(Callback):
    """Records every training batch (ids, lr, loss) and fires the fault at its point (see the module docstring)."""

    def __init__(self, out: str, fault: str = "none") -> None:
        self.out, self.fault = Path(out), Fault.parse(fault)
        self._batch = (-1, -1)
        self._fired = False
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        global _PROBE
        _PROBE = self
        io: Any = trainer.strategy.checkpoint_io
        while io is not None and not isinstance(io, ProbeIO):  # EMAWeights wraps the IO in a delegating one
            io = getattr(io, "inner", None) or getattr(io, "_inner", None) or getattr(io, "checkpoint_io", None)
        if isinstance(io, ProbeIO):
            io.probe = self

    def _record(self, row: dict[str, Any]) -> None:
        (self.out / "harness").mkdir(parents=True, exist_ok=True)
        with (self.out / "harness" / "records.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record({"start": int(trainer.global_step), "from": str(trainer.ckpt_path or "")})

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch = (trainer.current_epoch, batch_idx)
        self._fire("batch")
        ids = getattr(getattr(trainer, "datamodule", None), "last_ids", None)
        lrs = [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups]
        self._pending = {"epoch": trainer.current_epoch, "batch": batch_idx, "step": int(trainer.global_step),
                         "ids": ids, "lr": lrs}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        row = dict(self._pending or {})
        row["loss"] = float(loss) if isinstance(loss, torch.Tensor) else None
        self._record(row)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._fire("valstart")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._fire("valend")

    def in_write(self, path: str) -> None:
        self._fire("write")

    def _fire(self, hook: str) -> None:
        f = self.fault
        if self._fired or f.kind == "none" or (hook, *self._batch) != (f.hook, f.epoch, f.batch):
            return
        self._fired = True
        if f.kind == "realkill":  # the real thing, for the subprocess tests: nothing after this line runs
            os.kill(os.getpid(), signal.SIGKILL)
        if f.kind == "kill":
            copy_run(self.out, Path(str(self.out) + ".killed"))
            raise Killed(str(f))
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler) or type(getattr(handler, "__self__", None)).__name__ != "Preemption":
            raise AssertionError(f"{f}: no Preemption handler installed for SIGTERM ({handler!r})")
        signal.raise_signal(signal.SIGTERM)


class ProbeIO(AtomicCheckpointIO):
    """The atomic checkpoint IO with a seam for faults inside a write: half the bytes, flushed, then the probe."""

    probe: Probe | None = None

    def write_bytes(self, fh: IO[bytes], data: memoryview) -> None:
        if self.probe is None:
            fh.write(data)
            return
        half = len(data) // 2
        fh.write(data[:half])
        fh.flush()
        self.probe.in_write(fh.name)
        fh.write(data[half:])


#: The probe of the run in progress (the seam in :func:`_probed_write_bytes` fires its faults).
_PROBE: Probe | None = None


def _probed_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """``atomic_write_bytes`` with the seam of :class:`ProbeIO`: half the bytes, flushed, then the probe."""
    from lit_tricks.fault.atomic import atomic_open

    with atomic_open(path) as fh:
        half = len(data) // 2
        fh.write(data[:half])
        fh.flush()
        if _PROBE is not None:
            _PROBE.in_write(str(path))
        fh.write(data[half:])


def copy_run(src: Path, dst: Path) -> None:
    """The run directory as a ``kill -9`` leaves it now (open files flushed by the writers above)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# ----------------------------------------------------------------------------------------------- running
@functools.cache
def _composed(recipe: str, extra: tuple[str, ...]) -> DictConfig:
    data = () if recipe in OWN_DATA else DIGITS
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*BASE, *data, *RECIPES[recipe], *extra])


def config(recipe: str, run_dir: Path, fault: str | Fault = "none", resume: bool = False,
           extra: tuple[str, ...] = ()) -> DictConfig:
    """The composed config of ``recipe`` writing into ``run_dir``, with the probe (and its fault) attached."""
    cfg = copy.deepcopy(_composed(recipe, tuple(extra)))  # composing takes a second; the paths resolve lazily
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(run_dir), str(run_dir.parent)
        cfg.paths.data_dir = str(run_dir.parent.parent / "data")
        cfg.resume = "auto" if resume else None
        cfg.callbacks["harness_probe"] = {"_target_": "tests.resume.harness.Probe", "out": str(run_dir),
                                          "fault": str(fault)}
        cfg.trainer.plugins = [{"_target_": "tests.resume.harness.ProbeIO"}]
    return cfg


def cli_overrides(recipe: str, run_dir: Path, fault: str | Fault = "none", resume: bool = False,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """The same run as :func:`config` as ``scripts/train.py`` arguments (the process needs the repo on PYTHONPATH)."""
    data = () if recipe in OWN_DATA else DIGITS
    return [*BASE, *data, *RECIPES[recipe], *extra, f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir.parent}",
            f"paths.data_dir={run_dir.parent.parent / 'data'}", f"resume={'auto' if resume else 'null'}",
            "+callbacks.harness_probe._target_=tests.resume.harness.Probe", f"+callbacks.harness_probe.out={run_dir}",
            f"+callbacks.harness_probe.fault={fault}", "trainer.plugins=[{_target_:tests.resume.harness.ProbeIO}]"]


@contextmanager
def _quiet() -> Iterator[None]:
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "lit_tricks", "lit_tricks.summary")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    import contextlib
    import io
    import warnings

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def run(recipe: str, run_dir: Path, fault: str | Fault = "none", resume: bool = False,
        extra: tuple[str, ...] = ()) -> str:
    """Run (or resume) ``recipe`` in ``run_dir`` with ``fault``; returns how it ended: ``done``, ``killed`` (the
    directory to resume is ``<run_dir>.killed``) or ``terminated`` (Preemption's exit)."""
    from lit_tricks.run import train

    cfg = config(recipe, run_dir, fault, resume, extra)
    # no fsync: a simulated kill leaves the page cache as it is (the real kills in test_real_kills.py keep it)
    with _quiet(), mock.patch("os.fsync"), \
            mock.patch("lit_tricks.fault.atomic.atomic_write_bytes", _probed_write_bytes):
        try:
            train(cfg)
        except Killed:
            return "killed"
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
            return "terminated"
    return "done"


def interrupted_run(recipe: str, root: Path, faults: list[Fault], extra: tuple[str, ...] = ()) -> Path:
    """Run ``recipe`` under ``root/run``, interrupted by each of ``faults`` in turn (one per segment), resuming after
    each; returns the directory of the finished run."""
    run_dir = root / "run"
    resume = False
    for fault in [*faults, Fault("none")]:
        ended = run(recipe, run_dir, fault, resume=resume, extra=extra)
        expected = {"none": "done", "kill": "killed", "term": "terminated"}[fault.kind]
        if ended != expected:
            raise AssertionError(f"{recipe}: fault {fault} was never reached (the run ended {ended})")
        if ended == "killed":  # what the kill left, where it left it (checkpoint states hold their directory)
            shutil.rmtree(run_dir)
            Path(str(run_dir) + ".killed").rename(run_dir)
        resume = True
    return run_dir


# ----------------------------------------------------------------------------------------------- comparing
#: Files of a run that only an interrupted run has.
ONLY_INTERRUPTED = ("preempted",)
#: What only a run through ``scripts/train.py`` (Hydra's job) writes, and the harness's own records: not compared.
ONLY_CLI = ("harness", ".hydra", "train.log")


def _normalise(obj: Any, run_dir: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(run_dir, "<RUN>")
    if isinstance(obj, dict):
        return {_normalise(k, run_dir): _normalise(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_normalise(v, run_dir) for v in obj)
    return obj


def merged_records(run_dir: Path) -> list[dict[str, Any]]:
    """The training batches of the whole run, segments merged as a kill leaves them: a resumed segment starts at
    its checkpoint's global step, so the rows an earlier segment recorded from that step on are dropped."""
    rows: list[dict[str, Any]] = []
    for line in (run_dir / "harness" / "records.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "start" in row:
            rows = [r for r in rows if r["step"] < row["start"]]
        else:
            rows.append(row)
    return rows


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    rows: list[dict[str, str]] = []
    for path in files:
        with path.open(newline="") as fh:
            rows += [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
    return rows


def outcome(run_dir: Path) -> dict[str, Any]:
    """Everything a finished run left that must equal the uninterrupted run's (paths shown as ``<RUN>``)."""
    root = str(run_dir)
    files: dict[str, Any] = {}
    for path in sorted(run_dir.rglob("*")):
        rel = str(path.relative_to(run_dir))
        if not path.is_file() or rel.startswith("harness") or any(k in path.name for k in ONLY_INTERRUPTED):
            continue
        if path.suffix in (".ckpt", ".pt"):
            files[rel] = _normalise(torch.load(path, map_location="cpu", weights_only=False), root)
        elif path.suffix == ".png":
            files[rel] = "png"
        elif path.suffix in (".json", ".md") and rel != "metrics.json":  # e.g. PostHocEMA's reconstruction table
            files[rel] = _normalise(path.read_text(), root)
    record = json.loads((run_dir / "metrics.json").read_text())
    for key in ("timings", "run_dir", "overrides", "hostname", "resumed_from"):  # resumed_from: only a resumed run
        record.pop(key, None)
    listing = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()
                     and not str(p.relative_to(run_dir)).startswith(ONLY_CLI)
                     and not any(k in p.name for k in ONLY_INTERRUPTED))
    return {"files": files, "listing": listing, "records": merged_records(run_dir), "csv": _csv_rows(run_dir),
            "resume sources": resume_sources(run_dir),
            "metrics.json": _normalise(record, root), "csv versions": len(list(run_dir.glob("csv/version_*")))}


def differences(a: Any, b: Any, path: str = "", limit: int = 12) -> list[str]:
    """Where two nested structures differ (tensors bit for bit, floats exactly: nan equals nan), at most ``limit``."""
    out: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype \
                and x.shape == y.shape and torch.equal(x.nan_to_num(), y.nan_to_num()) \
                and torch.equal(x.isnan() if x.is_floating_point() else x, y.isnan() if y.is_floating_point() else y)
            if not same:
                out.append(f"{where}: tensors differ")
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) ^ set(y), key=str):
                out.append(f"{where}.{k}: only in the {'first' if k in x else 'second'}")
            for k in sorted(set(x) & set(y), key=str):
                walk(x[k], y[k], f"{where}.{k}")
            return
        if isinstance(x, list | tuple) and isinstance(y, list | tuple):
            if len(x) != len(y):
                out.append(f"{where}: length {len(x)} != {len(y)}")
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
            return
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return
        if x != y:
            out.append(f"{where}: {x!r} != {y!r}")

    walk(a, b, path)
    return out


def _starts(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "harness" / "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"start"')]


def resume_steps(run_dir: Path) -> list[int]:
    """The global step each resumed segment of a run started at."""
    return [int(s["start"]) for s in _starts(run_dir) if s["from"]]


def resume_sources(run_dir: Path) -> set[str]:
    """The checkpoint files (relative paths) the segments of a run resumed from."""
    return {str(Path(s["from"]).relative_to(run_dir)) for s in _starts(run_dir) if s["from"].startswith(str(run_dir))}


def assert_same(resumed: dict[str, Any], reference: dict[str, Any], label: str) -> None:
    """Raise naming every difference (at most a dozen). Lightning never deletes the checkpoint a run resumed from
    (``ModelCheckpoint._should_remove_checkpoint``): such a file may be left over where the uninterrupted run
    deleted it."""
    from lit_tricks.callbacks.ema import ema_checkpoint_path

    kept = set(resumed.get("resume sources", set()))
    kept |= {str(ema_checkpoint_path(k)) for k in kept}
    files = {k: v for k, v in resumed["files"].items() if k in reference["files"] or k not in kept}
    listing = [k for k in resumed["listing"] if k in reference["listing"] or k not in kept]
    found = differences({**resumed, "files": files, "listing": listing, "resume sources": None},
                        {**reference, "resume sources": None})
    if found:
        raise AssertionError(f"{label}: the resumed run differs from the uninterrupted one:\n  " + "\n  ".join(found))


# ----------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class KnownFailure:
    """Cells of a recipe that fail for a reason fixed elsewhere: ``hits(run_dir)`` says whether a finished cell's run
    is one of them (test_grid makes those a strict xfail); ``kinds`` are the points where it can happen."""

    kinds: tuple[str, ...]
    hits: Callable[[Path], bool]
    reason: str


KNOWN_FAILURES: dict[str, KnownFailure] = {}  # none left: every cell must be bit-identical


#: Interruption points (see ``faults_for``).
KINDS = ("epoch_start", "first", "mid", "last", "after_val", "in_write", "twice")
INTERRUPTIONS = ("kill", "term")


def faults_for(kind: str, interruption: str, draw: Callable[[list[int]], int], has_val: bool) -> list[Fault]:
    """The fault(s) of one cell: ``kind`` of point, ``interruption`` kill or term, positions drawn by ``draw``.

    kill: where the run is killed (it resumes from the newest checkpoint written before). term: where the SIGTERM
    arrives (Preemption saves at the next point Lightning resumes exactly).
    """
    epoch = draw(list(range(EPOCHS)))
    later = draw(list(range(1, EPOCHS)))
    mids = list(range(1, BATCHES - 1))
    k = interruption
    if kind == "epoch_start":  # resumes from what the end of the previous epoch left
        return [Fault(k, "batch", later, 0)]
    if kind == "first":  # the checkpoint after an epoch's first batch
        return [Fault(k, "batch", epoch, 1)] if k == "kill" else [Fault(k, "batch", epoch, 0)]
    if kind == "mid":
        b = draw([m for m in mids if m + 1 < BATCHES])
        return [Fault(k, "batch", epoch, b + 1 if k == "kill" else b)]
    if kind == "last":  # the signal in, or the kill right after, the epoch's last batch
        if k == "kill":
            return [Fault(k, "valstart", epoch, BATCHES - 1) if has_val else Fault(k, "batch", later, 0)]
        # Preemption saves after the epoch's validation, else in the next epoch: there must be one
        return [Fault(k, "batch", epoch if has_val else later - 1, BATCHES - 1)]
    if kind == "after_val":  # right after the mid-epoch validation
        v = VAL_AFTER[0]
        return [Fault(k, "batch", epoch, v + 1)] if k == "kill" else [Fault(k, "valend", epoch, v)]
    if kind == "in_write":
        return [Fault(k, "write", epoch, draw(list(range(BATCHES))))]
    if kind == "twice":  # two interruptions within one epoch
        first = draw([1, 2])
        second = draw([b for b in range(first + 2, BATCHES)])
        return [Fault(k, "batch", epoch, first), Fault(k, "batch", epoch, second)]
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def cell_faults(recipe: str, kind: str, interruption: str, seed: int) -> list[Fault]:
    """The seeded draw of one cell's fault positions (same seed, same cell: same positions)."""
    import random

    rng = random.Random(f"{seed}:{recipe}:{kind}:{interruption}")
    return faults_for(kind, interruption, lambda options: rng.choice(options), recipe not in NO_VALIDATION)


def grid(kinds: tuple[str, ...] = KINDS) -> list[tuple[str, str, str]]:
    """Every (recipe, kind, interruption) cell; a recipe without validation has no ``after_val`` point."""
    return [(r, k, i) for r in RECIPES for k in kinds for i in INTERRUPTIONS
            if not (k == "after_val" and r in NO_VALIDATION)]


def ci_cells(seed: int, size: int) -> list[tuple[str, str, str]]:
    """``size`` cells drawn by ``seed`` that cover every recipe, every kind and both interruptions."""
    import random

    rng = random.Random(seed)
    cells = grid()
    rng.shuffle(cells)
    chosen: list[tuple[str, str, str]] = []
    for axis in (0, 1, 2):
        for value in sorted({c[axis] for c in cells}):
            if not any(c[axis] == value for c in chosen):
                chosen.append(next(c for c in cells if c[axis] == value and c not in chosen))
    chosen += [c for c in cells if c not in chosen][: max(0, size - len(chosen))]
    return sorted(chosen)


def env_seed() -> int:
    return int(os.environ.get("LIT_TRICKS_RESUME_SEED", "0"))
