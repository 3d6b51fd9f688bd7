"""Start-up of ``lit-tricks-train`` (issue 28): ``--cfg job``, ``--help`` and a composition error (an unknown preset)
answer without importing Lightning or torch; the first job imports them (:func:`lit_tricks.cli.train._train`)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lit_tricks.cli import train as cli_train
from lit_tricks.config_bases import cached_bases

#: One process runs the command's ``main`` three times, then names the heavy packages it imported.
CODE = """
import json, sys
from lit_tricks.cli.train import main
codes = {}
for args in (["--cfg", "job", "experiment=mnist1d_tricks"], ["--help"], ["scheduler=does_not_exist"]):
    sys.argv = ["lit-tricks-train", *args]
    try:
        main()
        codes[args[0]] = 0
    except SystemExit as exit:
        codes[args[0]] = exit.code
heavy = ("lightning", "torch", "torchmetrics", "torchvision")
print(json.dumps({"codes": codes, "imported": [m for m in heavy if m in sys.modules]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cfg_help_and_an_unknown_preset_import_neither_lightning_nor_torch(tmp_path: Path) -> None:
    cached_bases(tmp_path)  # a warm cache of the base configs (a miss builds them, importing every target)
    env = {**os.environ, "LIT_TRICKS_CACHE_DIR": str(tmp_path), "LIT_TRICKS_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"codes": {"--cfg": 0, "--help": 0, "scheduler=does_not_exist": 1}, "imported": []}
    assert "_target_: lit_tricks.data.MNIST1DDataModule" in proc.stdout  # --cfg job printed the composed config
    assert "scheduler=does_not_exist: no such option" in proc.stderr
    assert not (tmp_path / "logs").exists()  # nothing ran


def test_the_first_job_imports_lightning_as_before_hydra_set_up_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_train`` hides the root logger's handlers while it imports ``lit_tricks.run`` (Lightning then keeps its
    lines plain on the console; tests/test_train.py checks the console of a real run) and puts them back."""
    root = logging.getLogger()
    seen: list[list[logging.Handler]] = []
    real_import = __import__

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "lit_tricks.run":
            seen.append(list(root.handlers))
        return real_import(name, *args, **kwargs)

    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        before = list(root.handlers)
        monkeypatch.setattr("builtins.__import__", spy)
        train = cli_train._train()
        monkeypatch.undo()
        assert root.handlers == before
    finally:
        root.removeHandler(handler)
    assert seen == [[]]  # no root handler while the import configures Lightning's loggers
    assert train is sys.modules["lit_tricks.run"].train
