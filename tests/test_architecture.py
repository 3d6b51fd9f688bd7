"""The import picture of ``lit_tricks`` (docs/architecture.md, "Who imports whom"): every module imports, no cycle
between packages, and none of the "never" pairs. Imports are read from the source with ``ast``, function-local ones and
``importlib.import_module("lit_tricks....")`` calls included, so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
import importlib
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_tricks"

#: (importer room, imported room, why) that must never occur. A room is a subpackage (``callbacks``) or a top-level
#: module (``run``, ``builders``, ``config_checks``).
NEVER = [
    ("callbacks", "modules", "callbacks work on any LightningModule, never TrickModule"),
    ("data", "models", "data knows no model"),
    ("data", "modules", "data knows no model"),
    ("modules", "data", "modules know no data"),
    ("models", "modules", "reference nets stand below the LightningModules"),
    ("trainers", "sweeps", "every run builds its Trainer; sweeps are only multirun tools"),
    ("builders", "sweeps", "a single run needs nothing of sweeps"),
    ("run", "sweeps", "a single run needs nothing of sweeps"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts)


def room(module: str) -> str:
    """The room of a module: ``lit_tricks.callbacks.ema`` -> ``callbacks``; ``lit_tricks.run`` -> ``run``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _resolve(name: str) -> str:
    """The module a dotted import name lands in: ``lit_tricks.fault.atomic.atomic_open`` -> ``...fault.atomic``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


@cache
def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(lit_tricks modules, other top-level names) that ``module`` imports anywhere in its source."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    is_pkg = not path.is_file()
    if is_pkg:
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    ours: set[str] = set()
    others: set[str] = set()

    def add(name: str) -> None:
        if name == "lit_tricks" or name.startswith("lit_tricks."):
            ours.add(_resolve(name))
        elif name != "__future__":
            others.add(name.split(".")[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_pkg else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            for alias in node.names:
                add(f"{prefix}.{alias.name}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    ours.discard(module)
    return ours, others


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        src = room(module)
        targets = {room(t) for t in imports_of(module)[0]} - {src, "lit_tricks"}
        graph.setdefault(src, set()).update(targets)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Level of each room: 1 + the highest level it imports (rooms importing nothing of ours are level 1)."""
    memo: dict[str, int] = {}

    def level(node: str) -> int:
        if node not in memo:
            memo[node] = 1 + max((level(t) for t in graph.get(node, ())), default=0)
        return memo[node]

    return {node: level(node) for node in sorted(graph)}


@pytest.mark.timeout(240)
def test_every_module_imports() -> None:
    failed = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as err:  # pragma: no cover - the assertion below reports it
            failed.append(f"{module}: {type(err).__name__}: {err}")
    assert not failed, "\n".join(failed)


def test_no_import_cycle_between_packages() -> None:
    graph = room_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between lit_tricks packages: {' -> '.join(cycle)}"
    # 6 levels: ... -> config_checks -> run -> cli (the console entry points sit on top of run)
    assert max(levels(graph).values()) <= 6, levels(graph)


def test_find_cycle_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(("src", "dst", "why"), NEVER)
def test_never_pairs(src: str, dst: str, why: str) -> None:
    bad = sorted(f"{m} -> {t}" for m in MODULES if room(m) == src
                 for t in imports_of(m)[0] if room(t) == dst)
    assert not bad, f"{src} must never import {dst} ({why}): {bad}"


def test_functional_imports_only_torch_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"torch"}
    bad = []
    for module in MODULES:
        if room(module) != "functional":
            continue
        ours, others = imports_of(module)
        bad += [f"{module} -> {t}" for t in sorted(ours) if room(t) != "functional"]
        bad += [f"{module} -> {name}" for name in sorted(others - allowed)]
    assert not bad, f"functional/ imports torch and the standard library only: {bad}"


def test_callbacks_do_not_import_each_other() -> None:
    bad = sorted(f"{m} -> {t}" for m in MODULES if room(m) == "callbacks" and m != "lit_tricks.callbacks"
                 for t in imports_of(m)[0] if room(t) == "callbacks")
    assert not bad, f"two callbacks share math through functional/, never by importing each other: {bad}"


def test_nothing_imports_run_scripts_tests_or_benchmarks() -> None:
    bad = []
    for module in MODULES:
        ours, others = imports_of(module)
        if not module.startswith("lit_tricks.cli"):  # the console entry points stand above run, as scripts/ do
            bad += [f"{module} -> lit_tricks.run" for t in ours if t == "lit_tricks.run"]
        bad += [f"{module} -> {name}" for name in others & {"scripts", "tests", "benchmarks"}]
    assert not bad, f"lit_tricks.run is the top; the package never imports scripts/tests/benchmarks: {bad}"


def test_the_rules_see_function_local_and_importlib_imports() -> None:
    ours, _ = imports_of("lit_tricks.sweeps.ensemble")  # builders and callbacks are imported inside a function
    assert {"lit_tricks.builders", "lit_tricks.callbacks.ensemble"} <= ours
    assert "lit_tricks.trainers.strategies" in imports_of("lit_tricks.trainers.build")[0]


def test_files_and_callback_classes_stay_readable() -> None:
    """No file of the package over 300 lines, no class that subclasses a Lightning Callback over 250 (issue 22):
    state and math live in Trainer-free objects under functional/ and fault/, callbacks adapt hooks to them."""
    long_files, long_callbacks = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if (n := len(text.splitlines())) > 300:
            long_files.append(f"{path.relative_to(ROOT)}: {n}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                cls = getattr(importlib.import_module(_module_name(path)), node.name, None)
                if size > 250 and isinstance(cls, type) and issubclass(cls, _lightning_callback()):
                    long_callbacks.append(f"{path.relative_to(ROOT)}::{node.name}: {size}")
    assert not long_files, f"files over 300 lines: {long_files}"
    assert not long_callbacks, f"callback classes over 250 lines: {long_callbacks}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lightning_callback() -> type:
    from lightning.pytorch.callbacks import Callback

    return Callback
