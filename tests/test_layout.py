"""The package's layout: no import cycle between its modules, no import hidden inside a function, and a first
docstring line saying each module's one job (read from the source files, not by importing them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "emnist_utils"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".")
    if level:
        base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path) -> set[str]:
    """The package modules `path` imports at module level (a `from x import y` of a submodule counts as x.y)."""
    name, tree = module_name(path), ast.parse(path.read_text())
    known = {module_name(p) for p in MODULES}
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = resolve(name, path.name == "__init__.py", node.level, node.module) if node.level else node.module
            if not source or not source.startswith("emnist_utils"):
                continue
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("emnist_utils")}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle in a directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    edges = graph()
    assert len(edges) >= 25  # every module was read
    assert "emnist_utils.core.registry" in edges["emnist_utils.core.trained_model"]
    assert find_cycle(edges) is None


def test_the_core_does_not_depend_on_experiments_or_notebooks():
    for name, targets in graph().items():
        if name.startswith("emnist_utils.core"):
            outside = {t for t in targets if not t.startswith("emnist_utils.core")}
            assert not outside, f"{name} imports {outside}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_inside_a_function(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            hidden = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not hidden, f"{path.name}:{hidden[0].lineno} imports inside {node.name}()"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_says_its_job_first(path):
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path} has no module docstring"
    assert len(docstring.splitlines()[0]) > 20
