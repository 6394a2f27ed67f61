"""Imports point down the layers, and the CLI modules import each other without a cycle.

Order, top to bottom: deployments > flows > tasks > registry > data_checks > pynomaly. A module
may import its own layer or any layer below it, never one above (so registry never imports
tasks, and nothing below deployments imports it). Modules import each other without a cycle:
the CLI modules, and every module below deployments. Parsed with ast: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["deployments", "flows", "tasks", "registry", "data_checks", "pynomaly"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, wherever it sits (functions too)."""
    package = module_name(path).split(".")
    return imports_of(path.read_text(), package if path.name == "__init__.py" else package[:-1])


def imports_of(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, absolute module) of the imports in `source`, a module of `package`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from pkg import name` may name a submodule: record both
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def layer_files(layer: str) -> list[Path]:
    return sorted(p for p in (ROOT / layer).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("layer", ORDER)
def test_imports_point_down(layer: str) -> None:
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in layer_files(layer)
        for line, name in imported(path)
        if name.split(".")[0] in ORDER[: ORDER.index(layer)]
    ]
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk over the module graph."""
    cycles, done, stack = [], set(), []

    def visit(module: str) -> None:
        if module in stack:
            cycles.append([*stack[stack.index(module) :], module])
            return
        if module in done:
            return
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    return cycles


def test_cli_modules_have_no_cycle() -> None:
    files = [p for p in layer_files("deployments") if "cli" in p.relative_to(ROOT).parts[1]]
    modules = {module_name(p): p for p in layer_files("deployments")}
    edges = {
        module_name(path): {name for _, name in imported(path) if name in modules}
        - {module_name(path)}
        for path in files
    }
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    source = "def f():\n    from tasks.detectors import CATALOG\n    from . import out\n"
    found = imports_of(source, ["deployments", "cli"])
    assert (2, "tasks.detectors") in found
    assert (3, "deployments.cli.out") in found


def test_lower_layers_have_no_cycle() -> None:
    modules = {module_name(p): p for layer in ORDER[1:] for p in layer_files(layer)}
    edges = {
        name: {n for _, n in imported(path) if n in modules} - {name}
        for name, path in modules.items()
    }
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
