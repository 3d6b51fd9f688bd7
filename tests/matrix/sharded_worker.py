"""The sharded tests' job: FSDP2 fits (``ModelParallelStrategy``, CPU, gloo) of one tiny MLP with every stateful
callback, several fits per launch (a process start costs seconds here); each rank records what the tests compare.

``python tests/matrix/sharded_worker.py --root DIR --devices 2 --phases ref,term_dir,term_full,lightning_clip,from1``
(Lightning's launcher re-runs this script for rank 1; later Trainers reuse the process group). Phases:

- ``ref``: the uninterrupted run (distributed checkpoints); per step the gathered weights, gradients before and
  after clipping (first steps) and probes of every clipping mode on the same gradients.
- ``term_dir`` / ``term_full``: SIGTERM on rank 0 at step ``SIGTERM_STEP`` (Preemption saves and exits with 0),
  then ``resume=auto`` in the same process; distributed checkpoints / one full file.
- ``bf16``: ``bf16-true`` weights, 8 steps: the EMA's and PostHocEMA's fp32 shards.
- ``lightning_clip``: Lightning's own ``gradient_clip_val`` (the oracle of global-norm clipping), 2 steps.
- ``norms``: global norms (p = 1, 2, inf) and clipping (``norm``, ``agc``) of hand-made DTensor shards and plain
  tensors of every dtype mix in :data:`NORM_CASES` (a rank with no rows among them), 1 step.
- ``from1``: resume on 2 ranks from the full file of the unsharded single-process run (``--from-file``).
- ``to1`` (``--devices 1``): resume on 1 rank from the 2-rank run's checkpoints (``--from-dir``, ``--from-file``),
  a TrickModule with ``shard=auto`` under the same strategy, and the ``ema-`` twin directory loaded by
  ``trainer.test(ckpt_path=...)``.

``run_single`` is the unsharded single-process run of the same data (the tests run it in-process).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from lit_tricks.callbacks import (  # noqa: E402
    CheckpointEnsemble,
    EarlyStopping,
    EMAWeights,
    GradientClipping,
    NaNGuard,
    PostHocEMA,
    Preemption,
    RNGState,
)
from lit_tricks.data import sampling  # noqa: E402
from lit_tricks.fault.ema_checkpoint import ema_checkpoint_path  # noqa: E402
from lit_tricks.fault.resume import find_resume_checkpoint  # noqa: E402
from lit_tricks.functional.sharded import full_state_dict, is_dtensor, local  # noqa: E402
from lit_tricks.modules.sharding import shard_model  # noqa: E402
from lit_tricks.trainers.hydra_job import _destroy_process_group  # noqa: E402

N, BATCH, DIM, CLASSES = 96, 8, 8, 3  # per rank: 6 steps per epoch on 2 ranks (batch 16 on 1)
EPOCHS = 3
NAN_STEP, NAN_RANK = 7, 1  # rank 1's loss is NaN at this step (the whole batch's in the single-process run)
SIGTERM_STEP = 10
PROBE_STEPS = 3  # steps whose gradients are recorded and probed with every clipping mode
MAX_NORM, MAX_VALUE, AGC = 0.5, 0.02, 0.05
PG_TIMEOUT = datetime.timedelta(seconds=60)
SNAPSHOT_EVERY = 4  # PostHocEMA snapshots at steps 4, 8, 12, 16 and 18 (the end)
F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
#: The ``norms`` phase's tensors: (shape, dtype, scale, sharded over dim 0). 5 rows over 2 ranks: 3 + 2; 1 row:
#: rank 1 holds none. ``float64_huge``: squares of 1e30 overflow float32 (finite in float64).
NORM_CASES: dict[str, list[tuple[tuple[int, ...], torch.dtype, float, bool]]] = {
    "float64": [((5, 3), F64, 1.0, True), ((1, 4), F64, 1.0, True), ((6,), F64, 1.0, False)],
    "float64_huge": [((5, 3), F64, 1e30, True), ((1, 4), F64, 1e30, True)],
    "mixed": [((5, 3), F32, 1.0, True), ((1, 4), F64, 1.0, True), ((6,), F64, 1.0, False)],
    "float32": [((5, 3), F32, 1.0, True), ((1, 4), F32, 1.0, True), ((6,), F32, 1.0, False)],
    "bfloat16": [((5, 3), BF16, 1.0, True), ((1, 4), BF16, 1.0, True)],
}
NORM_TYPES = (1.0, 2.0, float("inf"))


class Blobs(Dataset):
    """Fixed blobs; ``ResumableSampler`` yields ``(epoch, index)`` keys."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        centers = torch.randn(CLASSES, DIM, generator=g) * 2
        self.y = torch.randint(0, CLASSES, (N,), generator=g)
        self.x = centers[self.y] + torch.randn(N, DIM, generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = key[1] if isinstance(key, tuple) else key
        return self.x[i], self.y[i]


class Net(pl.LightningModule):
    """Linear(8, 5) - LayerNorm - Linear(5, 7) - Linear(7, 3): uneven shards over 2 ranks (5 rows = 3 + 2)."""

    def __init__(self, nan_rank: int = NAN_RANK) -> None:
        super().__init__()
        self.nan_rank = nan_rank
        self.net = nn.Sequential(nn.Linear(DIM, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 7), nn.ReLU(),
                                 nn.Linear(7, CLASSES))

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            shard_model(self, self.net, self.device_mesh["data_parallel"], "blocks")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.global_step == NAN_STEP and self.nan_rank in (-1, self.global_rank):
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    test_step = validation_step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)

    def train_dataloader(self) -> Any:
        from torchdata.stateful_dataloader import StatefulDataLoader

        world = self.trainer.world_size
        sampler = sampling.ResumableSampler(Blobs(), seed=5, num_replicas=world, rank=self.trainer.global_rank)
        return StatefulDataLoader(Blobs(), batch_size=BATCH * (2 // world), sampler=sampler)

    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(Blobs(), batch_size=32)

    test_dataloader = val_dataloader


def _gather(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if is_dtensor(v) else v).detach().cpu().clone() for k, v in tensors.items()}


class Probe(Callback):
    """Records (rank 0 keeps the gathered values; every rank takes part in the gathering)."""

    def __init__(self, where: str) -> None:
        self.where = where  # "pre" (before GradientClipping) or "post"
        self.records: list[dict[str, Any]] = []
        self.modes = {"agc": GradientClipping("agc", agc_factor=AGC, log=False),
                      "auto": GradientClipping("auto", percentile=50.0, log=False),
                      "value": GradientClipping("value", max_value=MAX_VALUE, log=False)}
        self.start: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ema = next((c for c in trainer.callbacks if isinstance(c, EMAWeights)), None)  # type: ignore[attr-defined]
        if ema is not None and self.where == "pre":
            ema._ensure(pl_module)  # a restored EMA is loaded (re-sharded) now
            self.start = {"step": trainer.global_step, "weights": full_state_dict(pl_module),
                          "ema": _gather(ema.ema_state_dict), "num_updates": ema.num_updates,
                          "posthoc": posthoc_state(trainer.callbacks, pl_module)}  # type: ignore[attr-defined]

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.global_step >= PROBE_STEPS:
            return
        params = dict(pl_module.named_parameters())
        record = {"step": trainer.global_step, "grads": _gather({k: p.grad for k, p in params.items()})}
        if self.where == "pre":
            record["weights"] = _gather({k: p.detach() for k, p in params.items()})
            for mode, clip in self.modes.items():  # each mode on a copy of the same gradients
                saved = {k: p.grad for k, p in params.items()}
                for p in params.values():
                    p.grad = p.grad.detach().clone()  # type: ignore[union-attr]
                norm = clip.clip_(list(params.values()))
                record[mode] = {"norm": norm.cpu(), "grads": _gather({k: p.grad for k, p in params.items()}),
                                "history": clip.filled_history()}
                for k, p in params.items():
                    p.grad = saved[k]
        self.records.append(record)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.where == "pre":
            self.records.append({"step_end": trainer.global_step, "weights": full_state_dict(pl_module)})


def posthoc_state(cbs: list[Callback], module: pl.LightningModule | None = None) -> dict[str, Any]:
    """PostHocEMA's profiles gathered (a collective: every rank) and its counters; with ``module`` a restored state
    is bound (loaded, re-sharded) first, as PostHocEMA does at train start."""
    ph = next(c for c in cbs if isinstance(c, PostHocEMA))
    if module is not None:
        ph._bind(module)
    return {"profiles": ph.profiles.profiles(full=True), "steps": ph.profiles.steps,
            "dtypes": sorted({str(t.dtype) for shadow in ph.profiles.shadows for t in shadow}),
            "sharded": all(is_dtensor(t) for shadow in ph.profiles.shadows for t in shadow)}


def callbacks(root: Path) -> list[Callback]:
    return [
        Probe("pre"), GradientClipping("norm", max_norm=MAX_NORM), Probe("post"), NaNGuard(policy="skip_step"),
        EMAWeights(decay=0.8, warmup=True), RNGState(), Preemption(),
        PostHocEMA(snapshot_every_n_steps=SNAPSHOT_EVERY, dirpath=str(root / "posthoc")),
        CheckpointEnsemble(every_n_epochs=1, dirpath=str(root / "ensemble"), log_test=False),
        EarlyStopping("val/loss", patience=50, restore_best_weights=True),
        # at each epoch's last step (steps 6, 12, 18); keeps the newest two (removing the oldest and its twin)
        ModelCheckpoint(dirpath=str(root / "checkpoints"), every_n_train_steps=6, save_top_k=2, monitor="step",
                        mode="max", save_last=True),
    ]


class SigTerm(Callback):
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == SIGTERM_STEP and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGTERM)


