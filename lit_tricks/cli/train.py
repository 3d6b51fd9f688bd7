"""``lit-tricks-train`` (= ``python scripts/train.py``): train one model, or a sweep with ``-m``, from the Hydra
config shipped in ``lit_tricks/conf`` (``lit-tricks-train optimizer=adamw optimizer.lr=3e-3``).

Bad input is one line on stderr: a rejected config (every bad key at once, exit status 2), an unknown group option
(exit status 1), or the root cause of an error raised while building or training (exit status 1; the traceback goes
to the run's ``train.log``). Under ``-m`` a failing job is recorded as failed and the sweep goes on.

Nothing here imports Lightning or torch at start-up: ``--cfg job``, ``--help`` and Hydra's composition errors (an
unknown preset) answer without them; the first job imports :mod:`lit_tricks.run` (:func:`_train`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from lit_tricks.cli.hydra_errors import condensed_hydra_errors
from lit_tricks.cli.noise import silence_third_party_noise
from lit_tricks.config_checks import ConfigError, SweepConfigError
from lit_tricks.hydra_utils import is_multirun
from lit_tricks.records import error_chain, root_error

__all__ = ["main"]


def _train() -> Callable[[DictConfig], float]:
    """:func:`lit_tricks.run.train`, imported as if Hydra had not set up logging yet.

    Lightning configures its loggers when it is imported: with no handler on the root logger it gives them their
    own console handler and stops propagation, so its lines stay plain on the console (not in Hydra's
    ``[time][logger][LEVEL]`` format), and :func:`lit_tricks.job_log.attach_hydra_file_log` copies them into
    ``train.log``. Imported here (in the job, after Hydra's logging set-up) it would see Hydra's handlers; the root
    handlers are set aside for the import, so a run logs as it did when this module imported Lightning at the top.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    for handler in handlers:
        root.removeHandler(handler)
    try:
        from lit_tricks.run import train
    finally:
        for handler in handlers:
            root.addHandler(handler)
    return train


@hydra.main(version_base="1.3", config_path="pkg://lit_tricks.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    train = _train()  # outside the try: a broken installation keeps its traceback
    try:
        return train(cfg)
    except ConfigError as err:
        # a sweep's job: its sweeper (Optuna: a failed trial) or its cluster launcher must get the error back; only
        # a problem every job of the sweep has ends the sweep here (in the launching process), with one line
        if os.environ.get("SUBMITIT_EXECUTOR") or (is_multirun() and not isinstance(err, SweepConfigError)):
            raise
        print(f"lit_tricks: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        # under -m, train() has recorded the job and re-raised only for a sweeper that records exceptions itself
        # (Optuna: FAIL, or PRUNED for optuna.TrialPruned): exiting here would end the whole sweep
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or is_multirun():
            raise
        chain = error_chain(err)
        print(f"lit_tricks: {root_error(err)}", file=sys.stderr)
        if len(chain) > 1:
            print(f"lit_tricks: raised as {chain[0]}", file=sys.stderr)
        print("lit_tricks: full traceback in the run's train.log (or set HYDRA_FULL_ERROR=1)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """Console entry point: compose ``train.yaml`` with the command-line overrides and run."""
    silence_third_party_noise()
    with condensed_hydra_errors():
        _hydra_main()


if __name__ == "__main__":
    main()
