"""The fault battery's training job: a tiny run with shuffle, dropout, augmentation and per-step checkpoints, into
which faults are injected deterministically (the process kills itself at a given step; no sleeping, no races).

Run as a script (``python tests/fault/battery/driver.py --root DIR --out result.pt [fault flags]``) or in-process
through :func:`run`. Faults, all keyed to ``trainer.global_step`` (the optimizer step about to happen, counted from 0):

- ``--kill-at-step K``: SIGKILL after step K's forward/backward, before its optimizer step (mid-step: step K is lost).
- ``--kill-in-write-at-step K --kill-after-bytes N``: SIGKILL after N bytes of step K's ``last.ckpt`` were written.
- ``--sigterm-at-step K``: send SIGTERM to ourselves at the start of step K (mid-epoch).
- ``--nan-at-step K``: the loss of step K is NaN. ``--nan-policies a,b``: one fit per NaNGuard policy (``none`` =
  no guard), each under ``<root>/<policy>``.
- ``--keep-at-step K --then-resume-kept``: keep the checkpoint a kill at step K would leave, and after the fit
  resume from it in the same process (the plain-Lightning peers: one process instead of three).
- ``--fault-rank R``: under DDP, only global rank R kills itself / gets SIGTERM / computes a NaN loss (default:
  every rank kills, rank 0 gets SIGTERM, every rank's loss is NaN).
- ``--pause-at-step K``: at the start of step K every rank waits (at most ``PAUSE_TIMEOUT_S``) until a preemption
  signal reaches it, after writing ``<root>/paused``: the SLURM tests send ``scancel --signal`` / ``scontrol requeue``
  then, so the signal lands at a known step.
- ``--num-nodes N``: Trainer(num_nodes=N), for runs under ``srun`` (SLURMEnvironment sets the ranks).
- ``--plain``: plain Lightning (torch DataLoader, TorchCheckpointIO, no RNGState/Preemption): the peer runs that show
  the faults hurt without lit_tricks.

Under ``--devices 2`` (DDP, gloo) every rank kills itself at the same point; rank 0 first kills and reaps the other
ranks so that nothing is left running when the process ends.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lit_tricks.callbacks.nan_guard import NaNGuard  # noqa: E402
from lit_tricks.callbacks.preemption import Preemption  # noqa: E402
from lit_tricks.callbacks.rng_state import RNGState  # noqa: E402
from lit_tricks.data import sampling  # noqa: E402
from lit_tricks.fault.checkpoint_io import AtomicCheckpointIO  # noqa: E402

N_TRAIN, N_VAL, BATCH, SIDE, CLASSES = 96, 32, 16, 6, 3  # 6 steps per epoch
STEPS_PER_EPOCH = N_TRAIN // BATCH
#: Process-group timeout under DDP (also how long rank 1 waits for rank 0's store at start-up: on shared cores the
#: ranks may start a minute apart).
PG_TIMEOUT_S = 120
#: Bound on a --pause-at-step wait for the preemption signal.
PAUSE_TIMEOUT_S = 180.0


def _rank() -> int:
    """This process's global rank from the launcher's environment (before the Trainer exists)."""
    return int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))))


class AugmentedImages(Dataset):
    """Fixed random 1x6x6 images; ``augment`` flips and adds noise with the global torch RNG (as transforms do)."""

    def __init__(self, n: int, seed: int, augment: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, SIDE, SIDE, generator=g)
        proto = torch.rand(CLASSES, SIDE * SIDE, generator=torch.Generator().manual_seed(99))
        self.y = (self.x.flatten(1) @ proto.T).argmax(1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = key[1] if isinstance(key, tuple) else key  # ResumableSampler yields (epoch, index)
        x = self.x[i]
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            x = x + 0.05 * torch.randn_like(x)
        return x, self.y[i]


class Net(pl.LightningModule):
    """MLP with BatchNorm and dropout; SGD with momentum and a per-step LambdaLR."""

    def __init__(self, nan_at_step: int = -1, nan_rank: int = -1) -> None:
        super().__init__()
        self.nan_at_step = nan_at_step
        self.nan_rank = nan_rank
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Dropout(0.3), nn.Linear(32, CLASSES))

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:  # every rank its own RNG stream, so per-rank RNG state matters on resume
            torch.manual_seed(1000 + self.trainer.global_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.global_step == self.nan_at_step and self.nan_rank in (-1, self.global_rank):
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.05 * s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DataModule(pl.LightningDataModule):
    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.plain = plain
        self.train_set = AugmentedImages(N_TRAIN, seed=1, augment=True)
        self.val_set = AugmentedImages(N_VAL, seed=2, augment=False)

    def train_dataloader(self) -> DataLoader:
        if self.plain:
            return DataLoader(self.train_set, batch_size=BATCH, shuffle=True)
        from torchdata.stateful_dataloader import StatefulDataLoader

        # the data position (epoch, samples yielded) is in the loader's state; DistributedSampler's is not
        sampler = sampling.ResumableSampler(self.train_set, seed=11, num_replicas=self.trainer.world_size,
                                   rank=self.trainer.global_rank)
        return StatefulDataLoader(self.train_set, batch_size=BATCH, sampler=sampler)  # type: ignore[return-value]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=BATCH)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _die(trainer: pl.Trainer | None = None) -> None:
    """SIGKILL this process; rank 0 of a DDP run first kills and reaps the ranks it launched."""
    sys.stdout.flush()
    sys.stderr.flush()
    launcher = getattr(trainer.strategy, "launcher", None) if trainer is not None else None
    for proc in getattr(launcher, "procs", []) or []:
        proc.kill()
        proc.wait()
    os.kill(os.getpid(), signal.SIGKILL)


class Faults(Callback):
    """Deterministic fault injection keyed to the global step."""

    def __init__(self, root: Path, kill_at_step: int, sigterm_at_step: int, kill_in_write_at_step: int,
                 fault_rank: int = -1, pause_at_step: int = -1) -> None:
        self.root, self.kill_at_step, self.sigterm_at_step = root, kill_at_step, sigterm_at_step
        self.kill_in_write_at_step = kill_in_write_at_step
        self.fault_rank, self.pause_at_step = fault_rank, pause_at_step
        self.keep_at_step = -1

    def _pause_for_signal(self, trainer: pl.Trainer) -> None:
        """Wait until a preemption signal reached this rank (the test sends it once ``paused`` exists)."""
        preemption = next(cb for cb in trainer.callbacks if isinstance(cb, Preemption))  # type: ignore[attr-defined]
        if trainer.is_global_zero:
            (self.root / "paused").write_text(str(trainer.global_step))
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while preemption.received is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.pause_at_step:
            self._pause_for_signal(trainer)
        target = trainer.is_global_zero if self.fault_rank < 0 else trainer.global_rank == self.fault_rank
        if trainer.global_step == self.sigterm_at_step and target:
            os.kill(os.getpid(), signal.SIGTERM)
        if trainer.global_step == self.keep_at_step and trainer.is_global_zero:
            # the checkpoint a kill during this step would leave behind
            shutil.copyfile(self.root / "checkpoints" / "last.ckpt", self.root / "kept.ckpt")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.global_step == self.kill_at_step:
            if self.fault_rank < 0:
                _die(trainer)
            elif trainer.global_rank == self.fault_rank:  # this rank alone dies; the others must notice
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # runs before ModelCheckpoint (Lightning puts it last): record last.ckpt as it is before the doomed write
        if trainer.global_step == self.kill_in_write_at_step and trainer.is_global_zero:
            last = self.root / "checkpoints" / "last.ckpt"
            (self.root / "last_before.sha256").write_text(_sha256(last) if last.exists() else "")


class Recorder(Callback):
    """Per step: global step, loss, lr and a copy of the flat parameter vector (for the battery's assertions)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.records.append({
            "step": trainer.global_step,  # steps taken so far, this one included
            "loss": float(loss) if loss is not None else float("nan"),
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            "batch": batch[0].detach().clone(),
            "labels": batch[1].detach().clone(),
            "params": torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone(),
        })


