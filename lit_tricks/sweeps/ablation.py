"""Trick ablation: baseline, all tricks, and all tricks minus one, over paired seeds; table with bootstrap CIs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_tricks.fault.atomic import atomic_save_figure
from lit_tricks.sweeps.stats import bootstrap_ci, paired_bootstrap_ci

__all__ = [
    "ABLATION_SETS",
    "BASELINE",
    "DEFAULT_ABLATIONS",
    "MNIST1D_ABLATIONS",
    "TRICKS",
    "AblationRow",
    "ablation_bar_plot",
    "ablation_markdown",
    "build_variants",
    "compose_train",
    "relative_cut",
    "run_ablation",
    "saved_config_matches",
    "summarize_ablation",
]

BASELINE = "baseline"
TRICKS = "tricks"

#: "Tricks minus one": Hydra overrides (applied after ``experiment=tricks``) that switch one trick off.
DEFAULT_ABLATIONS: dict[str, list[str]] = {
    "augmentation": ["augment=none"],
    "input standardization": ["data.preprocessing=none"],
    "warm-up + cosine lr": ["scheduler=none"],
    "momentum": ["optimizer.momentum=0.0", "optimizer.nesterov=false"],
    "weight decay": ["module.weight_decay=0.0"],
    "label smoothing": ["module.label_smoothing=0.0"],
    "dropout": ["module.dropout=0.0"],
    "EMA of weights": ["~callbacks.ema"],
    "gradient clipping": ["~callbacks.clipping"],
}

#: The same for ``experiment=mnist1d_tricks`` (the paper's CNN on MNIST-1D; see docs/mnist1d.md). The augmentation's
#: steps are switched off one at a time by their size (a shift of 0, a shear of 0, noise of sigma 0 are no-ops).
MNIST1D_ABLATIONS: dict[str, list[str]] = {
    "inserted BatchNorm": ["module.norm=keep"],
    "weight decay": ["module.weight_decay=0.0"],
    "one-cycle lr": ["scheduler=none"],
    "augmentation (shift + shear + noise)": ["augment=none"],
    "circular shift": ["augment.steps.0.shift.max_shift=0"],
    "shear": ["augment.steps.1.shear.max_shear=0"],
    "input noise": ["augment.steps.2.noise.sigma=0"],
    "label smoothing": ["module.label_smoothing=0.0"],
    "gradient clipping": ["~callbacks.clipping"],
    "EMA of weights": ["~callbacks.ema"],
    "6000 steps (3000 instead)": ["trainer.max_epochs=75"],
}

#: ``scripts/ablate.py --set <name>``: (tricks experiment, baseline experiment, tricks-minus-one overrides).
ABLATION_SETS: dict[str, tuple[str, str, dict[str, list[str]]]] = {
    "default": ("tricks", "baseline", DEFAULT_ABLATIONS),
    "mnist1d": ("mnist1d_tricks", "mnist1d_baseline", MNIST1D_ABLATIONS),
}

RunFn = Callable[[list[str]], Mapping[str, Any]]


def build_variants(
    ablations: Mapping[str, Sequence[str]] | None = None,
    tricks_overrides: Sequence[str] = ("experiment=tricks",),
    baseline_overrides: Sequence[str] = ("experiment=baseline",),
) -> dict[str, list[str]]:
    """``{"baseline": [...], "tricks": [...], "tricks - <name>": [...tricks, ...minus]}`` in that order."""
    variants = {BASELINE: list(baseline_overrides), TRICKS: list(tricks_overrides)}
    for name, minus in (DEFAULT_ABLATIONS if ablations is None else ablations).items():
        variants[f"{TRICKS} - {name}"] = [*tricks_overrides, *minus]
    return variants


def run_ablation(
    run_fn: RunFn,
    variants: Mapping[str, Sequence[str]],
    seeds: Sequence[int],
    *,
    metric: str = "test/acc",
    extra_overrides: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Test error ``1 - metric`` of every variant for every seed; returns ``{variant: [error per seed]}``.

    ``run_fn(overrides) -> metrics`` trains one model (``seed=<s>`` is appended to the variant's overrides, then
    ``extra_overrides``); the seed loop is outermost, so an interrupted ablation still has paired results. The
    data split does not depend on ``seed`` (``data.split_seed``), so seeds pair variants on the same split.
    """
    if not seeds:
        raise ValueError("seeds must not be empty")
    errors: dict[str, list[float]] = {name: [] for name in variants}
    for seed in seeds:
        for name, overrides in variants.items():
            metrics = run_fn([*overrides, f"seed={seed}", *extra_overrides])
            if metric not in metrics:
                raise KeyError(f"run {name!r} seed={seed} did not report {metric!r}; got {sorted(metrics)}")
            errors[name].append(1.0 - float(metrics[metric]))
            if log is not None:
                log(f"{name:<36} seed={seed}: error {errors[name][-1]:.4f}")
    return errors


@dataclass(frozen=True)
class AblationRow:
    """One variant: mean test error with its bootstrap CI, and the paired change versus the reference."""

    name: str
    n: int
    mean: float
    low: float
    high: float
    delta: float  # mean(error - reference error), paired by seed
    delta_low: float
    delta_high: float