def trainer_for(root: Path, devices: int, cbs: list[Callback], distributed: bool = True, **kw: Any) -> pl.Trainer:
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1, timeout=PG_TIMEOUT,
                                     save_distributed_checkpoint=distributed)
    return pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=EPOCHS, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      deterministic=True, default_root_dir=str(root), callbacks=cbs, **kw)


def outcome(trainer: pl.Trainer, model: pl.LightningModule, cbs: list[Callback]) -> dict[str, Any]:
    """The final state every rank records: its local shards, the gathered weights, the callback states."""
    ema = next(c for c in cbs if isinstance(c, EMAWeights))
    ens = next(c for c in cbs if isinstance(c, CheckpointEnsemble))
    pre = next(c for c in cbs if isinstance(c, Probe) and c.where == "pre")
    optimizer = trainer.optimizers[0]
    return {
        "global_step": trainer.global_step, "epoch": trainer.current_epoch,
        "weights": full_state_dict(model), "ema": _gather(ema.ema_state_dict), "num_updates": ema.num_updates,
        "local_optimizer": [{k: local(v).clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                            for s in optimizer.state.values()],
        "members": [m["path"].replace(str(ens.dirpath), "<dir>") for m in ens.members],
        "member_states": ens.store.state_dicts(),
        "states": {type(c).__name__: c.state_dict() for c in cbs
                   if isinstance(c, (GradientClipping, NaNGuard, RNGState))},
        "es": {k: v for k, v in next(c for c in cbs if isinstance(c, EarlyStopping)).state_dict().items()},
        "records": pre.records, "post": next(c for c in cbs if isinstance(c, Probe) and c.where == "post").records,
        "start": pre.start, "posthoc": posthoc_state(cbs),
    }


def fit(root: Path, devices: int, distributed: bool = True, ckpt_path: str | None = None, sigterm: bool = False,
        nan_rank: int = NAN_RANK, **kw: Any) -> dict[str, Any]:
    pl.seed_everything(7, verbose=False)
    cbs = callbacks(root) + ([SigTerm()] if sigterm else [])
    trainer, model = trainer_for(root, devices, cbs, distributed, **kw), Net(nan_rank)
    trainer.fit(model, ckpt_path=ckpt_path)
    return outcome(trainer, model, cbs)


def save(out: dict[str, Any], root: Path, name: str) -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    root.mkdir(parents=True, exist_ok=True)
    torch.save(out, root / f"{name}_rank{rank}.pt")


def terminate_and_resume(root: Path, devices: int, distributed: bool) -> dict[str, Any]:
    try:
        fit(root, devices, distributed, sigterm=True)
    except SystemExit as stop:  # Preemption's clean exit
        assert not stop.code, f"Preemption exited with {stop.code}"
    found = find_resume_checkpoint(root)
    out = fit(root, devices, distributed, ckpt_path=found)
    out["resumed_from"] = found
    return out


def run_single(root: Path) -> dict[str, Any]:
    """The unsharded single-process run of the same data (batch 16: the union of the 2 ranks' batches)."""
    pl.seed_everything(7, verbose=False)
    cbs = [c for c in callbacks(root) if not isinstance(c, Preemption)]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
                         default_root_dir=str(root), callbacks=cbs)
    model = Net(nan_rank=-1)
    trainer.fit(model)
    return outcome(trainer, model, cbs)


