"""Weight averaging decided after training, on MNIST-1D: the post-hoc EMA length chosen on a validation split vs
the recipe's fixed EMA decay, and greedy soup vs uniform soup vs prediction ensemble of the recipe's snapshots.

Each seed is one run of ``experiment=mnist1d_tricks`` with 500 of the 4000 training samples held out for validation
(``data.val_size=500``: both arms train on the same 3500), PostHocEMA snapshots every 50 steps and the end-of-run
reconstruction of 7 lengths (``callbacks=[mnist1d,posthoc_ema]``), and a CheckpointEnsemble member every 5 epochs
(30 snapshot members over the 150 epochs). Afterwards ``lit_tricks.posthoc.soup.evaluate_run_soups`` soups those
members. Every number is test accuracy of paired seeds (one run gives every arm), mean with percentile-bootstrap 95%
CIs. The post-hoc lengths (:data:`SIGMA_RELS`) reach 0.25, beyond the recipe's EMA (decay 0.999 over 5250 steps is a
relative length of about 0.19). The first row names the EMAWeights decay the runs saved (``config_resolved.yaml``).

    nice -n 10 python benchmarks/mnist1d_posthoc.py --seeds 10 --jobs 2 --table docs/results/posthoc_mnist1d.md

Trains ``--jobs`` seeds at a time, each with one torch thread; finished seeds (``<out>/seed<s>/metrics.json`` and
``soup/soup.json``) are reused while the run's saved config is what the command composes to now (a changed preset or
``--quick`` retrains the seed and re-soups it). ``--quick``: 2 epochs, to check the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/mnist1d_posthoc.py` puts benchmarks/ first on sys.path, where benchmarks/mnist1d.py would
# shadow the mnist1d package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


#: the post-hoc EMA lengths synthesized and scored at the end of each run
SIGMA_RELS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25)


def seed_overrides(seed: int, quick: bool) -> list[str]:
    """The Hydra overrides of seed ``seed``'s run."""
    return ["experiment=mnist1d_tricks", f"seed={seed}", "data.val_size=500",
            "callbacks=[mnist1d,posthoc_ema,checkpoint_ensemble]", "callbacks.checkpoint_ensemble.every_n_epochs=5",
            f"+posthoc_ema.sigma_rels=[{','.join(map(str, SIGMA_RELS))}]", "logger=none",
            *(["trainer.max_epochs=2", "callbacks.checkpoint_ensemble.every_n_epochs=1"] if quick else [])]


def train_seed(seed: int, out: Path, quick: bool) -> None:
    """Train seed ``seed`` into ``<out>/seed<seed>`` unless a finished run of the same config is there (a run of
    another config is retrained, and its soups, derived from its members, are dropped)."""
    from lit_tricks.sweeps.ablation import saved_config_matches

    run, overrides = out / f"seed{seed}", seed_overrides(seed, quick)
    if (run / "metrics.json").is_file() and json.loads((run / "metrics.json").read_text())["status"] == "ok":
        if saved_config_matches(run, ROOT / "conf", overrides):
            return
        print(f"seed {seed}: {run} trained another config; retraining it", flush=True)
    shutil.rmtree(run / "soup", ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides, f"hydra.run.dir={run}"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"seed {seed}: trained in {time.perf_counter() - started:.0f} s", flush=True)


def run_seed(seed: int, out: Path, quick: bool) -> dict:
    from lit_tricks.posthoc.ema import selection_key

    run = out / f"seed{seed}"
    train_seed(seed, out, quick)
    if not (run / "soup" / "soup.json").is_file():
        from lit_tricks.posthoc.soup import evaluate_run_soups

        evaluate_run_soups(run)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    soup = {r["what"].split(" (")[0]: r for r in json.loads((run / "soup" / "soup.json").read_text())["rows"]}
    lengths = json.loads((run / "posthoc_ema" / "posthoc_ema.json").read_text())["rows"]
    # the report's rule (lit_tricks.posthoc.ema.selection_key), applied to the scores of the 7 lengths it wrote
    by_acc = max(lengths, key=lambda r: selection_key(r, "val/acc"))
    by_nll = max(lengths, key=lambda r: selection_key(r, "val/nll"))
    return {
        RECIPE_EMA: metrics["test/acc"],
        "recipe EMA, BN recalibrated": metrics["posthoc_ema/final/test/acc"],
        "post-hoc EMA, length chosen on val": by_acc["test/acc"],
        "post-hoc EMA, length chosen on val NLL": by_nll["test/acc"],
        "sigma_rel by val NLL": by_nll["sigma_rel"],
        "post-hoc EMA, best length on test (not a fair choice)": max(r["test/acc"] for r in lengths),
        "chosen sigma_rel": by_acc["sigma_rel"],
        **{k: soup[k]["test/acc"] for k in ("best member", "uniform soup", "greedy soup", "prediction ensemble")},
        "greedy size": soup["greedy soup"]["what"].split("(")[1].rstrip(")"),  # "k of n"
    }


RECIPE_EMA = "recipe EMA"  # the row's key in results.json; the table labels it with the decay (recipe_ema_label)


