"""Fingerprints of the code that can change a result, so that a cached run or a saved model is never reused
after that code changed.

A fingerprint starts from a few definitions (an architecture class, the training loop, the split rule) and
follows every module-level name they use inside this package: functions, classes (with their bases),
constants and tables such as `ACTIVATIONS`, across imports. Each definition is hashed from its syntax tree
with docstrings removed, so editing a comment or a docstring keeps the fingerprint and anything else changes
it. The result maps each definition's qualified name to its hash, which lets a refusal name what changed.

It reads the package's source files, not the live objects, so the tests can fingerprint an edited copy. The
syntax trees are written out by `canonical_dump`, not `ast.dump`, because `ast.dump`'s output changes between
Python versions for the same source (3.12 adds `type_params=[]` to every function and class, 3.13 leaves empty
lists out): a model trained under one Python must load under another.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass
class _Module:
    name: str
    definitions: dict[str, list[ast.stmt]] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local -> (module, attribute)


def _strip_docstrings(node: ast.AST) -> ast.AST:
    for child in ast.walk(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = child.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                child.body = body[1:] or [ast.Pass()]
    return node


# Fields that newer Pythons added to the syntax tree; left out while empty, so a tree reads the same as it did
# under Python 3.11 (whose `ast.dump` output `canonical_dump` reproduces).
_NEWER_FIELDS = frozenset({"type_params"})
# Required fields that may hold None (the literal None); every other None is an absent optional field.
_NONE_VALUES = {"Constant": "value", "MatchSingleton": "value"}


def canonical_dump(node) -> str:
    """The syntax tree as text, the same under every Python version from 3.11: what Python 3.11's
    `ast.dump(node, include_attributes=False)` writes, independent of the running version's `ast.dump`."""
    if isinstance(node, ast.AST):
        parts = []
        kind = type(node).__name__
        for name in node._fields:
            value = getattr(node, name, None)
            if name in _NEWER_FIELDS and not value:
                continue
            if value is None and _NONE_VALUES.get(kind) != name:
                continue
            parts.append(f"{name}={canonical_dump(value)}")
        return f"{kind}({', '.join(parts)})"
    if isinstance(node, list):
        return "[" + ", ".join(canonical_dump(x) for x in node) + "]"
    return repr(node)


def _targets(stmt: ast.stmt) -> list[str]:
    """Module-level names a statement defines or changes (X = ..., X: T = ..., X += ..., X[k] = ...,
    X.update(...))."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    nodes = []
    if isinstance(stmt, ast.Assign):
        nodes = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        nodes = [stmt.target]
    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Attribute):
        nodes = [stmt.value.func.value]
    names = []
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.append(sub.id)
                break
    return names


class Fingerprinter:
    """Parses the modules of one package (lazily) and fingerprints definitions in it."""

    def __init__(self, package_dir: Path = PACKAGE_DIR):
        self.package_dir = Path(package_dir)
        self.package = self.package_dir.name
        self._modules: dict[str, _Module] = {}

    # --------------------------------------------------------------------------- parsing

    def _file(self, module: str) -> Path | None:
        parts = module.split(".")[1:]
        base = self.package_dir.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def _absolute(self, module: str, level: int, target: str | None) -> str:
        is_package = self._file(module) is not None and self._file(module).name == "__init__.py"
        base = module.split(".")
        if level:
            base = base[: len(base) - level + (1 if is_package else 0)]
        return ".".join(base + ([target] if target else []))

    def module(self, name: str) -> _Module | None:
        if name in self._modules:
            return self._modules[name]
        path = self._file(name)
        if path is None:
            return None
        info = _Module(name)
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom):
                source = self._absolute(name, stmt.level, stmt.module) if stmt.level else (stmt.module or "")
                if source.split(".")[0] != self.package:
                    continue
                for alias in stmt.names:
                    submodule = f"{source}.{alias.name}"
                    if self._file(submodule) is not None:
                        info.imports[alias.asname or alias.name] = (submodule, None)
                    else:
                        info.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.name.split(".")[0] == self.package and alias.asname:
                        info.imports[alias.asname] = (alias.name, None)
            else:
                for target in _targets(stmt):
                    info.definitions.setdefault(target, []).append(stmt)
        self._modules[name] = info
        return info

    # --------------------------------------------------------------------------- walking

    def _references(self, module: _Module, nodes: list[ast.stmt]) -> list[tuple[str, str]]:
        """(module, name) pairs of package definitions that `nodes` use."""
        found = []
        for node in nodes:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                    imported = module.imports.get(sub.value.id)
                    if imported and imported[1] is None:  # module.attribute
                        found.append((imported[0], sub.attr))
                if isinstance(sub, ast.Name):
                    if sub.id in module.definitions:
                        found.append((module.name, sub.id))
                    elif sub.id in module.imports and module.imports[sub.id][1] is not None:
                        found.append(module.imports[sub.id])
        return found

    def fingerprint(self, roots: list[tuple[str, str]], stop: frozenset[str] = frozenset()) -> dict[str, str]:
        """{qualified name: hash} of `roots` (module, name) and every package definition they reach.
        Names in `stop` are neither hashed nor followed (e.g. a registry that lists every architecture)."""
        result: dict[str, str] = {}
        todo = list(roots)
        while todo:
            module_name, name = todo.pop()
            qualified = f"{module_name}.{name}"
            if qualified in result or qualified in stop:
                continue
            module = self.module(module_name)
            if module is None:
                raise KeyError(f"no module {module_name} in {self.package_dir}")
            if name not in module.definitions:
                if name in module.imports:  # a re-export: follow it
                    target = module.imports[name]
                    todo.append(target if target[1] is not None else (target[0], name))
                    continue
                raise KeyError(f"{qualified} is not defined in {self.package_dir}")
            nodes = module.definitions[name]
            dumped = [canonical_dump(_strip_docstrings(copy.deepcopy(n))) for n in nodes]
            result[qualified] = hashlib.sha256("\n".join(dumped).encode()).hexdigest()[:16]
            todo.extend(self._references(module, nodes))
        # Names are reported relative to the package, so copies of it in other folders compare equal.
        return {k.replace(self.package, "emnist_utils", 1): v for k, v in sorted(result.items())}


def combine(parts: dict[str, str]) -> str:
    """One short hash for a whole fingerprint."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def changed(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """Names whose code differs between two fingerprints, added or removed ones included."""
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


@cache
def _cached(roots: tuple[tuple[str, str], ...], stop: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple(Fingerprinter().fingerprint(list(roots), stop).items())


def code_fingerprint(roots: list[tuple[str, str]], stop: frozenset[str] = frozenset()) -> dict[str, str]:
    """The fingerprint of this installed package's code (computed once per process)."""
    return dict(_cached(tuple(roots), frozenset(stop)))
