"""Presets set only what they change: the effective constructor arguments are those recorded before the trim.

``effective_before.json`` holds, for the default train config, every experiment and every group option, what each
``_target_`` received (signature defaults + the keys set) on the commit before the presets were cut down to their
deliberate differences (``record_before.py``). Today's values must equal them, except the defaults decided in
CHANGELOG.md (0.1.0, "Defaults decided once"), listed in :data:`DECIDED`.
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
    # an argument added to a constructor since the recording ('<absent>' before) comes in at its signature default
    unexpected = [d for d in differences(before, now)
                  if DECIDED.get((d[1], d[2])) != (d[3], d[4]) and d[3] != "<absent>"]
    assert not unexpected, "\n".join(f"{p} ({c}): {b!r} -> {n!r}" for p, c, _, b, n in unexpected)


def test_differences_names_the_callee_of_a_changed_argument() -> None:
    before = {"opt": {"_target_": "torch:AdamW", "weight_decay": 0.01, "lr": 0.1}}
    now = {"opt": {"_target_": "torch:AdamW", "weight_decay": 0.0, "lr": 0.1}}
    assert list(differences(before, now)) == [("opt.weight_decay", "torch:AdamW", "weight_decay", 0.01, 0.0)]