class KillingCheckpointIO(AtomicCheckpointIO):
    """AtomicCheckpointIO that dies after ``after_bytes`` bytes of step ``at_step``'s ``last.ckpt``."""

    def __init__(self, at_step: int, after_bytes: int) -> None:
        super().__init__()
        self.at_step, self.after_bytes = at_step, after_bytes
        self._armed = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self._armed = Path(str(path)).name == "last.ckpt" and checkpoint.get("global_step") == self.at_step
        super().save_checkpoint(checkpoint, path, storage_options)

    def write_bytes(self, fh: Any, data: memoryview) -> None:
        if not self._armed:
            fh.write(data)
            return
        fh.write(data[: self.after_bytes])
        fh.flush()
        _die()


def _arm_plain_write_kill(at_step: int, after_bytes: int, trainer_ref: list[pl.Trainer]) -> None:
    """Plain Lightning writes via fsspec: a temp file in $TMPDIR, then shutil.move (copy across filesystems).

    Make that copy go through ``copyfileobj`` and die after ``after_bytes`` bytes of step ``at_step``'s last.ckpt.
    """
    shutil._USE_CP_SENDFILE = False  # type: ignore[attr-defined]
    original = shutil.copyfileobj

    def copyfileobj(fsrc: Any, fdst: Any, length: int = 0) -> None:
        name = Path(str(getattr(fdst, "name", ""))).name
        trainer = trainer_ref[0] if trainer_ref else None
        if name == "last.ckpt" and trainer is not None and trainer.global_step == at_step:
            fdst.write(fsrc.read(after_bytes))
            fdst.flush()
            _die()
        original(fsrc, fdst, length)

    shutil.copyfileobj = copyfileobj


