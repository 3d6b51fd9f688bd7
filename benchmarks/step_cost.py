"""Per-step cost of the MNIST-1D recipes against their floors, and the start-up before the first step.

Contenders, each timed in this process (1 torch thread, the same ``nice`` level for all, interleaved, repeated):

- ``plain``: the paper's loop in plain torch (``benchmarks/mnist1d_reference.py``'s ``train_one``: the tensors sliced
  per batch, Adam, no Lightning);
- ``lightning``: a bare ``LightningModule`` (the recipe's model, lit_tricks' ``ConvNet1d``; Adam, cross-entropy, no
  logging) over the same fixed-order in-memory batches (a list of tensors), a Trainer with the recipe's step-relevant
  flags (``deterministic=True``, 32-bit) and everything else off: the framework's floor;
- ``lightning_convbase``: the same around the reference's ``ConvBase`` (the same network in four modules; runs before
  2026-12-07 had only this one as ``lightning``);
- ``baseline``: ``lit_tricks.run.train`` of ``experiment=mnist1d_baseline`` (the paper's recipe as users run it);
- ``tricks``: ``lit_tricks.run.train`` of ``experiment=mnist1d_tricks``;
- ``plain_tricks``: the tricks recipe's step in plain torch (BatchNorm, AdamW, OneCycleLR, batch
  augmentation, label smoothing, clipping, EMA): what the tricks cost without any framework;
- ``tricks_no_bn``, ``plain_tricks_no_bn`` (only when named in ``--only``): both without the inserted BatchNorm, what
  it costs; ``tricks_bn_first`` (likewise): the tricks recipe with one BatchNorm, after the first conv.

Per-step cost = CPU s between the end of optimizer step ``short`` and the end of step ``long`` of one ``long``-step
run, / (long - short) (a global ``torch.optim`` step post-hook reads ``time.process_time``; every contender steps one
optimizer once per step): the steady state, set-up, first steps and test pass outside the window. (Differencing a
``long``- and a ``short``-step run, as earlier runs did, also cancels them, but adds the run-to-run variance of the
set-up: the CPU before the first step of the same recipe in one process varied 0.17-0.52 s, 0.4 ms a step over 800
steps.) CPU time (``time.process_time``), not wall time: the machine is shared, and a process that waits for a core
is not charged. The median over ``--repeats`` rounds is reported, each round running every contender once in a
rotated order.

Start-up: CPU s of a whole ``scripts/train.py experiment=mnist1d_baseline trainer.max_steps=1 logger=none`` process
(Python start, imports, Hydra composition, data from the cache, Trainer set-up, one step, the test pass), of a process
that only composes ``experiment=mnist1d_tricks`` (what every Hydra app pays for lit_tricks' search-path plugin), of
``scripts/train.py --help`` (Hydra composes once per config group to list the options), and
of ``python -c "import torch"`` and ``python -c "import lightning.pytorch"`` (imports a training run cannot avoid),
and a plain-torch process that takes one Adam step (the floor of any training process: the first optimizer step
imports ``torch._dynamo``, ~1 CPU s, which Lightning imports as well).
With ``--startup-ref DIR`` (another checkout, e.g. ``git archive main | tar -x -C DIR``) the same run and compose
processes of that checkout are timed in the same rounds, interleaved with this one's: the before/after of start-up.

    nice -n 10 python benchmarks/step_cost.py --repeats 5 --table docs/results/step_cost_mnist1d.md
    nice -n 10 python benchmarks/step_cost.py --startup-only --startup-ref /tmp/main --repeats 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import machine_info, md_table  # noqa: E402
from benchmarks.mnist1d_reference import ConvBase, train_one  # noqa: E402

__all__ = ["CONTENDERS", "bench_step_cost", "bench_step_cost_section", "measure_startup", "per_step_costs"]

Runner = Callable[[int], None]


def _dataset(data_dir: Path) -> dict[str, Any]:
    """The paper's dataset as numpy arrays, from the DataModule's cache (generated there once)."""
    from lit_tricks.data import MNIST1DDataModule

    arrays = MNIST1DDataModule(data_dir=str(data_dir)).arrays()
    return {k: v.numpy() for k, v in arrays.items()}


def _plain(data: dict[str, Any]) -> Runner:
    return lambda steps: (train_one(data, seed=0, steps=steps), None)[1]


class _Batches:
    """One loader over a list of batches (a plain list would be read as a list of loaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _bare_lightning(data: dict[str, Any], convbase: bool = False) -> Runner:
    """A bare LightningModule around lit_tricks' ``ConvNet1d`` (the model ``experiment=mnist1d_baseline`` trains:
    the same nn.Module on both sides, so the ratio is the framework's), or with ``convbase`` the reference's
    ``ConvBase`` (the same network in four modules instead of nine: fewer module calls)."""
    import lightning.pytorch as pl
    from torch import nn

    from lit_tricks.models.cnn1d import ConvNet1d

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = ConvBase() if convbase else ConvNet1d()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), 1e-2)

    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.long)
    batches = _Batches([(x[i:i + 100], y[i:i + 100]) for i in range(0, len(x), 100)])

    def run(steps: int) -> None:
        torch.manual_seed(0)
        trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, deterministic=True,
                             precision="32-true", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(Bare(), train_dataloaders=batches)

    return run


