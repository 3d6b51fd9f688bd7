"""Presets set only what they change: the effective constructor arguments are those recorded before the trim.

``effective_before.json`` holds, for the default train config, every experiment and every group option, what each
``_target_`` received (signature defaults + the keys set) on the commit before the presets were cut down to their
deliberate differences (``record_before.py``). Today's values must equal them, except the defaults decided in
CHANGELOG.md (0.1.0, "Defaults decided once"), listed in :data:`DECIDED`, and the recipes re-tuned on purpose, listed
in :data:`RETUNED`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conf.effective import FIXTURE, cases, compose_effective

#: (callee, argument) -> (value before, value now): the decided defaults of CHANGELOG.md.
DECIDED: dict[tuple[str, str], tuple[Any, Any]] = {
    # optimizer=adamw: torch's weight_decay=0.01 was in effect only on paper (TrickModule's groups carry their own).
    ("torch:AdamW", "weight_decay"): (0.01, 0.0),
    # data=imagefolder: the 30% test share of every other pool-split DataModule (was 20% in its preset).
    ("lit_tricks:ImageFolderDataModule", "test_fraction"): (0.2, 0.3),
    # callbacks=preemption: null = SIGUSR1 where the platform has it (the preset restated it as a list).
    ("lit_tricks:Preemption", "requeue_signals"): (["SIGUSR1"], None),
    # MNIST1DDataModule refuses val_fraction / test_fraction (it takes val_size): its signature no longer lists them.
    ("lit_tricks:MNIST1DDataModule", "val_fraction"): (0.1, "<absent>"),
    ("lit_tricks:MNIST1DDataModule", "test_fraction"): (0.3, "<absent>"),
    # callbacks=last_checkpoint|model_checkpoint: lit_tricks' ModelCheckpoint (exact resume points), same arguments.
    ("lit_tricks:ModelCheckpoint", "_target_"): ("lightning:ModelCheckpoint", "lit_tricks:ModelCheckpoint"),
    # Preemption's file is a last* name: Lightning's fit(ckpt_path="last") finds it.
    ("lit_tricks:Preemption", "filename"): ("preempted.ckpt", "last-preempted.ckpt"),
}

_SHIFT, _NOISE = {"shift": {"max_shift": 4, "mode": "roll"}}, {"noise": {"sigma": 0.08}}
_SIGNAL_STEPS = ([_SHIFT, _NOISE], [_SHIFT, {"shear": {"max_shear": 3.5}}, _NOISE])
_NO_DROPOUT = {"module.dropout": (0.03, None), "module.dropout_placement": ("every_hidden", "head")}
_FOREACH = {"optimizer.foreach": (None, True)}  # speed only: the same steps (tests/data/test_mnist1d_recipes.py)
#: case -> key path -> (value before, value now): recipes re-tuned on purpose since the recording (the MNIST-1D
#: recipes of issue 28, chosen on 5-fold validation by benchmarks/mnist1d_explore.py; docs/mnist1d.md).
RETUNED: dict[str, dict[str, tuple[Any, Any]]] = {
    "augment=mnist1d": {"augment.steps": _SIGNAL_STEPS},
    "callbacks=mnist1d": {"callbacks.ema.decay": (0.998, 0.999)},
    "experiment=mnist1d_tricks": {"augment.steps": _SIGNAL_STEPS, "callbacks.ema.decay": (0.998, 0.999),
                                  "trainer.max_epochs": (75, 150), **_NO_DROPOUT, **_FOREACH},
    "experiment=mnist1d_fast": {"augment.steps": _SIGNAL_STEPS, "optimizer.lr": (0.02, 0.04),
                                "data.batch_size": (100, 200), "trainer.max_epochs": (20, 15),
                                "trainer.log_every_n_steps": (40, 20), **_NO_DROPOUT, **_FOREACH},
}

BEFORE = json.loads(FIXTURE.read_text())
CASES = cases()


def differences(before: Any, now: Any, path: str = "", callee: str = "") -> Iterator[tuple[str, str, str, Any, Any]]:
    """(key path, callee, argument, before, now) of every value that differs."""
    if isinstance(before, dict) and isinstance(now, dict):
        owner = str(now.get("_target_", "")) if "_target_" in now else ""
        for key in sorted(set(before) | set(now)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before or key not in now:
                yield sub, owner, str(key), before.get(key, "<absent>"), now.get(key, "<absent>")
            else:
                yield from differences(before[key], now[key], sub, owner if owner else "")
    elif before != now:
        arg = path.rsplit(".", 1)[-1]
        yield path, callee, arg, before, now


def test_every_recorded_case_still_exists() -> None:
    """No preset of the recorded commit disappeared; presets added since have no "before" (tests/conf/test_presets.py
    holds them to the same rules)."""
    assert set(BEFORE["cases"]) | {"train"} <= set(CASES)


@pytest.mark.parametrize("name", sorted(set(CASES) & (set(BEFORE["cases"]) | {"train"})))
def test_effective_arguments_unchanged_but_the_decided_defaults(name: str) -> None:
    before = BEFORE["train"] if name == "train" else {**BEFORE["train"], **BEFORE["cases"][name]}
    now = compose_effective(CASES[name])
    retuned = RETUNED.get(name, {})
    # an argument added to a constructor since the recording ('<absent>' before) comes in at its signature default
    unexpected = [d for d in differences(before, now)
                  if DECIDED.get((d[1], d[2])) != (d[3], d[4]) and retuned.get(d[0]) != (d[3], d[4])
                  and d[3] != "<absent>"]
    assert not unexpected, "\n".join(f"{p} ({c}): {b!r} -> {n!r}" for p, c, _, b, n in unexpected)


def test_differences_names_the_callee_of_a_changed_argument() -> None:
    before = {"opt": {"_target_": "torch:AdamW", "weight_decay": 0.01, "lr": 0.1}}
    now = {"opt": {"_target_": "torch:AdamW", "weight_decay": 0.0, "lr": 0.1}}
    assert list(differences(before, now)) == [("opt.weight_decay", "torch:AdamW", "weight_decay", 0.01, 0.0)]


def _at(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("name", sorted(RETUNED))
def test_every_retuned_value_is_in_effect(name: str) -> None:
    """No stale allowance: each re-tuned key holds its new value (and had the old one in the recording)."""
    now = compose_effective(CASES[name])
    before = {**BEFORE["train"], **BEFORE["cases"][name]}
    for path, (old, new) in RETUNED[name].items():
        assert (_at(before, path), _at(now, path)) == (old, new), f"{name}: {path}"
