"""The shape of the code: every module lives in a room (a folder), components never import
recipes, the import graph has no cycle, long modules say why, and the command line's help path
imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import layerdrop

PACKAGE = Path(layerdrop.__file__).parent
RECIPES = {"recipes", "cli"}
"""The folder of recipes (each composes components into one command) and the command line;
everything else is a component."""
FOLDERS = {"cli", "config", "core", "cut", "data", "evaluation", "exits", "models", "recipes", "serving",
           "training"}
"""The rooms of the package (the README's "Code layout"); only ``__init__``, ``files`` and ``errors`` live beside
them."""
LONG = 450
"""Lines a module may have without saying, in its docstring, why it is longer ("Longer than 450 lines: ...")."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Project modules that ``path`` imports anywhere (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:  # `from . import data` imports the submodule data
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if (PACKAGE / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("layerdrop."):
            found.add(node.module.removeprefix("layerdrop."))
    found.discard("")
    found.discard(name)
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py")) if _module_name(p)}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.split(".")[0] not in RECIPES))
def test_component_never_imports_a_recipe(module):
    upward = sorted(m for m in GRAPH[module] if m.split(".")[0] in RECIPES)
    assert not upward, f"component {module} imports recipe(s) {upward}"


def test_every_module_lives_in_a_folder_of_the_layout():
    loose = sorted(m for m in GRAPH if "." not in m and m not in {"files", "errors"} and m not in FOLDERS)
    assert not loose, f"modules outside the layout's folders: {loose}"
    assert {m.split(".")[0] for m in GRAPH if "." in m} <= FOLDERS


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_over_450_lines_says_why(path):
    lines = path.read_text().count("\n")
    if lines > LONG:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert f"Longer than {LONG} lines:" in doc, f"{path.name} has {lines} lines and no reason in its docstring"


def test_import_graph_has_no_cycle():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt in GRAPH and not state.get(nxt):
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [])


@pytest.mark.parametrize("statement", ["import layerdrop", "import layerdrop.cli", "import layerdrop.config.args"])
def test_help_path_imports_no_torch(statement):
    code = f"{statement}; import sys; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], f"`{statement}` imported torch or transformers"
