"""Benchmarks of lit_tricks' callbacks against their peers, measured as ratios within one run; writes RESULTS.md.

    python benchmarks/run_all.py            # full run (minutes), writes benchmarks/RESULTS.md
    python benchmarks/run_all.py --quick    # seconds, tiny sizes (the smoke test runs this)

Sections: EMA (ours vs Lightning's EMAWeightAveraging, AveragedModel + get_ema_multi_avg_fn, timm ModelEmaV3, and the
bound of one ``torch._foreach_lerp_``), gradient clipping (vs ``torch.nn.utils.clip_grad_norm_(foreach=True)``),
ensemble prediction (member loop vs ``torch.func.vmap``), the all-four overhead on resnet18 32x32, TPE sweeps with and
without pruning (``--only sweep``), MNIST-1D time to 94% (the paper's recipe vs ``experiment=mnist1d_fast``; see
benchmarks/mnist1d.py) and the MNIST-1D recipes' per-step cost against a bare LightningModule and plain torch, with
the start-up (``--only step_cost``; see benchmarks/step_cost.py).
A peer or one of our callbacks that cannot be imported is skipped with a note instead of failing the run.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    HookTimer,
    KernelBound,
    StepTimer,
    TinyLit,
    bench_trainer,
    machine_info,
    md_table,
    median_time,
    random_loader,
)
from benchmarks.mnist1d import bench_mnist1d  # noqa: E402
from benchmarks.step_cost import bench_step_cost_section  # noqa: E402

__all__ = ["bench_clip", "bench_ema", "bench_ensemble", "bench_overhead", "bench_sweep", "main"]

Section = tuple[str, str]  # (title, markdown body)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def _mlp(width: int, depth: int, num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def _try(label: str, fn: Callable[[], Any], notes: list[str]) -> Any:
    try:
        return fn()
    except Exception as err:  # a missing peer or callback is reported, not fatal
        notes.append(f"- {label}: skipped ({type(err).__name__}: {str(err).splitlines()[0][:160]})")
        return None


# --------------------------------------------------------------------------------------------------------------- EMA
def bench_ema(quick: bool) -> Section:
    width, depth, steps, batch = (128, 2, 12, 4) if quick else (2048, 4, 150, 8)
    decay = 0.999
    torch.manual_seed(0)
    base = _mlp(width, depth)
    n_params = sum(p.numel() for p in base.parameters())
    notes: list[str] = []
    rows: list[list[str]] = []
    reps = 10 if quick else 100

    def trainer_run(make_cb: Callable[[], Any]) -> tuple[float, float, float]:
        cb = make_cb()
        timer, bound = HookTimer(cb), KernelBound(weight=1 - decay)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = bench_trainer(tmp, [cb, bound])
            trainer.fit(TinyLit(copy.deepcopy(base)), random_loader((width,), 10, batch, steps))
        return timer.per_step(), timer.once(), bound.median()

    def ours() -> tuple[float, float, float]:
        from lit_tricks.callbacks.ema import EMAWeights

        return trainer_run(lambda: EMAWeights(decay=decay, save_ema_checkpoint=False, apply_at_end=False))

    def lightning_ema() -> tuple[float, float, float]:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        return trainer_run(lambda: EMAWeightAveraging(decay=decay))

    def peers() -> dict[str, tuple[float, float]]:
        """AveragedModel and timm's ModelEmaV3, each interleaved with the lerp bound: (time, bound) per peer."""
        import statistics
        import time

        model = copy.deepcopy(base)
        params = [p.detach() for p in model.parameters()]
        ema = [p.clone() for p in params]
        cases: dict[str, Callable[[], Any]] = {"bound": lambda: torch._foreach_lerp_(ema, params, 1 - decay)}
        try:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            cases["`AveragedModel` + `get_ema_multi_avg_fn`"] = lambda: avg.update_parameters(model)
        except Exception as err:
            notes.append(f"- AveragedModel: skipped ({type(err).__name__}: {err})")
        try:
            from timm.utils import ModelEmaV3

            timm_ema = ModelEmaV3(model, decay=decay)
            cases["timm `ModelEmaV3.update`"] = lambda: timm_ema.update(model)
        except Exception as err:
            notes.append(f"- timm ModelEmaV3: skipped ({type(err).__name__}: {err})")
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(reps + 2):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v[2:]) for k, v in times.items()}
        return {k: (v, med["bound"]) for k, v in med.items() if k != "bound"}

    ours_t = _try("lit_tricks EMAWeights", ours, notes)
    light_t = _try("Lightning EMAWeightAveraging", lightning_ema, notes)
    if ours_t is not None:
        rows.append(["lit_tricks `EMAWeights` (hooks, per step)", _ms(ours_t[0]), _ms(ours_t[2]),
                     _ratio(ours_t[0], ours_t[2]), _ms(ours_t[1])])
    if light_t is not None:
        rows.append(["Lightning `EMAWeightAveraging` (hooks, per step)", _ms(light_t[0]), _ms(light_t[2]),
                     _ratio(light_t[0], light_t[2]), _ms(light_t[1])])
    for label, (t, bound_t) in (_try("peers", peers, notes) or {}).items():
        rows.append([label, _ms(t), _ms(bound_t), _ratio(t, bound_t), "-"])
    if ours_t is not None and light_t is not None:
        vs_lightning = _ratio(ours_t[0] / ours_t[2], light_t[0] / light_t[2])
        notes.append(
            f"- ours / Lightning (each over its run's bound) = **{vs_lightning}**; "
            f"ours / foreach-lerp bound = **{_ratio(ours_t[0], ours_t[2])}**"
        )
    body = (
        f"MLP {depth}x{width} ({n_params / 1e6:.2f}M parameters), decay {decay}, {steps} training steps, "
        f"batch {batch}. Per-step = sum of the medians of the per-batch hooks; one-off = all other hook time. "
        "The bound (one `torch._foreach_lerp_` over the same parameters) is timed in the same run, step by step.\n\n"
        + md_table(["method", "ms / step", "bound ms (same run)", "vs bound", "one-off ms (set-up, epoch ends)"],
                   rows)
        + ("\n\n" + "\n".join(notes) if notes else "")
    )
    return "EMA weights", body