def _plain_tricks(data: dict[str, Any], norm: bool = True) -> Runner:
    """The tricks recipe's step in plain torch (its floor): the paper's convs with BatchNorm before each ReLU, AdamW
    (foreach, lr 3e-2, decoupled decay 4e-3 on conv/linear weights), torch's OneCycleLR, a circular shift of up to 4
    samples, a shear ramp of up to 3.5 and noise 0.08 drawn for the whole batch, label smoothing 0.07, clipping at
    norm 1, an EMA of the weights (decay 0.999, one foreach lerp per step): ``experiment=mnist1d_tricks``'s step;
    ``norm=False``: without the BatchNorm layers."""
    from torch import nn

    x_all, y_all = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.long)

    def block(c_in: int, k: int) -> list[nn.Module]:
        return [nn.Conv1d(c_in, 25, k, stride=2, padding=1), *([nn.BatchNorm1d(25)] if norm else []), nn.ReLU()]

    def run(steps: int) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(*block(1, 5), *block(25, 3), *block(25, 3), nn.Flatten(), nn.Linear(125, 10))
        decayed = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
        rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
        optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 4e-3}, {"params": rest, "weight_decay": 0}],
                                      lr=3e-2, foreach=True)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-2, total_steps=steps)
        params = list(model.parameters())
        ema = [p.detach().clone() for p in params]
        gen = torch.Generator().manual_seed(0)
        order = torch.arange(len(x_all))
        ramp = torch.linspace(-0.5, 0.5, 40)
        for step in range(steps):
            start = step * 100 % len(x_all)
            if start == 0:
                order = torch.randperm(len(x_all), generator=gen)
            idx = order[start:start + 100]
            x = x_all[idx]
            shift = torch.randint(-4, 5, (len(idx),), generator=gen)
            shear = 3.5 * (2 * torch.rand(len(idx), 1, generator=gen) - 1)
            x = x.gather(1, (torch.arange(40) - shift[:, None]) % 40) + shear * ramp
            x = x + 0.08 * torch.randn(x.shape, generator=gen)
            loss = nn.functional.cross_entropy(model(x[:, None, :]), y_all[idx], label_smoothing=0.07)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - 0.999)

    return run


def _recipe(experiment: str, data_dir: Path, out: Path, extra: tuple[str, ...] = ()) -> Runner:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lit_tricks.run import train

    def run(steps: int) -> None:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", "seed=0", f"trainer.max_steps={steps}",
                                              "logger=none", f"paths.data_dir={data_dir}", f"paths.output_dir={out}",
                                              f"paths.log_dir={out}", *extra])
        GlobalHydra.instance().clear()
        train(cfg)

    return run


#: name -> what it is (the table's first column).
CONTENDERS = {
    "plain": "plain torch loop (tensors sliced per batch)",
    "lightning": "bare LightningModule over in-memory batches (lit_tricks' ConvNet1d, the recipe's model)",
    "lightning_convbase": "bare LightningModule over in-memory batches (the reference's ConvBase)",
    "baseline": "lit_tricks `experiment=mnist1d_baseline`",
    "tricks": "lit_tricks `experiment=mnist1d_tricks`",
    "plain_tricks": "plain torch loop of the tricks recipe's step",
    # the two below only when named in --only: what the inserted BatchNorm costs (docs/mnist1d.md, per-step cost)
    "tricks_no_bn": "lit_tricks `experiment=mnist1d_tricks module.norm=keep` (no BatchNorm)",
    "plain_tricks_no_bn": "plain torch loop of the tricks recipe's step without BatchNorm",
    # only when named in --only: the recipe with one BatchNorm, after the first conv (tried; docs/mnist1d.md)
    "tricks_bn_first": "lit_tricks `experiment=mnist1d_tricks module.norm={kind:batch,layers:[features.0]}`",
}
#: what a run without ``--only`` times (and ``benchmarks/run_all.py``'s section)
DEFAULT_CONTENDERS = ("plain", "lightning", "lightning_convbase", "baseline", "tricks", "plain_tricks")


