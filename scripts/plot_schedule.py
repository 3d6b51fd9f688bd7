"""Render configured LR schedules (conf/scheduler/<name>.yaml) to a PNG of lr vs optimizer step.

    python scripts/plot_schedule.py warmup_cosine sgdr onecycle --total-steps 600 --steps-per-epoch 20 \
        --set warmup_epochs=3 --out docs/img/schedules.png

Each name is one panel; ``--set key=value`` (OmegaConf dotlist) applies to every named config that has the key.
Reduce-on-plateau is driven by a synthetic metric that stops improving after a third of the run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_tricks.config_bases import load_preset

CONF = Path(__file__).resolve().parents[1] / "conf" / "scheduler"


def load_schedule(name: str, overrides: Sequence[str] = ()) -> Any:
    """The scheduler partial of ``conf/scheduler/<name>.yaml`` (None for ``none``), with ``key=value`` overrides."""
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in CONF.glob("*.yaml"))
        raise SystemExit(f"unknown schedule {name!r}; valid: {valid}")
    cfg = load_preset("scheduler", name).get("scheduler") or OmegaConf.create({})
    assert isinstance(cfg, DictConfig)
    for item in overrides:
        key = item.split("=", 1)[0]
        if OmegaConf.select(cfg, key.split(".")[0]) is not None or key.split(".")[0] in cfg:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    return instantiate(cfg) if "_target_" in cfg else None


def schedule_curve(partial: Any, total_steps: int, steps_per_epoch: int, lr: float) -> list[float]:
    """The lr at every optimizer step of a run of ``total_steps`` steps (plateau: a metric flat after 1/3)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    if partial is None:
        return [lr] * total_steps
    sched = partial(opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    lrs = []
    for step in range(total_steps):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        if not plateau:
            sched.step()
        elif (step + 1) % steps_per_epoch == 0:
            epoch = (step + 1) // steps_per_epoch
            sched.step(1.0 / min(epoch, max(1, total_steps // steps_per_epoch // 3)))
    return lrs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="conf/scheduler config names")
    parser.add_argument("--total-steps", type=int, default=600)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1, help="the optimizer's lr (the schedules' base lr)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", type=Path, default=Path("schedule.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(args.names)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, args.names):
        lrs = schedule_curve(load_schedule(name, args.set), args.total_steps, args.steps_per_epoch, args.lr)
        ax.plot(range(len(lrs)), lrs, lw=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("lr", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
