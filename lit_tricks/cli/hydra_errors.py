"""Hydra's composition errors as one line (the only module that touches Hydra internals; see its test).

Hydra prints an unknown group option (``scheduler=does_not_exist``) as 14-22 lines: the missing file, every option
one per line, the whole config search path and a hint about ``HYDRA_FULL_ERROR``. :func:`condensed_hydra_errors`
makes it one line naming the group, the value and the valid options; other errors keep Hydra's own report.
Internals used: ``hydra._internal.utils.run_and_report`` (wraps every composition step of ``@hydra.main``) and
``MissingConfigException.missing_cfg_file`` / ``.options`` (hydra-core 1.3).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["condense_hydra_error", "condensed_hydra_errors"]


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
        return " ".join(lines[:2]) if lines else None
    return None


@contextlib.contextmanager
def condensed_hydra_errors(prefix: str = "lit_tricks: ") -> Iterator[None]:
    """Within the block, ``@hydra.main`` reports composition errors as one line on stderr (exit status 1).

    ``HYDRA_FULL_ERROR=1`` keeps Hydra's full traceback, as without this context manager.
    """
    from hydra._internal import utils as hydra_utils

    original: Callable[[Any], Any] = hydra_utils.run_and_report

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except Exception as ex:
            line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else condense_hydra_error(ex)
            if line is None:
                return original(_reraise(ex))
            sys.stderr.write(prefix + line + "\n")
            sys.exit(1)

    hydra_utils.run_and_report = run_and_report  # type: ignore[assignment]
    try:
        yield
    finally:
        hydra_utils.run_and_report = original  # type: ignore[assignment]


def _reraise(err: BaseException) -> Callable[[], Any]:
    def again() -> Any:
        raise err

    return again
