"""Hydra's composition errors, and bad arguments of Hydra plugins, as one line (the only module that touches Hydra
internals; see its test).

Hydra prints an unknown group option (``scheduler=does_not_exist``) as 14-22 lines: the missing file, every option
one per line, the whole config search path and a hint about ``HYDRA_FULL_ERROR``. :func:`condensed_hydra_errors`
makes it one line naming the group, the value and the valid options. A sweeper or launcher that refuses its
arguments (an :class:`~lit_tricks.validation.ArgumentError` or a ``ConfigError`` anywhere in the cause chain, e.g.
``hydra.sweeper.n_trials=-3``) is one line too, exit status 2; other errors keep Hydra's own report.
Internals used: ``hydra._internal.utils.run_and_report`` (wraps every composition step of ``@hydra.main``) and
``MissingConfigException.missing_cfg_file`` / ``.options`` (hydra-core 1.3).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["bad_argument", "condense_hydra_error", "condensed_hydra_errors"]


def bad_argument(err: BaseException) -> str | None:
    """The one line of an ``ArgumentError`` / ``ConfigError`` in ``err``'s cause chain (a plugin refused its
    arguments; Hydra wraps it in an ``InstantiationException``), or None."""
    from lit_tricks.validation import ArgumentError

    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not s for s in seen):
        if isinstance(current, ArgumentError):
            return str(current)
        problems = getattr(current, "problems", None)
        if isinstance(current, ValueError) and isinstance(problems, list) and problems:
            return "; ".join(str(p) for p in problems)
        seen.append(current)
        current = current.__cause__ or current.__context__
    return None


def _group_option_hint(line: str) -> str:
    """For ``Could not override 'callbacks.early_stopping.patience'``: how to add the option that holds the key."""
    import re
    from pathlib import Path

    import lit_tricks

    found = re.search(r"Could not override '([\w.]+)'", line)
    parts = found.group(1).split(".") if found else []
    conf = Path(lit_tricks.__file__).parent / "conf"
    if len(parts) >= 3 and (conf / parts[0] / f"{parts[1]}.yaml").is_file():
        group, option = parts[0], parts[1]
        return (f" ({group}.{option} is not in this config; add it first: '{group}=[default,{option}]' "
                f"{found.group(1)}=..., not +{found.group(1)}=...)")  # type: ignore[union-attr]
    return ""


def condense_hydra_error(err: BaseException) -> str | None:
    """One line for a Hydra composition error, or None when ``err`` is not one this module condenses."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException):
        missing = str(getattr(err, "missing_cfg_file", "") or "")
        options = list(getattr(err, "options", None) or [])
        group, _, option = missing.rpartition("/")
        if group and options:
            return (f"{group}={option}: no such option (Could not find '{missing}'); "
                    f"valid options for {group}: {', '.join(options)}")
        return str(err).strip().splitlines()[0]
    if isinstance(err, ConfigCompositionException | OverrideParseException):
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        cause = err.__cause__
        if cause is not None and str(cause).strip():
            lines.append(str(cause).strip().splitlines()[0])
        return " ".join(lines[:2]) + _group_option_hint(" ".join(lines[:2])) if lines else None
    return None


@contextlib.contextmanager
def condensed_hydra_errors(prefix: str = "lit_tricks: ") -> Iterator[None]:
    """Within the block, ``@hydra.main`` reports composition errors as one line on stderr (exit status 1), and
    refused plugin arguments as one line (exit status 2).

    ``HYDRA_FULL_ERROR=1`` keeps Hydra's full traceback, as without this context manager.
    """
    from hydra._internal import utils as hydra_utils

    original: Callable[[Any], Any] = hydra_utils.run_and_report

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except Exception as ex:
            full = os.environ.get("HYDRA_FULL_ERROR") == "1"
            bad = None if full else bad_argument(ex)
            line = None if full or bad else condense_hydra_error(ex)
            if bad is None and line is None:
                return original(_reraise(ex))
            sys.stderr.write(prefix + (bad or line or "") + "\n")
            sys.exit(2 if bad else 1)

    hydra_utils.run_and_report = run_and_report  # type: ignore[assignment]
    try:
        yield
    finally:
        hydra_utils.run_and_report = original  # type: ignore[assignment]


def _reraise(err: BaseException) -> Callable[[], Any]:
    def again() -> Any:
        raise err

    return again
