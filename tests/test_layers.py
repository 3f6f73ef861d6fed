"""The code's shape: imports go one way, and no module or function grows past its bound.

Layers, bottom to top (a package imports only packages below it, never one above):

    services     the running service (events, settings, storage, inference, worker, ...)
    training     offline: data -> heads -> served repository; uses services' pure parts
    deploy       the embedded stack, compose and k8s helpers; runs services
    benchmarks   load and timing runs; may drive all of the above
    autolabel    the front door (`autolabel` CLI) and the demo: on top of everything
    studies      one-off measurements quoted in docs/accuracy.md (``python -m studies.season``): nothing imports them

Inside ``training`` the sub-packages run in data-flow order (:data:`TRAINING_MAY_IMPORT`): data -> features -> heads ->
manifest (the models folder) -> steps (the commands' work) and serving (the repository build) -> evaluation -> cli.

``training`` and ``deploy`` sit side by side: neither imports the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("services", "training", "deploy", "benchmarks", "autolabel", "studies")
FORBIDDEN: dict[str, set[str]] = {
    "services": {"training", "deploy", "benchmarks", "autolabel", "studies", "tests"},
    "training": {"deploy", "benchmarks", "autolabel", "studies", "tests"},
    "deploy": {"training", "benchmarks", "autolabel", "studies", "tests"},
    "benchmarks": {"autolabel", "studies", "tests"},
    "autolabel": {"studies", "tests"},
    "studies": {"deploy", "benchmarks", "autolabel", "tests"},
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# training/'s sub-packages: which others each may import (errors.py, at the top, is open to all).
TRAINING_MAY_IMPORT: dict[str, set[str]] = {
    "data": set(),
    "features": {"data"},
    "heads": {"data", "features"},  # fine-tuning trains backbone layers
    "manifest": {"features", "heads"},  # BackboneSpec, TextConfig; the fitted heads' types, the untrained fixtures
    "steps": {"data", "features", "heads", "manifest"},
    "serving": {"data", "features", "heads", "manifest"},  # data: the int8 build calibrates on photos of the split
    "evaluation": {"data", "features", "heads", "manifest", "serving"},
    "cli": {"data", "features", "heads", "manifest", "steps", "serving", "evaluation"},
}
TRAINING_TOP = {"__init__.py", "errors.py"}
MANIFEST_OWNER = "training/manifest/folder.py"  # the one module that names the models folder's manifest.json
TRAINING_MAX_MODULE_LINES = 300
TRAINING_MAX_FUNCTION_LINES = 60


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


def _module_of(path: str) -> str:
    return ".".join(Path(path).with_suffix("").parts).removesuffix(".__init__")


def training_violations(files: dict[str, str]) -> list[str]:
    """``path:line sub -> other`` for every import between training's sub-packages that :data:`TRAINING_MAY_IMPORT` does not allow."""
    found = []
    for path, source in sorted(files.items()):
        parts = Path(path).parts
        if len(parts) < 3 or parts[0] != "training":
            continue
        sub = parts[1]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("training."):
                other = node.module.split(".")[1]
                if other not in (sub, "errors") and other not in TRAINING_MAY_IMPORT.get(sub, set()):
                    found.append(f"{path}:{node.lineno} {sub} -> {other}")
    return found


def private_imports(files: dict[str, str]) -> list[str]:
    """``path:line name`` for every ``from <our module> import _name`` (a private name used outside its module)."""
    ours = set(PACKAGES)
    return [f"{path}:{node.lineno} {alias.name}" for path, source in sorted(files.items()) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in ours
            for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]


def import_circles(files: dict[str, str]) -> list[list[str]]:
    """Circles among the modules of ``files`` (imports at any depth, lazy ones too)."""
    graph: dict[str, set[str]] = {}
    for path, source in files.items():
        deps = graph.setdefault(_module_of(path), set())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ()) & graph.keys()):
            if state.get(dep) == 1:
                found.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    return found


def manifest_namers(files: dict[str, str]) -> list[str]:
    """Modules other than :data:`MANIFEST_OWNER` with the string ``"manifest.json"`` in their code."""
    return [f"{path}:{node.lineno}" for path, source in sorted(files.items()) if path != MANIFEST_OWNER
            for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant) and node.value == "manifest.json"]


def test_training_sub_packages_import_in_data_flow_order() -> None:
    files = _sources("training")
    top = {Path(p).name for p in files if len(Path(p).parts) == 2}
    assert top == TRAINING_TOP, f"only errors.py and __init__.py at training/'s top: {sorted(top - TRAINING_TOP)}"
    subs = {Path(p).parts[1] for p in files if len(Path(p).parts) > 2}
    assert subs == set(TRAINING_MAY_IMPORT), subs ^ set(TRAINING_MAY_IMPORT)
    assert training_violations(files) == []
    assert import_circles(files) == []


def test_no_private_name_is_imported_across_modules() -> None:
    files = {path: source for package in PACKAGES for path, source in _sources(package).items()}  # tests may reach in
    assert private_imports(files) == []


def test_only_the_models_folder_owner_names_manifest_json() -> None:
    assert manifest_namers(_sources("training")) == []
    assert "manifest.json" in (ROOT / MANIFEST_OWNER).read_text()


def test_only_training_cli_uses_click() -> None:
    """The commands' work lives under steps/, serving/ and evaluation/; cli/ parses, calls one function, prints."""
    users = sorted(path for path, source in _sources("training").items() if not path.startswith("training/cli/")
                   and "click" in [top for _, top in imported_packages(source)])
    assert users == []


def _training_oversized(files: dict[str, str]) -> set[str]:
    found = set()
    for path, source in files.items():
        if len(source.splitlines()) > TRAINING_MAX_MODULE_LINES:
            found.add(f"{path}: module")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > TRAINING_MAX_FUNCTION_LINES:  # type: ignore[operator]
                found.add(f"{path} {node.name}")
    return found


def test_training_modules_and_functions_keep_the_stricter_bounds() -> None:
    assert sorted(_training_oversized(_sources("training"))) == []


def test_the_training_checks_can_fail() -> None:
    bad = {"training/heads/x.py": "def f():\n    from training.serving.graphs import build_graphs\n",
           "training/data/y.py": "from training.errors import ModelsError\nfrom training.data.split import PARTS\n",
           "training/features/z.py": "from training.cli.options import parse_tasks\nfrom training.features.cache import _private\n"}
    assert training_violations(bad) == ["training/features/z.py:1 features -> cli", "training/heads/x.py:2 heads -> serving"]
    assert private_imports(bad) == ["training/features/z.py:2 _private"]
    assert import_circles({"training/a/m.py": "from training.a.n import x\n", "training/a/n.py": "def f():\n    from training.a.m import y\n"}) == [
        ["training.a.m", "training.a.n", "training.a.m"]]
    assert manifest_namers({"training/steps/s.py": 'p = d / "manifest.json"\n', MANIFEST_OWNER: 'M = "manifest.json"\n'}) == ["training/steps/s.py:1"]
    assert _training_oversized({"training/a.py": "def f():\n" + "    x = 1\n" * TRAINING_MAX_FUNCTION_LINES}) == {"training/a.py f"}


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
