"""The layering of the README's layout section: which package may import which.

Every module's imports (also those inside functions and under ``TYPE_CHECKING``) are read
with :mod:`ast`, so a lazy import cannot slip past the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> where its modules are
PACKAGES = {
    "pipeline": Path("pipeline"),
    "schemas": Path("schemas"),
    "workers": Path("workers"),
    "loadtest": Path("loadtest"),
    "tools": Path("tools"),
    "capacity": Path("capacity"),
    "adstream_client": Path("clients/python/adstream_client"),
    "tests": Path("tests"),
}

# The layers, bottom first: a package may import those below it, none above it, and
# nothing imports the tests.
LAYERS = ["pipeline", "schemas", "adstream_client", "workers", "loadtest", "capacity", "tools"]
FORBIDDEN = {package: {*LAYERS[i + 1:], "tests"} for i, package in enumerate(LAYERS)}
FORBIDDEN["tests"] = set()


# (module file, imported module) -> why it is still there. Each must still occur (so the
# entry goes when the import does); none may be added to make a new import pass.
KNOWN_EXCEPTIONS = {
    ("loadtest/bench.py", "tools.kafka"): "`adstream bench` starts a local broker when none "
    "answers; that step belongs in tools (the bench command), not in the load tester",
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``source`` imports (``from a.b import c`` gives
    ``a.b.c``); relative imports stay inside their package and are left out."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(root: Path, exceptions: dict[tuple[str, str], str] | None = None
               ) -> tuple[list[str], set[tuple[str, str]]]:
    """The imports under ``root`` that break :data:`FORBIDDEN` (as ``path:line: ...``), and
    which of ``exceptions`` were met."""
    exceptions = exceptions or {}
    broken, met = [], set()
    for package, folder in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, module in imported_modules(path.read_text(encoding="utf-8")):
                target = module.split(".")[0]
                if target not in FORBIDDEN[package]:
                    continue
                key = next((k for k in exceptions if k[0] == rel and
                            (module == k[1] or module.startswith(k[1] + "."))), None)
                if key is not None:
                    met.add(key)
                    continue
                broken.append(f"{rel}:{line}: {package} imports {module} "
                              f"({package} must not import {target})")
    return sorted(broken), met


def test_the_layers_are_the_rules_the_readme_states() -> None:
    assert FORBIDDEN["pipeline"] == {"schemas", "adstream_client", "workers", "loadtest",
                                     "capacity", "tools", "tests"}
    assert FORBIDDEN["schemas"] == {"adstream_client", "workers", "loadtest", "capacity",
                                    "tools", "tests"}
    assert FORBIDDEN["adstream_client"] == {"workers", "loadtest", "capacity", "tools", "tests"}
    assert FORBIDDEN["workers"] == {"loadtest", "capacity", "tools", "tests"}
    assert FORBIDDEN["loadtest"] == {"capacity", "tools", "tests"}
    assert FORBIDDEN["capacity"] == {"tools", "tests"}
    assert FORBIDDEN["tools"] == {"tests"}


def test_every_package_imports_only_what_the_layout_allows() -> None:
    broken, met = violations(ROOT, KNOWN_EXCEPTIONS)
    assert broken == [], "imports against the layout (README, Layout):\n" + "\n".join(broken)
    stale = set(KNOWN_EXCEPTIONS) - met
    assert not stale, f"exceptions no longer needed, remove them: {sorted(stale)}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_package_is_where_the_checker_looks(package: str) -> None:
    folder = ROOT / PACKAGES[package]
    assert len(list(folder.rglob("*.py"))) >= 2, f"{folder} holds no modules: the rule for " \
        f"{package} would check nothing"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_checker_finds_an_import_against_the_rules(tmp_path: Path) -> None:
    for folder in PACKAGES.values():
        _write(tmp_path, f"{folder.as_posix()}/__init__.py", "")
    _write(tmp_path, "pipeline/actor.py", "import os\nfrom pipeline import flow\n"
           "def f():\n    from workers.roles import run_roles\n")
    _write(tmp_path, "workers/x.py", "import tools.kafka as k\nfrom schemas import decode\n")
    _write(tmp_path, "schemas/m.py", "from pipeline.headers import now_ms\n")
    _write(tmp_path, "loadtest/bench.py", "from tools import kafka\n"
           "from tools.status import render\n")
    _write(tmp_path, "tools/cli.py", "from loadtest import bench\nfrom workers import roles\n")

    broken, met = violations(tmp_path, {("loadtest/bench.py", "tools.kafka"): "why"})

    assert broken == [
        "loadtest/bench.py:2: loadtest imports tools.status.render (loadtest must not import tools)",
        "pipeline/actor.py:4: pipeline imports workers.roles.run_roles (pipeline must not import workers)",
        "workers/x.py:1: workers imports tools.kafka (workers must not import tools)",
    ]
    assert met == {("loadtest/bench.py", "tools.kafka")}