def recipe_ema_label(runs: list[Path]) -> str:
    """``recipe EMA (decay 0.999)``: the first row's label, from the EMAWeights callback each run saved in its
    ``config_resolved.yaml`` (``half-life N steps`` when the run set ``half_life_steps``); ValueError in one line
    when a run has no EMAWeights (or several) or the runs disagree."""
    import inspect

    from omegaconf import OmegaConf

    from lit_tricks.callbacks import EMAWeights

    default = inspect.signature(EMAWeights).parameters["decay"].default
    labels: dict[str, list[str]] = {}
    for run in runs:
        callbacks = OmegaConf.to_container(OmegaConf.load(run / "config_resolved.yaml")).get("callbacks") or {}
        nodes = [n for n in (callbacks.values() if isinstance(callbacks, dict) else callbacks)
                 if isinstance(n, dict) and str(n.get("_target_", "")).rsplit(".", 1)[-1] == "EMAWeights"]
        if len(nodes) != 1:
            raise ValueError(f"{run / 'config_resolved.yaml'}: {len(nodes)} EMAWeights callbacks, expected 1")
        half_life = nodes[0].get("half_life_steps")
        rule = f"half-life {float(half_life):g} steps" if half_life is not None else \
            f"decay {float(nodes[0].get('decay', default)):g}"
        labels.setdefault(rule, []).append(run.name)
    if len(labels) > 1:
        raise ValueError("the runs disagree on the recipe EMA: " + "; ".join(
            f"{rule} in {', '.join(names)}" for rule, names in labels.items()))
    return f"{RECIPE_EMA} ({next(iter(labels))})"


def table(results: list[dict], seeds: list[int], label: str = RECIPE_EMA) -> str:
    from lit_tricks.sweeps.stats import bootstrap_ci, paired_bootstrap_ci

    def ci(values: list[float]) -> str:
        lo, hi = bootstrap_ci([100 * v for v in values])
        return f"{100 * statistics.fmean(values):.2f}% | [{lo:.2f}, {hi:.2f}]"

    def paired(a: str, b: str) -> str:
        est, lo, hi = paired_bootstrap_ci([100 * r[a] for r in results], [100 * r[b] for r in results])
        return f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    ema_rows = [RECIPE_EMA, "recipe EMA, BN recalibrated", "post-hoc EMA, length chosen on val",
                "post-hoc EMA, length chosen on val NLL", "post-hoc EMA, best length on test (not a fair choice)"]
    soup_rows = ["best member", "uniform soup", "greedy soup", "prediction ensemble"]
    chosen = sorted(r["chosen sigma_rel"] for r in results)
    by_nll = sorted(r["sigma_rel by val NLL"] for r in results)
    lines = [f"Seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}), test accuracy, mean and 95% bootstrap CI; paired "
             "differences in points (same seed, same run).", "",
             "| weights | test acc | 95% CI | vs recipe EMA (paired) |", "|---|---:|---|---|"]
    lines += [f"| {label if k == RECIPE_EMA else k} | {ci([r[k] for r in results])} | "
              f"{paired(k, ema_rows[0]) if k != ema_rows[0] else ''} |" for k in ema_rows]
    lines += ["", f"sigma_rel chosen per seed (sorted), by val accuracy (ties by val NLL): "
              f"{', '.join(f'{c:g}' for c in chosen)}; by val NLL: {', '.join(f'{c:g}' for c in by_nll)}.", "",
              "| snapshot members | test acc | 95% CI | greedy soup minus it (paired) |", "|---|---:|---|---|"]
    lines += [f"| {k} | {ci([r[k] for r in results])} | {paired('greedy soup', k) if k != 'greedy soup' else ''} |"
              for k in soup_rows]
    sizes = sorted((r["greedy size"] for r in results), key=lambda k: int(k.split()[0]))
    lines += ["", f"Greedy soup size per seed (sorted): {', '.join(sizes)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "mnist1d_posthoc")
    parser.add_argument("--table", type=Path, default=None, help="write the markdown table here too")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at a time (one torch thread each)")
    parser.add_argument("--quick", action="store_true", help="2 epochs: check the pipeline, no meaningful numbers")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # training in subprocesses; the soups below, one at a time
        list(pool.map(lambda s: train_seed(s, args.out, args.quick), seeds))
    try:
        label = recipe_ema_label([args.out / f"seed{s}" for s in seeds])
    except (OSError, ValueError) as err:  # before anything is written
        print(f"mnist1d_posthoc: {err}", file=sys.stderr)
        return 2
    results = [run_seed(s, args.out, args.quick) for s in seeds]
    text = table(results, seeds, label)
    from benchmarks.common import machine_info

    minutes = (time.perf_counter() - started) / 60
    text += (f"`python benchmarks/mnist1d_posthoc.py --seeds {args.seeds} --jobs {args.jobs}` on "
             f"{machine_info()['cpu']}, one torch thread per process"
             + (f", {minutes:.0f} min for what was not already there" if minutes >= 1 else "") + ".\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    if args.table is not None:
        args.table.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
