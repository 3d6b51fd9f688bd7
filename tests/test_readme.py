"""The README front page and the docs site: the example runs, links resolve, every trick is listed, no copies."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

import lit_tricks.callbacks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250


def _doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_readme_callbacks_example_runs_outside_the_repo(tmp_path: Path) -> None:
    """The 10-line example needs only the installed package: run it in a fresh directory, repo off sys.path."""
    example = next(b for b in _python_blocks(README.read_text()) if "from lit_tricks.callbacks import" in b)
    assert len(example.strip().splitlines()) <= 12  # 10 lines of code, give or take the imports
    assert "tests." not in example
    script = tmp_path / "example.py"
    script.write_text(
        example + "\nm = trainer.callback_metrics\n"
        "print('RESULT', float(m['test/acc']), float(m['test/acc_ensemble']))\n"
    )
    # `python example.py` in an empty directory: sys.path[0] is that directory, so only the installed package counts
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=220,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc, acc_ensemble = map(float, re.search(r"RESULT (\S+) (\S+)", proc.stdout).groups())  # type: ignore[union-attr]
    assert acc > 0.8 and acc_ensemble > 0.8


def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[0] == "## Two commands"
    assert "make train" in text.split("## Two commands")[1].split("##")[0]
    assert "make test" in text.split("## Two commands")[1].split("##")[0]


def test_every_callback_is_in_the_readme_table() -> None:
    """One table row per public Callback of lit_tricks.callbacks, each linking to a docs page that exists."""
    row = re.compile(r"^\| `(\w+)` \|[^\n]*\]\(([^)]+)\) \|$", re.M)
    rows = {m.group(1): m.group(2) for m in row.finditer(README.read_text())}
    callbacks = [n for n in lit_tricks.callbacks.__all__
                 if inspect.isclass(obj := getattr(lit_tricks.callbacks, n)) and issubclass(obj, pl.Callback)]
    assert len(callbacks) >= 11
    missing = [n for n in callbacks if n not in rows]
    assert not missing, f"callbacks missing from the README table: {missing}"
    for name in callbacks:
        assert (ROOT / rows[name]).is_file(), (name, rows[name])


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    links = [a or b for a, b in _LINK.findall(text)]
    return [t for t in links if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", [README, *_doc_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repo(page: Path) -> None:
    for target in _relative_links(page):
        resolved = (page.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
        assert resolved.exists(), f"{page.name}: broken link {target}"


def test_test_paths_named_in_the_docs_exist() -> None:
    """A page that says "Tests: tests/x.py" names a file that is there."""
    named = {m for page in [README, *_doc_pages()] for m in re.findall(r"`(tests/[\w/]+\.py)`", page.read_text())}
    assert named
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, missing


def test_no_internal_targets_in_user_docs() -> None:
    for page in [README, *_doc_pages()]:
        text = page.read_text()
        assert not re.search(r"\btargets?\b[^\n]{0,40}\d(\.\d+)?\s*(x|%)", text, flags=re.I), page
        assert "NOT meet" not in text and "target 1." not in text, page


def test_no_paragraph_in_two_places() -> None:
    """Never the same text in two places: no paragraph of 120+ characters is repeated across README and pages."""
    seen: dict[str, Path] = {}
    for page in [README, *_doc_pages()]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for para in re.split(r"\n\s*\n", text):
            key = " ".join(para.split())
            if len(key) < 120 or key.startswith("|"):
                continue
            assert key not in seen, f"{page.relative_to(ROOT)} repeats a paragraph of {seen[key].relative_to(ROOT)}"
            seen[key] = page


def test_mkdocs_config_builds_offline() -> None:
    """mkdocstrings sets docstring_style, loads no remote inventory; no web fonts; every nav page exists."""
    cfg = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)  # BaseLoader: no !tags to resolve
    assert cfg["theme"]["font"] == "false"
    plugins = {next(iter(p)) if isinstance(p, dict) else p: p for p in cfg["plugins"]}
    assert set(plugins) <= {"search", "mkdocstrings"}  # nothing that fetches (social, privacy, offline assets)
    python = plugins["mkdocstrings"]["mkdocstrings"]["handlers"]["python"]
    assert python["options"]["docstring_style"] == "google"
    assert "import" not in python and "inventories" not in python

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        return [p for v in nav for p in pages(v)]  # type: ignore[attr-defined]

    listed = pages(cfg["nav"])
    assert all((DOCS / p).is_file() for p in listed)
    assert {p.relative_to(DOCS).as_posix() for p in _doc_pages() if p.parent.name != "results"} == set(listed)