def extra_callbacks() -> list[Callback]:
    """lit_tricks' own stateful callbacks whose state must survive a resume (those present in this checkout)."""
    found: list[Callback] = []
    try:
        from lit_tricks.callbacks.ema import EMAWeights

        found.append(EMAWeights(decay=0.9))
    except ImportError:
        pass
    try:
        from lit_tricks.callbacks.ensemble import CheckpointEnsemble

        found.append(CheckpointEnsemble(every_n_epochs=1, keep_inline=True, log_test=False))
    except ImportError:
        pass
    return found


def early_stopping(plain: bool) -> Callback:
    """lit_tricks' EarlyStopping (best weights kept in its state) when present, else Lightning's."""
    if not plain:
        try:
            from lit_tricks.callbacks.early_stopping import EarlyStopping as LitEarlyStopping

            return LitEarlyStopping(monitor="val/loss", mode="min", patience=50, restore_best_weights=True)
        except ImportError:
            pass
    return EarlyStopping(monitor="val/loss", mode="min", patience=50)


def _relative(obj: Any, root: str) -> Any:
    """``obj`` with the run directory in strings replaced by ``<root>`` (runs in different directories compare)."""
    if isinstance(obj, str):
        return obj.replace(root, "<root>")
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_relative(v, root) for v in obj)
    return obj