# -------------------------------------------------------------------------------------------------------- clipping
def _grad_params(model: nn.Module, seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def bench_clip(quick: bool) -> Section:
    import torchvision

    from lit_tricks.callbacks.clipping import GradientClipping
    from lit_tricks.functional.clip import adaptive_clip_grad_, clip_grad_norm_

    model = torchvision.models.resnet18(num_classes=10) if not quick else _mlp(128, 2)
    name = "resnet18" if not quick else "MLP 2x128"
    params = _grad_params(model)
    n = sum(p.numel() for p in params)
    reps = 10 if quick else 200
    max_norm = 1e9  # nothing is clipped, so every repetition does the same work

    callback_norm, callback_auto = GradientClipping("norm", max_norm=max_norm), GradientClipping("auto", history=1000)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("`torch.nn.utils.clip_grad_norm_(foreach=True)` (reference)",
         lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
        ("lit_tricks `clip_grad_norm_`", lambda: clip_grad_norm_(params, max_norm)),
        ("lit_tricks `GradientClipping('norm').clip_` (+ history, counters)", lambda: callback_norm.clip_(params)),
        ("lit_tricks `GradientClipping('auto').clip_` (percentile of 1000)", lambda: callback_auto.clip_(params)),
        ("lit_tricks `adaptive_clip_grad_` (AGC)", lambda: adaptive_clip_grad_(params, 1e9)),
    ]
    # interleave the cases round-robin so that machine noise hits all of them alike
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    import statistics
    import time

    for _ in range(2):
        for _, fn in cases:
            fn()
    for _ in range(reps):
        for label, fn in cases:
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med[cases[0][0]]
    rows = [[label, _ms(med[label]), _ratio(med[label], ref)] for label, _ in cases]
    body = (
        f"{name} gradients ({n / 1e6:.2f}M parameters), median of {reps} interleaved repetitions.\n\n"
        + md_table(["method", "ms / call", "vs reference"], rows)
    )
    return "Gradient clipping", body


# -------------------------------------------------------------------------------------------------------- ensemble
def bench_ensemble(quick: bool) -> Section:
    from lit_tricks.functional.ensemble import EnsembleModule

    members_n, batch, reps = (3, 8, 5) if quick else (5, 64, 30)

    def cnn() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(32, 10),
        )

    members = [cnn().eval() for _ in range(members_n)]
    x = torch.randn(batch, 3, 32, 32)
    loop, vmapped = EnsembleModule(members), EnsembleModule(members, use_vmap=True)
    with torch.no_grad():
        t_loop = median_time(lambda: loop(x), reps)
        t_vmap = median_time(lambda: vmapped(x), reps)
    rows = [["loop over members (CPU default)", _ms(t_loop), "1.00x"],
            ["`torch.func.vmap` over stacked weights", _ms(t_vmap), _ratio(t_loop, t_vmap)]]
    body = (f"{members_n} small CNN members, batch {batch} of 3x32x32, mean softmax. Speed = loop time / time.\n\n"
            + md_table(["path", "ms / batch", "speed vs loop"], rows))
    return "Ensemble prediction", body