def summarize_ablation(errors: Mapping[str, Sequence[float]], reference: str = TRICKS, *, level: float = 0.95,
                       n_boot: int = 10_000, seed: int = 0) -> list[AblationRow]:
    """Rows for :func:`ablation_markdown`: percentile bootstrap CIs of the mean and of the paired difference."""
    if reference not in errors:
        raise KeyError(f"reference={reference!r} not among the variants {sorted(errors)}")
    ref = list(errors[reference])
    rows = []
    for name, errs in errors.items():
        values = list(errs)
        low, high = bootstrap_ci(values, level=level, n_boot=n_boot, seed=seed)
        n = min(len(values), len(ref))
        delta, d_low, d_high = paired_bootstrap_ci(values[:n], ref[:n], level=level, n_boot=n_boot, seed=seed)
        rows.append(AblationRow(name, len(values), float(np.mean(values)), low, high, delta, d_low, d_high))
    return rows


def relative_cut(errors: Mapping[str, Sequence[float]], *, level: float = 0.95, n_boot: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """``1 - mean(tricks) / mean(baseline)`` with a paired bootstrap CI: the share of the baseline error removed."""
    base, tricks = list(errors[BASELINE]), list(errors[TRICKS])

    def cut(t: np.ndarray, b: np.ndarray) -> float:
        denominator = float(np.mean(b))
        return 1.0 - float(np.mean(t)) / denominator if denominator > 0 else math.nan

    return paired_bootstrap_ci(tricks, base, cut, level=level, n_boot=n_boot, seed=seed)


def ablation_markdown(rows: Sequence[AblationRow], errors: Mapping[str, Sequence[float]] | None = None, *,
                      title: str = "What each trick buys", target_cut: float | None = None, notes: Sequence[str] = (),
                      level: float = 0.95) -> str:
    """A markdown table (test error % mean and CI, change vs all tricks) and the baseline -> tricks relative cut.

    ``target_cut`` (e.g. 0.45) adds whether the cut reaches it; by default only the measurement is written.
    """
    pct = f"{level:.0%}"
    lines = [f"### {title}", "",
             f"| variant | seeds | test error % | {pct} CI | vs tricks (paired) | {pct} CI |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = "—" if r.name == TRICKS else f"{100 * r.delta:+.2f}"
        vs_ci = "—" if r.name == TRICKS else f"[{100 * r.delta_low:+.2f}, {100 * r.delta_high:+.2f}]"
        lines.append(f"| {r.name} | {r.n} | {100 * r.mean:.2f} | [{100 * r.low:.2f}, {100 * r.high:.2f}] "
                     f"| {vs} | {vs_ci} |")
    if errors is not None and BASELINE in errors and TRICKS in errors:
        est, low, high = relative_cut(errors, level=level)
        verdict = (f"Tricks cut the baseline test error by {100 * est:.1f}% (relative; {pct} CI "
                   f"[{100 * low:.1f}%, {100 * high:.1f}%])")
        if target_cut is not None:
            met = "meets" if est >= target_cut else "does not meet"
            verdict += f"; this {met} a {100 * target_cut:.0f}% cut"
        lines += ["", verdict + "."]
    lines += ["", "A positive \"vs tricks\" means removing that trick raises the error (the trick helps).",
              *notes]
    return "\n".join(lines) + "\n"


def ablation_bar_plot(rows: Sequence[AblationRow], path: str | Path, title: str = "test error by variant") -> Path:
    """Horizontal bars of mean test error (%) with the CI as error bars; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in rows]
    means = np.array([100 * r.mean for r in rows])
    err = np.array([[100 * (r.mean - r.low) for r in rows], [100 * (r.high - r.mean) for r in rows]])
    colors = ["tab:gray" if n == BASELINE else "tab:green" if n == TRICKS else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ax.barh(range(len(rows)), means, xerr=np.clip(err, 0, None), color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel("test error % (mean, bootstrap CI)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def compose_train(conf_dir: str | Path, overrides: Sequence[str]) -> dict[Any, Any]:
    """The ``train`` config of ``conf_dir`` composed with ``overrides``, as an unresolved container without
    ``task_name`` (raises on an override that does not apply)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return _comparable(compose("train", overrides=list(overrides)))
    finally:
        GlobalHydra.instance().clear()


def saved_config_matches(run_dir: str | Path, conf_dir: str | Path, overrides: Sequence[str]) -> bool:
    """Whether the finished run in ``run_dir`` trained what ``overrides`` compose to now (its saved
    ``.hydra/config.yaml``): a study that reuses finished runs reruns one whose preset has changed since."""
    from omegaconf import OmegaConf

    saved = Path(run_dir) / ".hydra" / "config.yaml"
    return saved.is_file() and _comparable(OmegaConf.load(saved)) == compose_train(conf_dir, overrides)


def _comparable(cfg: Any) -> dict[Any, Any]:
    """``cfg`` as an unresolved container without ``task_name`` (a run's name, not its recipe)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    container.pop("task_name", None)
    return container
