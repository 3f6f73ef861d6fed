"""The code's shape: imports go one way, and no module or function grows past its bound.

Layers, bottom to top (a package imports only packages below it, never one above):

    services     the running service (events, settings, storage, inference, worker, ...)
    training     offline: data -> heads -> served repository; uses services' pure parts
    deploy       the embedded stack, compose and k8s helpers; runs services
    benchmarks   load and timing runs; may drive all of the above
    autolabel    the front door (`autolabel` CLI) and the demo: on top of everything

``training`` and ``deploy`` sit side by side: neither imports the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("services", "training", "deploy", "benchmarks", "autolabel")
FORBIDDEN: dict[str, set[str]] = {
    "services": {"training", "deploy", "benchmarks", "autolabel", "tests"},
    "training": {"deploy", "benchmarks", "autolabel", "tests"},
    "deploy": {"training", "benchmarks", "autolabel", "tests"},
    "benchmarks": {"autolabel", "tests"},
    "autolabel": {"tests"},
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``source``, nested ones too."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def layer_violations(package: str, files: dict[str, str]) -> list[str]:
    """``path:line imports X`` for every import of a package that ``package`` must not use."""
    bad = FORBIDDEN[package]
    return [f"{path}:{line} imports {top}" for path, source in sorted(files.items())
            for line, top in imported_packages(source) if top in bad]


def oversized(files: dict[str, str]) -> list[str]:
    """Modules over :data:`MAX_MODULE_LINES` lines and functions over :data:`MAX_FUNCTION_LINES`."""
    found = []
    for path, source in sorted(files.items()):
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{path}: {lines} lines (module)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator] - from `def` (decorators not counted)
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{node.lineno} {node.name}: {length} lines (function)")
    return found


def _sources(package: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / package).rglob("*.py"))}


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package: str) -> None:
    files = _sources(package)
    assert files, f"no Python files in {package}/"
    assert layer_violations(package, files) == []


def test_no_module_or_function_is_too_long() -> None:
    files = {path: source for package in PACKAGES for path, source in _sources(package).items()}
    assert oversized(files) == []


def test_the_checks_can_fail() -> None:
    bad = {"services/x.py": "import os\n\ndef f():\n    from training.serving.repository import build_repository\n",
           "services/y.py": "from deploy.local import stack\nfrom . import settings\n"}
    assert layer_violations("services", bad) == ["services/x.py:4 imports training", "services/y.py:1 imports deploy"]
    assert layer_violations("benchmarks", bad) == []
    long_fn = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert oversized({"a.py": long_fn, "b.py": long_module, "c.py": "def g():\n    pass\n"}) == [
        f"a.py:1 f: {MAX_FUNCTION_LINES + 1} lines (function)", f"b.py: {MAX_MODULE_LINES + 1} lines (module)",
    ]