def per_step_costs(runners: dict[str, Runner], short: int, long: int, repeats: int) -> dict[str, list[float]]:
    """CPU ms per step of each runner, one estimate per round: a ``long``-step run, the CPU between the end of its
    optimizer step ``short`` and of step ``long`` over ``long - short``. Every round runs every runner once, in a
    rotated order, so a round's estimates share the machine's load of those minutes."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    if not 1 <= short < long:
        raise ValueError(f"step_cost: short={short}, long={long}: the window is steps 1 <= short < long")
    ends: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *_: ends.append(time.process_time()))
    names = list(runners)
    out: dict[str, list[float]] = {name: [] for name in names}
    try:
        for name in names:  # warm-up: lazy imports and first-call caches are start-up, not steps
            runners[name](short)
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                ends.clear()
                runners[name](long)
                if len(ends) != long:
                    raise RuntimeError(f"{name}: {len(ends)} optimizer steps in a {long}-step run (one per step "
                                       "expected)")
                out[name].append(1e3 * (ends[long - 1] - ends[short - 1]) / (long - short))
                print(f"[step_cost] round {r} {name}: {out[name][-1]:.3f} ms/step", flush=True)
    finally:
        handle.remove()
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_PROCESS = {"run": "`scripts/train.py experiment=mnist1d_baseline trainer.max_steps=1` (1 step, the test pass)",
            "compose": "composing `experiment=mnist1d_tricks` in a Hydra app (no training)",
            "help": "`scripts/train.py --help` (Hydra lists every config group and its options)"}


def _startup_cmds(root: Path, data_dir: Path, out: Path) -> dict[str, list[str]]:
    """The 1-step run and the compose-only process of the checkout at ``root`` (its own lit_tricks and conf/)."""
    return {
        "run": [sys.executable, str(root / "scripts" / "train.py"), "experiment=mnist1d_baseline",
                "trainer.max_steps=1", "logger=none", f"paths.data_dir={data_dir}",
                f"hydra.run.dir={out / 'startup'}"],
        "compose": [sys.executable, "-c", "from hydra import compose, initialize_config_dir\n"
                    f"with initialize_config_dir(config_dir={str(root / 'conf')!r}, version_base='1.3'):\n"
                    "    compose('train', overrides=['experiment=mnist1d_tricks'])"],
        "help": [sys.executable, str(root / "scripts" / "train.py"), "--help"],
    }


#: The floor of any training process: torch imported, one Adam step (whose first call imports torch._dynamo).
_ONE_STEP = ("import torch\nm = torch.nn.Linear(40, 10)\nopt = torch.optim.Adam(m.parameters())\n"
             "m(torch.randn(100, 40)).sum().backward()\nopt.step()")


def measure_startup(data_dir: Path, out: Path, repeats: int, ref: Path | None = None) -> dict[str, list[float]]:
    """CPU s of whole processes: the 1-step run, composing alone, and the imports of torch and of Lightning alone;
    with ``ref`` also the run and compose processes of that checkout (names suffixed `` (ref)``), every round
    running each process once in the same order. A process runs in its checkout's root, so ``import lit_tricks``
    finds that checkout's package before an installed one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    cmds = {name: (cmd, ROOT) for name, cmd in _startup_cmds(ROOT, data_dir, out).items()}
    if ref is not None:
        cmds.update({f"{name} (ref)": (cmd, ref) for name, cmd in _startup_cmds(ref, data_dir, out).items()})
    cmds["import torch"] = ([sys.executable, "-c", "import torch"], ROOT)
    cmds["import lightning.pytorch"] = ([sys.executable, "-c", "import lightning.pytorch"], ROOT)
    cmds["plain torch, one Adam step"] = ([sys.executable, "-c", _ONE_STEP], ROOT)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for name in ("compose", "compose (ref)"):  # fills the base-config cache once (a checkout that has one)
        if name in cmds:
            subprocess.run(cmds[name][0], capture_output=True, cwd=cmds[name][1], env=env)
    for _ in range(repeats):
        for name, (cmd, cwd) in cmds.items():
            before = _children_cpu()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
            times[name].append(_children_cpu() - before)
    return times


