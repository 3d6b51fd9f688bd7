"""Trick ablation: baseline, all tricks, and tricks minus one, over paired seeds; markdown table + bar plot.

    python scripts/ablate.py                          # 10 seeds on digits (~20-30 min on a laptop CPU)
    python scripts/ablate.py data.train_size=300      # the same with a 300-sample training subset
    python scripts/ablate.py --seeds 1 --quick        # smoke run (trainer.fast_dev_run=true)
    python scripts/ablate.py --set mnist1d --seeds 5  # MNIST-1D: experiment=mnist1d_tricks vs mnist1d_baseline

Each run is ``scripts/train.py <variant overrides> seed=<s> <extra overrides>`` in its own process and run
directory (``<out>/runs/<variant>/seed<s>``); a run whose ``metrics.json`` says ``ok`` is reused while its saved config
is still what its overrides compose to (a changed preset reruns it), so an interrupted
ablation continues where it stopped. Writes ``<out>/ablation.md``, ``ablation.png`` and ``ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lit_tricks.fault.atomic import atomic_write_bytes  # noqa: E402
from lit_tricks.sweeps.ablation import (  # noqa: E402
    ABLATION_SETS,
    BASELINE,
    TRICKS,
    ablation_bar_plot,
    ablation_markdown,
    build_variants,
    compose_train,
    run_ablation,
    saved_config_matches,
    summarize_ablation,
)

CONF = ROOT / "conf"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def compose(overrides: Sequence[str]) -> Any:
    """The composed train config for ``overrides`` (raises on an override that does not apply)."""
    return compose_train(CONF, overrides)


def same_config(run_dir: Path, overrides: Sequence[str]) -> bool:
    """Whether the finished run in ``run_dir`` trained what ``overrides`` compose to now (a changed preset reruns a
    run instead of reusing its stale result)."""
    return saved_config_matches(run_dir, CONF, overrides)


def check_variants(variants: dict[str, list[str]], strict: set[str], extra: Sequence[str]) -> dict[str, list[str]]:
    """Drop default ablations whose override does not apply to this config (or changes nothing); fail on others."""
    try:
        tricks_cfg = compose([*variants[TRICKS], *extra])
        compose([*variants[BASELINE], *extra])
    except Exception as err:
        raise SystemExit(f"ablate: the baseline/tricks configs do not compose: {str(err).splitlines()[0]}") from err
    kept: dict[str, list[str]] = {}
    for name, overrides in variants.items():
        if name in (BASELINE, TRICKS):
            kept[name] = overrides
            continue
        try:
            cfg = compose([*overrides, *extra])
        except Exception as err:
            if name in strict:
                raise SystemExit(f"ablate: variant {name!r}: overrides {overrides} do not apply: {err}") from err
            print(f"ablate: skipping {name!r}: {overrides} does not apply to this config "
                  f"({str(err).splitlines()[0]})")
            continue
        if cfg == tricks_cfg:
            print(f"ablate: skipping {name!r}: {overrides} changes nothing (the trick is not in the tricks experiment)")
            continue
        kept[name] = overrides
    return kept


def make_run_fn(out: Path, variant_of: Mapping[tuple[str, ...], str], python: str = sys.executable,
                threads: int | None = None) -> Any:
    def run(overrides: list[str]) -> dict[str, float]:
        seed = next(o.split("=", 1)[1] for o in overrides if o.startswith("seed="))
        # the variant whose overrides are the longest prefix ("tricks" is a prefix of every "tricks - x")
        matches = [(len(k), v) for k, v in variant_of.items() if list(k) == overrides[: len(k)]]
        name = max(matches)[1]
        run_dir = out / "runs" / slug(name) / f"seed{seed}"
        record_path = run_dir / "metrics.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record.get("status") == "ok" and same_config(run_dir, overrides):
                return dict(record.get("metrics", record))
            if record.get("status") == "ok":
                print(f"ablate: rerunning {run_dir}: its config is not what {overrides} composes to now")
        cmd = [python, str(ROOT / "scripts" / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
        env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0 or not record_path.is_file():
            raise SystemExit(f"ablate: run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        record = json.loads(record_path.read_text())
        return dict(record.get("metrics", record))

    return run


def parse_minus(values: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        if "=" not in value:
            raise SystemExit(f"ablate: --minus expects NAME=override[,override...], got {value!r}")
        name, overrides = value.split("=", 1)
        out[name] = [o for o in overrides.split(",") if o]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data.train_size=300")
    parser.add_argument("--set", default="default", choices=sorted(ABLATION_SETS),
                        help="experiments and tricks-minus-one list: default (experiment=tricks/baseline) | mnist1d "
                             "(experiment=mnist1d_tricks/mnist1d_baseline)")
    parser.add_argument("--seeds", type=int, default=10, help="number of paired seeds (default 10)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: ++trainer.fast_dev_run=true")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default outputs/ablation[_<extra>])")
    parser.add_argument("--variants", default=None,
                        help="comma list of variant names to run (default all), e.g. baseline,tricks")
    parser.add_argument("--minus", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                        help="a 'tricks minus one' variant (repeatable); replaces the default list")
    parser.add_argument("--metric", default="test/acc", help="accuracy metric read from metrics.json")
    parser.add_argument("--n-boot", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel (each with OMP_NUM_THREADS=1); results are still paired by seed")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    extra = list(args.overrides) + (["++trainer.fast_dev_run=true"] if args.quick else [])
    user = parse_minus(args.minus)
    tricks_exp, baseline_exp, ablations = ABLATION_SETS[args.set]
    variants = build_variants(user or ablations, tricks_overrides=[f"experiment={tricks_exp}"],
                              baseline_overrides=[f"experiment={baseline_exp}"])
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            parser.error(f"--variants: unknown {unknown}; valid: {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in wanted or k in (BASELINE, TRICKS)}
    variants = check_variants(variants, strict={f"{TRICKS} - {n}" for n in user}, extra=extra)

    tag = "_".join(slug(o) for o in args.overrides)
    name = "ablation" + ("" if args.set == "default" else f"_{args.set}")
    out = args.out or ROOT / "outputs" / (name + (f"_{tag}" if tag else "") + ("_quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"ablate: {len(variants)} variants x {len(seeds)} seeds -> {out}")
    run_fn = make_run_fn(out, {tuple(v): k for k, v in variants.items()}, threads=1 if args.jobs > 1 else None)
    if args.jobs > 1:  # fill the run directories in parallel; run_ablation below then reads the finished runs
        from concurrent.futures import ThreadPoolExecutor

        todo = [[*v, f"seed={s}", *extra] for s in seeds for v in variants.values()]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run_fn, todo))
    errors = run_ablation(run_fn, variants, seeds, metric=args.metric, extra_overrides=extra, log=print)

    rows = summarize_ablation(errors, n_boot=args.n_boot)
    notes = ["", f"Seeds {seeds[0]}..{seeds[-1]} (paired: every variant uses the same seeds and data split); "
                  f"overrides for every run: {extra or 'none'}.",
             f"Command: `python scripts/ablate.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    title = "What each trick buys" + (f" ({', '.join(args.overrides)})" if args.overrides else "")
    table = ablation_markdown(rows, errors, title=title, notes=notes)
    atomic_write_bytes(table.encode(), out / "ablation.md")
    atomic_write_bytes(json.dumps({"seeds": seeds, "overrides": extra, "variants": variants, "errors": errors},
                                  indent=2).encode(), out / "ablation.json")
    ablation_bar_plot(rows, out / "ablation.png", title=title)
    print(table)
    print(f"ablate: wrote {out / 'ablation.md'}, {out / 'ablation.png'}, {out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
