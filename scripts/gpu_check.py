"""GPU check (``make gpu-check``): the CUDA-only paths of the callbacks, in one command, in well under 5 minutes.

1. ``16-mixed`` (GradScaler) + NaNGuard + GradientClipping: a NaN batch is dropped, the scale backs off, every good
   step's clipped gradient norm is <= max_norm (torch's ``clip_grad_norm_`` semantics), the weights stay finite.
2. EMAWeights on CUDA and with ``device="cpu"`` offload: same EMA (to float tolerance), each on its device.
3. CheckpointEnsemble's vmap path on CUDA equals the member loop.
4. Exact resume with CUDA RNG (dropout on the GPU, RNGState): stop-and-resume equals uninterrupted, bit for bit.
5. FSDP1 (``strategy="fsdp"``) on one GPU with EMAWeights: a clean one-line refusal passes (flat shards are not
   averaged); training on silently fails.
6. FSDP2 (``ModelParallelStrategy``, NCCL, bf16-true) on one GPU: EMAWeights keeps fp32 DTensor shards on CUDA that
   follow the fp32 recurrence, GradientClipping's global norm equals ``clip_grad_norm_``'s, both checkpoint modes
   write their ``ema-`` twins (a directory of shards, a full file).

Without CUDA it prints one skip line and exits 0. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the exact-resume check

import torch

CHECKS: dict[str, str] = {
    "amp_nanguard_clipping": "16-mixed GradScaler + NaNGuard + GradientClipping",
    "ema_cuda_and_offload": "EMAWeights on CUDA and device='cpu'",
    "ensemble_vmap": "CheckpointEnsemble vmap on CUDA == loop",
    "exact_resume_cuda_rng": "exact resume with CUDA RNG (RNGState)",
    "fsdp_ema": "FSDP1 (1 GPU) + EMAWeights: clean refusal",
    "fsdp2_callbacks": "FSDP2 (1 GPU, bf16-true): sharded fp32 EMA, global-norm clipping, both checkpoint modes",
}


def _lightning() -> tuple[Any, Any]:
    import lightning.pytorch as pl
    from torch import nn

    class Net(pl.LightningModule):
        def __init__(self, nan_at_step: int = -1) -> None:
            super().__init__()
            self.nan_at_step = nan_at_step
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            if self.global_step == self.nan_at_step:
                x = x * float("nan")
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val/loss", nn.functional.cross_entropy(self(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.validation_step(batch, batch_idx)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)

    return pl, Net


def _loader(n: int = 256, seed: int = 0) -> Any:
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)  # global RNG: RNGState restores it


def _trainer(pl: Any, root: Path, **kw: Any) -> Any:
    args: dict[str, Any] = dict(accelerator="gpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(root), enable_checkpointing=False,
                                num_sanity_val_steps=0)
    args.update(kw)
    return pl.Trainer(**args)


def check_amp_nanguard_clipping(root: Path) -> str:
    pl, Net = _lightning()
    from lightning.pytorch.callbacks import Callback

    from lit_tricks.callbacks import GradientClipping, NaNGuard

    class Norms(Callback):  # runs after the clipping callback: the gradients the optimizer will see
        def __init__(self) -> None:
            self.norms: list[float] = []
            self.scales: list[float] = []

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                self.norms.append(float(torch.nn.utils.get_total_norm(grads)))
            scaler = getattr(trainer.precision, "scaler", None)
            self.scales.append(float(scaler.get_scale()) if scaler is not None else float("nan"))

    pl.seed_everything(0)
    guard, clip, norms = NaNGuard(policy="skip_step"), GradientClipping(mode="norm", max_norm=0.5), Norms()
    model = Net(nan_at_step=3)
    trainer = _trainer(pl, root, precision="16-mixed", callbacks=[guard, clip, norms])
    trainer.fit(model, _loader())
    assert trainer.precision.scaler is not None, "16-mixed did not use a GradScaler"
    assert guard.bad_steps == [3], f"NaNGuard bad_steps {guard.bad_steps} != [3]"
    assert all(n <= 0.5 * (1 + 1e-3) for n in norms.norms), f"clipped norms above max_norm: {max(norms.norms)}"
    assert all(torch.isfinite(p).all() for p in model.parameters()), "non-finite weights"
    assert norms.scales[4] < norms.scales[3], f"GradScaler did not back off after the NaN step: {norms.scales[:6]}"
    return f"bad_steps={guard.bad_steps}, max clipped norm {max(norms.norms):.4f}, scale {norms.scales[3]:g}->" \
           f"{norms.scales[4]:g}"


def check_ema_cuda_and_offload(root: Path) -> str:
    pl, Net = _lightning()
    from lit_tricks.callbacks import EMAWeights

    emas = {}
    for device in (None, "cpu"):
        pl.seed_everything(0)
        ema = EMAWeights(decay=0.9, device=device, apply_at_end=False, save_ema_checkpoint=False)
        _trainer(pl, root / str(device), callbacks=[ema], deterministic=True).fit(Net(), _loader())
        emas[device] = ema.ema_state_dict
    on_gpu, on_cpu = emas[None], emas["cpu"]
    assert all(v.is_cuda for v in on_gpu.values()), "EMA not on the GPU"
    assert all(v.device.type == "cpu" for v in on_cpu.values()), "offloaded EMA not on the CPU"
    worst = max(float((on_gpu[k].float().cpu() - on_cpu[k].float()).abs().max()) for k in on_gpu)
    assert worst < 1e-5, f"CUDA and offloaded EMA differ by {worst}"
    return f"{len(on_gpu)} tensors, max |cuda - offload| {worst:.2e}"


def check_ensemble_vmap(root: Path) -> str:
    pl, Net = _lightning()
    from lit_tricks.callbacks import CheckpointEnsemble

    pl.seed_everything(0)
    ens = CheckpointEnsemble(every_n_epochs=1, use_vmap=True)
    model = Net()
    _trainer(pl, root, max_epochs=3, callbacks=[ens]).fit(model, _loader())
    x = next(iter(_loader(64, seed=1)))[0].cuda()
    model = model.cuda().eval()
    fast = ens.predict_proba(x, model)
    ens.use_vmap = False
    slow = ens.predict_proba(x, model)
    assert len(ens.members) == 3 and fast.is_cuda
    worst = float((fast - slow).abs().max())
    assert worst < 1e-5, f"vmap and loop ensembles differ by {worst}"
    return f"{len(ens.members)} members, max |vmap - loop| {worst:.2e}"


def check_exact_resume_cuda_rng(root: Path) -> str:
    pl, Net = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_tricks.callbacks import RNGState

    def run(where: Path, max_epochs: int, ckpt: str | None = None) -> dict[str, torch.Tensor]:
        pl.seed_everything(0)
        model = Net()
        cbs: list[Any] = [RNGState(include_cuda=True), ModelCheckpoint(dirpath=where, save_last=True)]
        _trainer(pl, where, max_epochs=max_epochs, callbacks=cbs, enable_checkpointing=True,
                 deterministic=True).fit(model, _loader(), ckpt_path=ckpt)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    reference = run(root / "ref", 4)
    run(root / "run", 2)
    resumed = run(root / "run", 4, ckpt=str(root / "run" / "last.ckpt"))
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not different, f"resumed != uninterrupted in {different}"
    return f"{len(reference)} tensors bit-identical after 2+2 epochs (dropout on CUDA)"


def check_fsdp_ema(root: Path) -> str:
    pl, Net = _lightning()
    from lit_tricks.callbacks import EMAWeights

    pl.seed_everything(0)
    try:
        _trainer(pl, root, strategy="fsdp", max_epochs=1, callbacks=[EMAWeights(decay=0.9)]).fit(Net(), _loader())
    except Exception as err:  # a refusal: must be one readable line naming the callback
        message = str(err).strip()
        assert "\n" not in message and "EMA" in message, f"refusal is not one line naming EMAWeights: {message!r}"
        return f"refused: {type(err).__name__}: {message}"
    raise AssertionError("EMAWeights under FSDP trained on without refusing (the EMA shards are not gathered)")


def check_fsdp2_callbacks(root: Path) -> str:
    pl, Net = _lightning()
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from lit_tricks.callbacks import EMAWeights, GradientClipping
    from lit_tricks.functional.sharded import full_state_dict, is_dtensor, local
    from lit_tricks.modules.sharding import shard_model
    from lit_tricks.trainers.strategies import model_parallel_strategy

    class Sharded(Net):  # type: ignore[misc,valid-type]
        def configure_model(self) -> None:
            shard_model(self, self.net, self.device_mesh["data_parallel"], "blocks")

    class Record(Callback):  # after the EMA update: the weights it averaged; before the step: the clipped norm
        def __init__(self) -> None:
            self.weights: list[dict[str, torch.Tensor]] = []
            self.norms: list[float] = []

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.weights.append(full_state_dict(pl_module))

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            grads = [p.grad.full_tensor().float() for p in pl_module.parameters() if p.grad is not None]
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self.weights.append(full_state_dict(pl_module))

    details = []
    for distributed in (True, False):
        pl.seed_everything(0)
        ema, clip, rec = EMAWeights(decay=0.9, apply_at_end=False), GradientClipping("norm", max_norm=0.5), Record()
        where = root / f"distributed_{distributed}"
        ckpt = ModelCheckpoint(dirpath=where, save_last=True)
        trainer = _trainer(pl, where, strategy=model_parallel_strategy(timeout_s=120, process_group_backend="nccl",
                                                                        save_distributed_checkpoint=distributed),
                           precision="bf16-true", max_epochs=1, callbacks=[clip, rec, ema, ckpt],
                           enable_checkpointing=True)
        model = Sharded()
        trainer.fit(model, _loader())
        shadows = ema.state.ema_params
        assert all(is_dtensor(e) and e.dtype == torch.float32 and local(e).is_cuda for e in shadows), "EMA shards"
        expected = {k: v.double() for k, v in rec.weights[0].items()}
        for w in rec.weights[1:]:
            expected = {k: 0.9 * v + 0.1 * w[k].double() for k, v in expected.items()}
        got = {k: v.full_tensor().double().cpu() for k, v in ema.ema_state_dict.items() if is_dtensor(v)}
        worst = max(float((got[k] - expected[k]).abs().max()) for k in got)
        assert worst < 1e-4, f"sharded EMA differs from the fp32 recurrence by {worst}"
        assert max(rec.norms) <= 0.5 * (1 + 1e-2), f"clipped global norms above max_norm: {max(rec.norms)}"
        twin = where / "ema-last.ckpt"
        assert (twin / "meta.pt").is_file() if distributed else twin.is_file(), f"no twin at {twin}"
        details.append(f"{'dir' if distributed else 'file'}: |ema - recurrence| {worst:.1e}")
    return "; ".join(details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", choices=[[], *CHECKS], help="subset to run (default all)")
    args = parser.parse_args(argv)
    names = args.checks or list(CHECKS)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device; skipped {len(names)} checks ({', '.join(names)})")
        return 0
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in names:
            fn: Callable[[Path], str] = globals()[f"check_{name}"]
            start = time.perf_counter()
            try:
                detail = fn(Path(tmp) / name)
                print(f"PASS {name} ({time.perf_counter() - start:.1f}s): {detail}")
            except Exception as err:
                failed.append(name)
                print(f"FAIL {name} ({time.perf_counter() - start:.1f}s): {type(err).__name__}: {err}")
                traceback.print_exc(limit=3)
            sys.stdout.flush()
    print(f"gpu-check: {len(names) - len(failed)}/{len(names)} passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