def _step_lines(costs: dict[str, list[float]], short: int, long: int, repeats: int) -> list[str]:
    med = {name: statistics.median(v) for name, v in costs.items()}
    rows = [[CONTENDERS[n], f"{med[n]:.3f}", ", ".join(f"{v:.2f}" for v in costs[n])] for n in med]
    lines = [
        f"Per-step CPU ms: CPU s from the end of optimizer step {short} to the end of step {long} of a {long}-step "
        f"run, / {long - short} (the steady state; set-up and test pass outside), one estimate per round, {repeats} "
        "rounds (every contender once per round, rotated), 1 torch thread. A ratio is the median over the rounds "
        "of that round's ratio (both sides measured minutes apart at most).",
        "",
        md_table(["contender", "ms / step (median)", "rounds"], rows),
        "",
    ]

    def ratio(a: str, b: str, target: float | None, what: str) -> None:
        if a in costs and b in costs:
            per_round = [x / y for x, y in zip(costs[a], costs[b])]
            value = statistics.median(per_round)
            verdict = f" (target <= {target}x: {'met' if value <= target else 'not met'})" if target else ""
            lines.append(f"- {what}: **{value:.2f}x**{verdict}; rounds: {', '.join(f'{v:.2f}' for v in per_round)}")

    ratio("baseline", "lightning", 1.1, "paper recipe (lit_tricks) / bare LightningModule of the same model")
    ratio("baseline", "lightning_convbase", None, "paper recipe (lit_tricks) / bare LightningModule of ConvBase")
    ratio("lightning", "lightning_convbase", None, "bare LightningModule: ConvNet1d / ConvBase (the model's modules)")
    ratio("baseline", "plain", 1.6, "paper recipe (lit_tricks) / plain torch")
    ratio("tricks", "baseline", 1.5, "tricks recipe / paper recipe (both lit_tricks)")
    ratio("plain_tricks", "plain", None, "the same two steps in plain torch (what the tricks cost without a framework)")
    ratio("tricks", "plain_tricks", None, "tricks recipe (lit_tricks) / its plain-torch loop")
    ratio("lightning", "plain", None, "bare LightningModule / plain torch (the framework's floor)")
    ratio("tricks_no_bn", "baseline", None, "tricks recipe without BatchNorm / paper recipe (both lit_tricks)")
    ratio("plain_tricks_no_bn", "plain", None, "the same two steps in plain torch, the tricks without BatchNorm")
    ratio("plain_tricks", "plain_tricks_no_bn", None, "plain tricks loop with / without BatchNorm")
    ratio("tricks_bn_first", "baseline", None, "tricks recipe, BatchNorm after the first conv only / paper recipe")
    return lines


def _startup_lines(startup: dict[str, list[float]], repeats: int) -> list[str]:
    med = {name: statistics.median(v) for name, v in startup.items()}

    def label(name: str) -> str:
        base, ref = name.removesuffix(" (ref)"), name.endswith(" (ref)")
        return _PROCESS.get(base, f"`{base}`") + (" — reference checkout" if ref else "")

    lines = [f"Start-up: CPU s (user + sys) of whole processes, {repeats} rounds, every process once per round; the "
             "reference checkout (`--startup-ref` / `BENCH_STEP_COST_REF`), when given, runs its own lit_tricks and "
             "conf/ in the same environment.", "",
             md_table(["process", "CPU s (median)", "runs"],
                      [[label(n), f"{med[n]:.2f}", ", ".join(f"{v:.2f}" for v in startup[n])] for n in med]),
             ""]
    imports = startup["import lightning.pytorch"]
    lines.append(f"- start-up beyond `import lightning.pytorch`: {med['run'] - med['import lightning.pytorch']:.2f} "
                 "CPU s")
    floor = med["plain torch, one Adam step"]
    lines.append(f"- a plain-torch process taking one Adam step (no Lightning, no lit_tricks) / the 1-step run: "
                 f"**{floor / med['run']:.2f}**: halving the run's start-up would leave "
                 f"{med['run'] / 2 - floor:+.2f} CPU s beyond that floor for Lightning, Hydra, lit_tricks and the data")
    if "run (ref)" in startup:
        for name, what in (("run", "1-step run, whole process"), ("compose", "composing alone"), ("help", "`--help`")):
            per_round = [a / b for a, b in zip(startup[name], startup[f"{name} (ref)"])]
            lines.append(f"- {what}, this checkout / reference: **{statistics.median(per_round):.2f}x**; rounds: "
                         f"{', '.join(f'{v:.2f}' for v in per_round)}")
        beyond = [(a - i) / (b - i) for a, b, i in zip(startup["run"], startup["run (ref)"], imports)]
        lines.append(f"- 1-step run beyond `import lightning.pytorch` (same round's import subtracted), this checkout "
                     f"/ reference: **{statistics.median(beyond):.2f}x** (target <= 0.5x: "
                     f"{'met' if statistics.median(beyond) <= 0.5 else 'not met'}); rounds: "
                     f"{', '.join(f'{v:.2f}' for v in beyond)}")
    return lines


