"""Shared pytest set-up: one torch thread per test process (CI has 2 cores), quiet Lightning, and the test tiers.

Test tiers (docs/guide/install.md, "Test tiers"): a test that starts a process (subprocess, multiprocessing,
DataLoader workers), a process group (DDP/FSDP), a cluster or a database is marked ``slow``; ``make test-fast``
runs ``-m "not slow"``. A test without ``slow`` that starts a process or a process group fails, naming the mark to
add. ``serial`` tests (several processes at once, or wall-clock deadlines) run alone, after the parallel pass of
``make test``. ``ddp``, ``slurm`` and ``db`` imply ``slow`` and ``serial`` (added here).
"""

from __future__ import annotations

import logging
import multiprocessing.process
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
os.environ.setdefault("PL_DISABLE_FORK", "1")
for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(name).setLevel(logging.WARNING)

#: Marks that put a test in the slow tier and in make test's serial pass by themselves.
IMPLY_SLOW_SERIAL = ("ddp", "slurm", "db")

#: Probes the standard library runs by itself (ctypes.util.find_library, platform.processor): allowed everywhere.
SYSTEM_PROBES = ("ldconfig", "uname")

#: (owner, attribute, what it starts): the calls a test outside the slow tier may not make.
_STARTERS: list[tuple[Any, str, str]] = [
    (subprocess.Popen, "_execute_child", "a subprocess"),
    (multiprocessing.process.BaseProcess, "start", "a process (multiprocessing, DataLoader workers)"),
    (os, "fork", "a process (os.fork)"),
    (os, "posix_spawn", "a process (os.posix_spawn)"),
    (os, "posix_spawnp", "a process (os.posix_spawnp)"),
    (os, "system", "a process (os.system)"),
]
if torch.distributed.is_available():
    _STARTERS.append((torch.distributed, "init_process_group", "a process group"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(m) for m in IMPLY_SLOW_SERIAL):
            for mark in ("slow", "serial"):
                if item.get_closest_marker(mark) is None:
                    item.add_marker(mark)


def _program(cmd: Any) -> str:
    """The program name of a ``Popen`` command (a sequence or one string)."""
    first = cmd if isinstance(cmd, str | bytes | os.PathLike) else next(iter(cmd), "")
    return Path(os.fsdecode(first).split(" ")[0]).name


@contextmanager
def _refuse_processes(item: pytest.Item) -> Iterator[None]:
    """Outside the slow tier, starting a process or a process group fails the test with the mark to add."""
    if item.get_closest_marker("slow") is not None:
        yield
        return

    def refuse(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def starter(*args: Any, **kwargs: Any) -> Any:
            if original.__name__ == "_execute_child" and _program(args[1]) in SYSTEM_PROBES:
                return original(*args, **kwargs)
            ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(str(ROOT))
                    and ".venv" not in f.filename and f.filename != __file__]
            where = f" (at {Path(ours[-1].filename).relative_to(ROOT)}:{ours[-1].lineno})" if ours else ""
            pytest.fail(f"{item.nodeid} starts {what}{where} but is not marked slow: add @pytest.mark.slow (plus "
                        "ddp, slurm or db where that applies) or keep it in-process (docs/guide/install.md, Test "
                        "tiers)", pytrace=False)
        return starter

    present = [(owner, attr, what, getattr(owner, attr)) for owner, attr, what in _STARTERS if hasattr(owner, attr)]
    for owner, attr, what, original in present:
        setattr(owner, attr, refuse(what, original))
    try:
        yield
    finally:
        for owner, attr, _, original in present:
            setattr(owner, attr, original)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _refuse_processes(item):  # module and session fixtures set up for this test count as this test's
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _refuse_processes(item):
        return (yield)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