# -------------------------------------------------------------------------------------------------------- overhead
def bench_overhead(quick: bool) -> Section:
    import torchvision

    batch, steps, rounds = (4, 6, 1) if quick else (32, 30, 2)
    notes: list[str] = []
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10)

    def make_four(tmp: str) -> list[Any]:
        from lit_tricks.callbacks.clipping import GradientClipping
        from lit_tricks.callbacks.ensemble import CheckpointEnsemble

        cbs: list[Any] = [GradientClipping(), CheckpointEnsemble(every_n_epochs=1, dirpath=f"{tmp}/ensemble")]
        ema_cb = _try("lit_tricks EMAWeights", lambda: __import__("lit_tricks.callbacks.ema", fromlist=["x"])
                      .EMAWeights(decay=0.999, save_ema_checkpoint=False, apply_at_end=False), notes)
        es_cb = _try("lit_tricks EarlyStopping", lambda: __import__("lit_tricks.callbacks.early_stopping",
                                                                     fromlist=["x"])
                     .EarlyStopping(monitor="train/loss", patience=3, check_on_train_epoch_end=True), notes)
        cbs += [c for c in (ema_cb, es_cb) if c is not None]
        return cbs

    def run(with_four: bool) -> tuple[float, float, list[tuple[str, float]]]:
        with tempfile.TemporaryDirectory() as tmp:
            step_timer, bound = StepTimer(), KernelBound(weight=0.001, norm_scale=True)
            four = make_four(tmp) if with_four else []
            timers = [HookTimer(c) for c in four]
            trainer = bench_trainer(tmp, [step_timer, *four, bound])
            trainer.fit(TinyLit(copy.deepcopy(base)), random_loader((3, 32, 32), 10, batch, steps))
            # the step timer spans the whole batch, the bound's own kernels included: take them out
            step = step_timer.median() - bound.median()
            return step, bound.median(), [(type(c).__name__, t.per_step()) for c, t in zip(four, timers)]

    plain, four = [], []
    for _ in range(rounds):  # alternate the two kinds of runs so that load drift hits both
        plain.append(run(False))
        four.append(run(True))
    plain_step = min(r[0] for r in plain)
    best = min(four, key=lambda r: r[0])
    four_step, kernels, per_callback = best
    hooks, n_cbs = sum(t for _, t in per_callback), len(per_callback)
    rows = [
        ["one foreach lerp + one foreach norm/scale (bound, same run)", _ms(kernels), "1.00x"],
        *[[f"  {name} hooks, per step", _ms(t), _ratio(t, kernels)] for name, t in per_callback],
        [f"hooks of the {n_cbs} callbacks, per step", _ms(hooks), _ratio(hooks, kernels)],
        ["step time without callbacks", _ms(plain_step), "-"],
        [f"step time with the {n_cbs} callbacks", _ms(four_step), "-"],
        ["step-time difference", _ms(four_step - plain_step), _ratio(four_step - plain_step, kernels)],
    ]
    body = (
        f"torchvision resnet18, 32x32 inputs, batch {batch}, {steps} steps per run, {rounds} alternating round(s) of "
        "runs without / with the callbacks (median step of each run, best run of each kind). The bound is timed "
        "step by step inside the same runs on separate buffers. The step-time "
        "difference between two runs is noisier than the hook time on a shared CPU."
        "\n\n" + md_table(["what", "ms", "vs bound"], rows) + ("\n\n" + "\n".join(notes) if notes else "")
    )
    return "All four callbacks on resnet18 (32x32, batch 32)" if not quick else "All four callbacks (quick)", body