def lightning_clip(root: Path) -> dict[str, Any]:
    pl.seed_everything(7, verbose=False)
    post: list[dict[str, torch.Tensor]] = []

    class After(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            post.append(full_state_dict(pl_module))

    trainer = trainer_for(root, 2, [After()], max_steps=2, gradient_clip_val=MAX_NORM, enable_checkpointing=False)
    trainer.fit(Net())
    return {"weights": post}


def bf16(root: Path) -> dict[str, Any]:
    """``bf16-true`` weights sharded over the ranks: the EMA and PostHocEMA keep fp32 shards (distributed
    checkpoints)."""
    pl.seed_everything(7, verbose=False)
    ema, probe = EMAWeights(decay=0.99, apply_at_end=False), Probe("pre")
    posthoc = PostHocEMA(snapshot_every_n_steps=SNAPSHOT_EVERY, dirpath=str(root / "posthoc"))
    cbs: list[Callback] = [probe, ema, posthoc, ModelCheckpoint(dirpath=str(root), save_last=True)]
    trainer = trainer_for(root, 2, cbs, precision="bf16-true", max_steps=8, limit_val_batches=0)
    trainer.fit(Net(nan_rank=-2))
    return {"ema": _gather(ema.ema_state_dict), "dtypes": sorted({str(e.dtype) for e in ema.state.ema_params}),
            "sharded": all(is_dtensor(e) for e in ema.state.ema_params), "records": probe.records,
            "weight_dtype": str(next(trainer.lightning_module.parameters()).dtype), "posthoc": posthoc_state(cbs)}


def to_one(root: Path, from_dir: str, from_file: str) -> dict[str, Any]:
    from lit_tricks.modules.trick_module import TrickModule

    out = {"dir": fit(root / "dir", 1, True, ckpt_path=from_dir), "file": fit(root / "file", 1, False,
                                                                              ckpt_path=from_file)}
    from lit_tricks.trainers.strategies import model_parallel_strategy

    module = TrickModule(nn.Sequential(nn.Linear(DIM, 5), nn.ReLU(), nn.Linear(5, CLASSES)), num_classes=CLASSES)
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=model_parallel_strategy(timeout_s=60), max_steps=2,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[ModelCheckpoint(dirpath=str(root / "trick"), save_last=True)])
    data = Blobs()
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x, data.y), batch_size=16))
    out["trick"] = {"sharded": [is_dtensor(p) for p in module.parameters()], "step": trainer.global_step}
    net = Net()  # the ema- twin directory loaded as a model checkpoint by the strategy
    trainer_for(root / "twin", 1, []).test(net, ckpt_path=str(ema_checkpoint_path(from_dir)), verbose=False)
    out["twin_loaded"] = full_state_dict(net)
    return out