def run(args: argparse.Namespace, root: Path, out: Path | None, nan_policy: str = "none") -> dict[str, Any]:
    """One fit under ``root``; returns (and writes to ``out`` on rank 0) the final state."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = DataModule(plain=args.plain)
    model = Net(nan_at_step=args.nan_at_step, nan_rank=args.fault_rank)
    ckpt_dir = root / "checkpoints"
    recorder = Recorder()
    early = early_stopping(args.plain)
    faults = Faults(root, args.kill_at_step, args.sigterm_at_step, args.kill_in_write_at_step, args.fault_rank,
                    args.pause_at_step)
    faults.keep_at_step = args.keep_at_step
    callbacks: list[Callback] = [recorder, early, faults]
    if not args.plain:
        callbacks += [RNGState(), Preemption()] + extra_callbacks()
    if nan_policy != "none":
        callbacks.append(NaNGuard(policy=nan_policy, snapshot_every_n_steps=args.snapshot_every))
    callbacks.append(ModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=args.every_n_steps, save_last=True,
                                     save_top_k=1, monitor=None))
    # and one after each epoch's validation: the step checkpoint of an epoch's last batch precedes validation, and
    # Lightning resumed from it skips that validation (monitoring callbacks then miss val/loss)
    callbacks.append(ModelCheckpoint(dirpath=str(root / "epochs"), every_n_epochs=1, save_last=True, save_top_k=1,
                                     monitor=None, save_on_train_epoch_end=True))
    plugins: list[Any] = []
    trainer_ref: list[pl.Trainer] = []
    if args.kill_in_write_at_step >= 0:
        if args.plain:
            _arm_plain_write_kill(args.kill_in_write_at_step, args.kill_after_bytes, trainer_ref)
        else:
            plugins.append(KillingCheckpointIO(args.kill_in_write_at_step, args.kill_after_bytes))
    elif not args.plain:
        plugins.append(AtomicCheckpointIO())
    strategy: Any = "auto"
    if args.devices * args.num_nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=strategy,
        max_epochs=args.max_epochs, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
        default_root_dir=str(root), callbacks=callbacks, plugins=plugins or None,
    )
    trainer_ref.append(trainer)
    ckpt_path: str | None = None
    if args.resume == "auto":
        from lit_tricks.fault.resume import find_resume_checkpoint

        ckpt_path = find_resume_checkpoint(root)
    elif args.resume not in ("none", ""):
        ckpt_path = args.resume
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    result = {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": trainer.optimizers[0].state_dict(),
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "resumed_from": ckpt_path,
        "records": recorder.records,
        "early_stopping": _relative(early.state_dict(), str(root)),
        "callbacks": {type(cb).__name__: _relative(cb.state_dict(), str(root)) for cb in callbacks
                      if not isinstance(cb, (ModelCheckpoint, Recorder, Faults, EarlyStopping))},
        "should_stop": trainer.should_stop,
    }
    if out is not None:  # rank 0: out; rank r > 0: out with a _rank<r> suffix
        out = out if trainer.is_global_zero else out.with_name(f"{out.stem}_rank{trainer.global_rank}{out.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result, out)
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--out", default="")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--fault-rank", type=int, default=-1)
    p.add_argument("--pause-at-step", type=int, default=-1)
    p.add_argument("--every-n-steps", type=int, default=1)
    p.add_argument("--resume", default="none")
    p.add_argument("--plain", action="store_true")
    p.add_argument("--kill-at-step", type=int, default=-1)
    p.add_argument("--sigterm-at-step", type=int, default=-1)
    p.add_argument("--kill-in-write-at-step", type=int, default=-1)
    p.add_argument("--kill-after-bytes", type=int, default=1000)
    p.add_argument("--nan-at-step", type=int, default=-1)
    p.add_argument("--nan-policies", default="")
    p.add_argument("--snapshot-every", type=int, default=1)
    p.add_argument("--keep-at-step", type=int, default=-1,
                   help="copy last.ckpt to <root>/kept.ckpt at the start of this step")
    p.add_argument("--then-resume-kept", action="store_true",
                   help="after the fit, fit again in <root>/resumed from kept.ckpt (a crash-resume, in-process)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    root = Path(args.root)
    if args.nan_policies:
        for policy in args.nan_policies.split(","):
            run(args, root / policy, root / policy / "result.pt", nan_policy=policy)
        return
    try:
        run(args, root, Path(args.out) if args.out else None)
    except SystemExit as stop:  # Preemption's clean exit: leave a per-rank note of how this rank ended
        root.mkdir(parents=True, exist_ok=True)
        (root / f"exit_rank{_rank()}.txt").write_text(f"SystemExit {stop.code or 0}")
        raise
    if args.then_resume_kept:
        # seed_everything at the start of run() gives the second fit the RNG a fresh process would have
        again = argparse.Namespace(**{**vars(args), "keep_at_step": -1, "resume": str(root / "kept.ckpt")})
        run(again, root / "resumed", root / "resumed" / "result.pt")


if __name__ == "__main__":
    try:
        main()
    finally:  # leave no gloo threads for interpreter exit to destroy ("terminate called without an active exception")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
