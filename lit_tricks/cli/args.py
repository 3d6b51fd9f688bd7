"""The argument parser of the ``lit-tricks-*`` commands: a bad argument is one line naming it (exit status 2)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["Parser", "fraction", "positive_int"]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``<prog>: <problem> (see <prog> --help)``.

    argparse prints the whole usage (several wrapped lines) above the error; the command's name and ``--help``
    lead to the same place in one line.
    """

    def __init__(self, prog: str, doc: str | None) -> None:
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def positive_int(text: str) -> int:
    """An ``int >= 1`` (argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in ``(0, 1]`` (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value
