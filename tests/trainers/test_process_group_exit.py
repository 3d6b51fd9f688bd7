"""lit_tricks' strategies destroy the process group at interpreter exit, gloo included.

Lightning registers that for NCCL only; a gloo group left to interpreter finalization can abort a rank after its fit
("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489): a spawned rank of
tests/callbacks/test_ema_ddp.py died so once in CI. The oracle is Lightning's own DDPStrategy, which leaves it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, sys
    import torch, torch.distributed as dist
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.strategies import DDPStrategy
    from lit_tricks.trainers.strategies import ddp_strategy, model_parallel_strategy


    class Sharded(BoringModel):
        def configure_model(self):
            from torch.distributed.fsdp import fully_shard
            fully_shard(self.layer, mesh=self.device_mesh)

    # registered first, so it runs last (atexit is last-in first-out): what is left once every handler ran
    atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
    which = sys.argv[1]
    if len(sys.argv) > 2:  # the user's own group, created before the Trainer, and the user's own handler for it
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)

        def users_handler():
            print("user's group at the user's handler:", dist.is_initialized(), flush=True)
            dist.destroy_process_group()
        atexit.register(users_handler)
    strategy = {"lightning": lambda: DDPStrategy(process_group_backend="gloo"),
                "ddp": lambda: ddp_strategy(process_group_backend="gloo", timeout_s=60),
                "fsdp2": lambda: model_parallel_strategy(process_group_backend="gloo", timeout_s=60)}[which]()
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=strategy, max_steps=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0)
    trainer.fit(Sharded() if which == "fsdp2" else BoringModel())
    trainer.fit(Sharded() if which == "fsdp2" else BoringModel())  # a second fit in the same process
    print("backend:", dist.get_backend(), flush=True)
""")


def _left_at_exit(tmp_path: Path, which: str, *user_group: str) -> str:
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), which, *user_group], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "backend: gloo" in proc.stdout, proc.stdout
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lit_tricks_strategies_destroy_the_gloo_group_at_exit_lightnings_does_not(tmp_path: Path) -> None:
    assert "initialized at exit: True" in _left_at_exit(tmp_path, "lightning")  # the oracle: Lightning leaves it
    for which in ("ddp", "fsdp2"):
        assert "initialized at exit: False" in _left_at_exit(tmp_path, which), which


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_group_the_user_created_before_the_trainer_is_left_to_the_user(tmp_path: Path) -> None:
    """Lightning registers its at-exit destroy only for a group it created itself (``_init_dist_connection`` returns
    early when one exists); a group the user made is the user's: still there when the user's own handler runs."""
    out = _left_at_exit(tmp_path, "ddp", "user")
    assert "user's group at the user's handler: True" in out, out
