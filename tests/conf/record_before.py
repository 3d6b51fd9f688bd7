"""Write ``effective_before.json``: the effective constructor arguments of every case of ``effective.cases()``.

Every case but the default train config is stored as its top-level keys that differ from it, one case a line. Run
once, on the commit before the presets were trimmed to their deliberate differences (``python -m
tests.conf.record_before`` from the repository root); ``test_effective.py`` compares every later commit with it.
"""

from __future__ import annotations

import json
import subprocess

from tests.conf.effective import FIXTURE, cases, compose_effective


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    values = {name: compose_effective(overrides) for name, overrides in cases().items()}
    train = values.pop("train")
    # every other case as its top-level keys that differ from the default train config (keeps the file small)
    deltas = {name: {k: v for k, v in case.items() if train.get(k) != v} for name, case in values.items()}
    lines = [f" {json.dumps(name)}: {json.dumps(delta, sort_keys=True)}" for name, delta in sorted(deltas.items())]
    FIXTURE.write_text(f'{{"commit": "{commit}",\n"train": {json.dumps(train, indent=1, sort_keys=True)},\n'
                       '"cases": {\n' + ",\n".join(lines) + "\n}}\n")
    print(f"{FIXTURE}: {len(values) + 1} cases at {commit}")


if __name__ == "__main__":
    main()
