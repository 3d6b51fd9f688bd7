"""What the paper recipe's step pays over the bare LightningModule, piece by piece (issue 28, docs/mnist1d.md).

Each variant is ``experiment=mnist1d_baseline`` with one piece taken away, timed by :func:`step_cost.per_step_costs`
in the same process and rounds as the recipe and the bare loop (1 torch thread):

- ``no_batch_copy``: the TensorLoader yields its images as views of its chunk instead of copies (the targets' small
  clone stays; a kept batch then holds the chunk);
- ``no_model_summary``: ``trainer.enable_model_summary=false`` (Lightning's ModelSummary callback gets every hook).

And the CPU of one Lightning ``self.log`` call of a tensor, in a bare Trainer (the fastest 90% of 2000 calls): the
recipe logs four values an epoch (at its last batch, where ``log_every_n_steps=40`` logs too, and at its end), which
no option of the recipe removes.

    nice -n 10 python benchmarks/step_pieces.py --repeats 6
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.step_cost import _bare_lightning, _dataset, _recipe, per_step_costs  # noqa: E402


@contextlib.contextmanager
def _views() -> Iterator[None]:
    """The TensorLoader's batches as views of its chunk (no copy)."""
    from lit_tricks.data import tensor_loader

    finish = tensor_loader.TensorLoader.finish

    def no_copy(self: Any, images: torch.Tensor, targets: torch.Tensor, epoch: int, start: int,
                copy: bool = False) -> list[torch.Tensor]:
        return finish(self, images, targets, epoch, start, copy=False)

    tensor_loader.TensorLoader.finish = no_copy  # type: ignore[method-assign]
    try:
        yield
    finally:
        tensor_loader.TensorLoader.finish = finish  # type: ignore[method-assign]


def _within(run: Callable[[int], None], context: Callable[[], contextlib.AbstractContextManager[None]]) -> Any:
    def timed(steps: int) -> None:
        with context():
            run(steps)

    return timed


def self_log_cost(calls: int = 2000) -> float:
    """CPU us of one ``self.log(name, tensor, on_step=True)`` in a bare Trainer (fastest 90% of ``calls``)."""
    import lightning.pytorch as pl
    from torch import nn

    spent: list[float] = []

    class Logs(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch).sum()
            start = time.process_time()
            self.log("loss", loss.detach(), on_step=True, on_epoch=False, batch_size=len(batch))
            spent.append(time.process_time() - start)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), 0.1)

    class Batches:
        def __iter__(self) -> Iterator[torch.Tensor]:
            return iter([torch.randn(100, 4)] * 50)

        def __len__(self) -> int:
            return 50

    trainer = pl.Trainer(max_steps=calls, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Logs(), train_dataloaders=Batches())
    fastest = sorted(spent)[: int(0.9 * len(spent))]
    return 1e6 * sum(fastest) / len(fastest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "lit_tricks"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    from lit_tricks.compat.nvml import drop_futile_nvml_check

    drop_futile_nvml_check()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, out = Path(tmp) / "data", Path(tmp) / "runs"
        data = _dataset(data_dir)
        baseline = _recipe("mnist1d_baseline", data_dir, out)
        runners = {
            "bare": _bare_lightning(data),
            "baseline": baseline,
            "no_batch_copy": _within(baseline, _views),
            "no_model_summary": _recipe("mnist1d_baseline", data_dir, out, ("trainer.enable_model_summary=false",)),
        }
        costs = per_step_costs(runners, 200, 1000, args.repeats)
    print(f"\n{args.repeats} rounds, CPU ms per step (median) and the median per-round ratio:")
    for name, values in costs.items():
        to_bare = statistics.median(a / b for a, b in zip(values, costs["bare"]))
        to_base = statistics.median(a / b for a, b in zip(values, costs["baseline"]))
        print(f"  {name:18s} {statistics.median(values):.3f} ms   / bare {to_bare:.3f}   / baseline {to_base:.3f}")
    print(f"one self.log of a tensor: {self_log_cost():.0f} CPU us (fastest 90% of 2000 calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
