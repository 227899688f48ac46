"""Imports go down the flow of data: a package imports only packages below it, and no modules import
each other in a circle. Read from the source (every import statement, also inside functions), so a
new module is checked the day it is added."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "moelab"

# config -> launch -> train -> models, data -> results -> report is the flow of data; a launch reads
# the experiment (config), writes job folders and runs training; report reads results; search sits
# between launch and config (launch's workers ask the study for trials, a trial is a point of the
# experiment); serve sits on top. A package may import only packages of a lower layer (or itself).
LAYERS = {
    "serve": 6,
    "launch": 5,
    "search": 4,
    "config": 3,  # reads the model and data registries and the typed train settings
    "train": 2,
    "report": 1,  # train draws a running variant's curves with it
    "export": 1,  # reads the tree through results, like report; launch's command line calls it
    "models": 1,
    "data": 1,
    "results": 0,
    "schema": 0,
}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "moelab" else None


def module_name(path: Path) -> str:
    relative = path.relative_to(SRC.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    # the package a relative import starts from: the module's own, or itself for a package's __init__
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from moelab.x import module`
    return {name for name in found if name.startswith("moelab.")}


def all_modules() -> dict[str, set[str]]:
    modules = {module_name(path): imports_of(path) for path in SRC.rglob("*.py")}
    # keep only names that are modules (from-imports of functions name no module)
    return {name: {i for i in imports if i in modules} for name, imports in modules.items()}


def test_every_package_has_a_layer():
    packages = {package_of(name) for name in all_modules()} - {None}
    assert packages <= set(LAYERS), f"give these packages a layer in LAYERS: {sorted(packages - set(LAYERS))}"


def test_imports_only_go_down_the_flow():
    wrong = []
    for module, imports in all_modules().items():
        here = package_of(module)
        for imported in imports:
            there = package_of(imported)
            if here and there and here != there and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} imports {imported} ({here} is layer {LAYERS[here]}, {there} is {LAYERS[there]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {m: {i for i in imports if i != m and not m.startswith(i + ".")} for m, imports in all_modules().items()}
    # a package's __init__ re-exports its modules: an import of the package stands for what it re-exports
    circles = []
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for imported in graph.get(module, ()):
            if state.get(imported) == 1:
                circles.append(" -> ".join(stack[stack.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, stack + [imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_checks_see_a_wrong_import(tmp_path, monkeypatch):
    """The test must be able to fail: a models module that imports config is caught."""
    fake = tmp_path / "moelab"
    (fake / "models").mkdir(parents=True)
    (fake / "config").mkdir()
    (fake / "models" / "bad.py").write_text("from moelab.config import grid\n")
    (fake / "config" / "grid.py").write_text("import moelab.models.bad\n")
    (fake / "models" / "relative.py").write_text("from ..config import grid\n")
    (fake / "models" / "__init__.py").write_text("from .relative import grid\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    modules = all_modules()
    assert modules["moelab.models.bad"] == {"moelab.config", "moelab.config.grid"} - {"moelab.config"}
    assert modules["moelab.models.relative"] == {"moelab.config.grid"}
    assert modules["moelab.models"] == {"moelab.models.relative"}
    try:
        test_imports_only_go_down_the_flow()
    except AssertionError as error:
        assert "moelab.models.bad imports moelab.config.grid" in str(error)
        assert "moelab.models.relative imports moelab.config.grid" in str(error)
    else:
        raise AssertionError("a models -> config import went unnoticed")
    try:
        test_no_import_circles()
    except AssertionError as error:
        assert "moelab.models.bad" in str(error) and "moelab.config.grid" in str(error)
    else:
        raise AssertionError("an import circle went unnoticed")