def _sweep(log_dir: Path, preset: str, trials: int, epochs: int) -> tuple[float, float, dict[str, int]]:
    """One ``scripts/train.py -m hparams_search=<preset>`` sweep: (best objective, wall-clock s, trial states)."""
    import os
    import subprocess
    import time

    import optuna

    from lit_tricks.sweeps.study import open_storage

    env = {**os.environ, "LIT_TRICKS_LOG_DIR": str(log_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", f"hparams_search={preset}",
           f"hydra.sweeper.n_trials={trials}", f"trainer.max_epochs={epochs}", f"hydra.sweeper.study_name={preset}",
           f"hydra.sweeper.sampler_kwargs.n_startup_trials={max(2, trials // 3)}", "logger=none", "test=false"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=log_dir, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{preset} sweep failed: {proc.stderr[-1500:]}")
    study = optuna.load_study(study_name=preset, storage=open_storage(f"sqlite:///{log_dir / 'train' / 'optuna.db'}"))
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return float(study.best_value), seconds, states


def bench_sweep(quick: bool) -> Section:
    """TPE on digits with and without pruning (successive halving): best val/loss and wall clock, same seed.

    Sizes: n_trials=24, 10 epochs (the issue's); BENCH_SWEEP_TRIALS / BENCH_SWEEP_EPOCHS override them (a loaded
    machine). --quick only notes the section: two sweeps of scripts/train.py take minutes.
    """
    import os

    trials = int(os.environ.get("BENCH_SWEEP_TRIALS", 24))
    epochs = int(os.environ.get("BENCH_SWEEP_EPOCHS", 10))
    title = "Sweeps: TPE with and without pruning (digits)"
    if quick:
        return title, "skipped in --quick (two sweeps of scripts/train.py; run `make bench` or `--only sweep`)."
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        results = {preset: _sweep(Path(tmp), preset, trials, epochs) for preset in ("tpe", "asha")}
    (best_u, time_u, _), (best_p, time_p, _) = results["tpe"], results["asha"]
    for name, (best, seconds, states) in (("TPE (hparams_search=tpe)", results["tpe"]),
                                          ("TPE + successive halving (hparams_search=asha)", results["asha"])):
        rows.append([name, f"{best:.4f}", f"{seconds:.0f}", ", ".join(f"{v} {k}" for k, v in sorted(states.items()))])
    gap = (best_p - best_u) / abs(best_u) if best_u else float("nan")
    body = "\n".join([
        f"`n_trials={trials}` (the first {max(2, trials // 3)} random), `trainer.max_epochs={epochs}`, seed 42, "
        "objective `val/loss` (minimized), "
        "`logger=none test=false`, one worker, basic launcher.",
        "",
        md_table(["sweep", "best val/loss", "wall clock (s)", "trials"], rows),
        "",
        f"Pruned vs unpruned: best objective {gap:+.1%}, wall-clock time {time_p / time_u:.2f}x.",
    ])
    return title, body


BENCHES: dict[str, Callable[[bool], Section]] = {
    "ema": bench_ema,
    "clip": bench_clip,
    "ensemble": bench_ensemble,
    "overhead": bench_overhead,
    "sweep": bench_sweep,
    "mnist1d": bench_mnist1d,
    "step_cost": bench_step_cost_section,
}


def merge_sections(existing: str, sections: list[Section]) -> str:
    """``existing`` markdown with each ``## title`` section's body replaced by the new one (new titles appended)."""
    head, *chunks = existing.split("\n## ")
    parts = [(chunk.split("\n", 1)[0], chunk.split("\n", 1)[1] if "\n" in chunk else "") for chunk in chunks]
    new = dict(sections)
    out = [head.rstrip("\n")]
    for title, body in parts:
        out.append(f"## {title}\n\n{new.pop(title)}\n" if title in new else f"## {title}\n{body.rstrip()}\n")
    out += [f"## {title}\n\n{body}\n" for title, body in new.items()]
    return "\n\n".join(part.rstrip("\n") for part in out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")), help="markdown file to write")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these sections")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 = least disturbed by other processes on the CPU; 0 = torch default)")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import logging

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sections: list[Section] = []
    try:
        for name in args.only or list(BENCHES):
            print(f"[bench] {name} ...", flush=True)
            try:
                sections.append(BENCHES[name](args.quick))
            except Exception:
                sections.append((name, "failed:\n\n```\n" + traceback.format_exc()[-2000:] + "\n```"))
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    info = machine_info()  # before restoring the thread count, so the table shows what was used
    torch.set_num_threads(threads_before)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# lit_tricks benchmarks",
        "",
        f"Generated by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on {stamp}. "
        "Ratios compare methods measured in the same run; absolute times depend on the machine and its load.",
        "",
        md_table(["machine", ""], [[k, v] for k, v in info.items()]),
    ]
    for title, body in sections:
        text += ["", f"## {title}", "", body]
    out = Path(args.out)
    if args.only and out.is_file():  # a partial run replaces its sections and keeps the rest of the file
        note = (f"_This section was re-run alone (`python benchmarks/run_all.py --only ...`) on {stamp}; load average "
                f"then {info.get('load average (1, 5, 15 min)', '?')} (1, 5, 15 min)._")
        merged = merge_sections(out.read_text(), [(title, f"{note}\n\n{body}") for title, body in sections])
        text = [merged.rstrip("\n")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