def bench_step_cost(short: int, long: int, repeats: int, only: list[str] | None = None, ref: Path | None = None,
                    startup_only: bool = False) -> str:
    """The markdown section: per-step CPU ms, the ratios the issue targets, the start-up (not with ``only``; with
    ``ref``, against that checkout's)."""
    torch.set_num_threads(1)
    import lightning.pytorch  # noqa: F401  (sets PYTORCH_NVML_BASED_CUDA_CHECK, which the next line may drop)

    from lit_tricks.compat.nvml import drop_futile_nvml_check

    # Every contender without it, as lit_tricks' recipes run (TrickModule drops it at fit start; a bare Lightning
    # process on a CPU-only host pays one failed dlopen per Adam step more, ~40 us, and plain torch never sets it).
    drop_futile_nvml_check()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, out = Path(tmp) / "data", Path(tmp) / "runs"
        data = _dataset(data_dir)
        if not startup_only:
            makers: dict[str, Callable[[], Runner]] = {
                "plain": lambda: _plain(data), "lightning": lambda: _bare_lightning(data),
                "lightning_convbase": lambda: _bare_lightning(data, convbase=True),
                "baseline": lambda: _recipe("mnist1d_baseline", data_dir, out),
                "tricks": lambda: _recipe("mnist1d_tricks", data_dir, out),
                "plain_tricks": lambda: _plain_tricks(data),
                "tricks_no_bn": lambda: _recipe("mnist1d_tricks", data_dir, out, ("module.norm=keep",)),
                "plain_tricks_no_bn": lambda: _plain_tricks(data, norm=False),
                "tricks_bn_first": lambda: _recipe("mnist1d_tricks", data_dir, out,
                                                   ("module.norm={kind:batch,layers:[features.0]}",)),
            }
            runners = {name: makers[name]() for name in (only or DEFAULT_CONTENDERS)}
            lines += _step_lines(per_step_costs(runners, short, long, repeats), short, long, repeats)
        if startup_only or not only:
            lines += ([""] if lines else []) + _startup_lines(measure_startup(data_dir, out, repeats, ref), repeats)
    info = machine_info()
    load = info["load average (1, 5, 15 min)"]
    lines += ["", f"Machine: {info['cpu']}, {info['cpu cores']} cores, load average {load} (1, 5, 15 min) at the end; "
              f"torch {info['torch']}, lightning {info['lightning']}."]
    return "\n".join(lines)


def bench_step_cost_section(quick: bool) -> tuple[str, str]:
    """``benchmarks/run_all.py``'s section (sizes from ``BENCH_STEP_COST_REPEATS``, default 5; the start-up also of
    the checkout at ``BENCH_STEP_COST_REF`` when set; skipped by --quick)."""
    title = "MNIST-1D per-step cost and start-up (lit_tricks vs Lightning vs plain torch)"
    if quick:
        return title, "skipped in --quick (trains the recipes for minutes; run `--only step_cost`)."
    ref = os.environ.get("BENCH_STEP_COST_REF")
    return title, bench_step_cost(200, 1000, int(os.environ.get("BENCH_STEP_COST_REPEATS", 5)),
                                  ref=Path(ref) if ref else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(CONTENDERS), help="time only these contenders")
    parser.add_argument("--table", type=Path, help="also write the section to this markdown file")
    parser.add_argument("--startup-ref", type=Path, help="another checkout whose start-up is timed alongside")
    parser.add_argument("--startup-only", action="store_true", help="time the start-up only")
    args = parser.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "lit_tricks"):
        logging.getLogger(name).setLevel(logging.ERROR)
    text = bench_step_cost(args.short, args.long, args.repeats, args.only, args.startup_ref, args.startup_only)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