def norm_tensors(case: str, seed: int) -> list[torch.Tensor]:
    """The full tensors of ``NORM_CASES[case]`` (the same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=F64) * scale).to(dtype) for shape, dtype, scale, _ in
            NORM_CASES[case]]


class NormProbe(Callback):
    """At train start: ``global_norm`` / ``grad_norm`` of each case's tensors placed as ``NORM_CASES`` says, and
    GradientClipping's ``norm`` and ``agc`` modes on parameters holding them as gradients (gathered afterwards)."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.distributed.tensor import Shard, distribute_tensor

        from lit_tricks.functional.clip import grad_norm
        from lit_tricks.functional.sharded import global_norm

        mesh = pl_module.device_mesh["data_parallel"]  # type: ignore[index]

        def place(tensors: list[torch.Tensor], case: str) -> list[torch.Tensor]:
            return [distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) if spec[3] else t.clone()
                    for t, spec in zip(tensors, NORM_CASES[case])]

        for case in NORM_CASES:
            grads, weights = norm_tensors(case, 11), norm_tensors(case, 12)
            rec: dict[str, Any] = {"grads": grads, "weights": weights}
            for p in NORM_TYPES:
                rec[p] = {"global": global_norm(place(grads, case), p), "grad_norm": grad_norm(place(grads, case), p)}
                for mode, clip in (("norm", GradientClipping("norm", max_norm=MAX_NORM, norm_type=p, log=False)),
                                   ("agc", GradientClipping("agc", agc_factor=AGC, norm_type=p, log=False))):
                    params = [nn.Parameter(w) for w in place(weights, case)]
                    for param, g in zip(params, place(grads, case)):
                        param.grad = g
                    rec[p][mode] = {"norm": clip.clip_(params), "grads": [_gather({"g": q.grad})["g"] for q in params]}
            self.out[case] = rec


def norms(root: Path, devices: int) -> dict[str, Any]:
    probe = NormProbe()
    trainer = trainer_for(root, devices, [probe], max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(Net(nan_rank=-2))
    return probe.out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--phases", default="ref")
    p.add_argument("--from-file", default="")
    p.add_argument("--from-dir", default="")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    root = Path(args.root)
    # Lightning's ModelParallelStrategy leaves the gloo group to interpreter finalization, which can abort a rank
    # (pytorch/pytorch#190489; lit_tricks' strategies register this themselves)
    atexit.register(_destroy_process_group)
    for phase in args.phases.split(","):
        if phase == "ref":
            out = fit(root / "ref", args.devices)
        elif phase in ("term_dir", "term_full"):
            out = terminate_and_resume(root / phase, args.devices, phase == "term_dir")
        elif phase == "bf16":
            out = bf16(root / phase)
        elif phase == "lightning_clip":
            out = lightning_clip(root / phase)
        elif phase == "from1":
            out = fit(root / phase, args.devices, False, ckpt_path=args.from_file)
        elif phase == "norms":
            out = norms(root / phase, args.devices)
        elif phase == "to1":
            out = to_one(root / phase, args.from_dir, args.from_file)
        else:
            raise SystemExit(f"unknown phase {phase!r}")
        save(out, root, phase)


if __name__ == "__main__":
    main()
