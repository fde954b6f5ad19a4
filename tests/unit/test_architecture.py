"""The package's layout is a contract: what each part may import (docs/architecture.md), no cycles.

Read from the source with ``ast``, so an import inside a function counts as much as one at the
top: a lazily imported module is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"

#: The base modules: every other part builds on them, they build on nothing of the exporter's.
BASE = {"exporter", "exporter.exposition", "exporter.records", "exporter.deadline", "exporter.logs"}

#: Each part (a package, or a top-level module) and the parts it may import besides itself and BASE.
ALLOWED: dict[str, set[str]] = {
    "exporter.kernel": set(),
    "exporter.ovsdb": set(),
    "exporter.config": {"exporter.kernel", "exporter.ovsdb"},
    "exporter.http": {"exporter.config"},
    "exporter.collector": {"exporter.kernel", "exporter.ovsdb", "exporter.config"},
    "exporter.cli": {
        "exporter.kernel",
        "exporter.ovsdb",
        "exporter.config",
        "exporter.http",
        "exporter.collector",
    },
    "exporter.__main__": {"exporter.cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every exporter module ``path`` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("exporter"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                # ``from exporter.kernel import netns`` imports a module; ``from x import Name`` does not.
                sub = PACKAGE.parent / Path(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").exists() or sub.is_dir() else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    """The part a module belongs to: its subpackage of exporter, or the top-level module itself."""
    pieces = module.split(".")
    return ".".join(pieces[:2])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_what_its_part_may(module: str) -> None:
    if module in BASE:
        allowed_parts: set[str] = set()
    else:
        allowed_parts = {part(module)} | ALLOWED[part(module)]
    wrong = sorted(
        dep for dep in imports(MODULES[module]) if dep not in BASE and part(dep) not in allowed_parts
    )
    assert not wrong, f"{module} may not import {wrong} (docs/architecture.md, 'What may import what')"


def test_every_part_is_listed() -> None:
    parts = {part(m) for m in MODULES} - BASE
    assert parts == set(ALLOWED), "a new part of the package needs its import rule here and in the docs"


def test_no_import_cycle_between_modules() -> None:
    graph = {m: {d for d in imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}
    graph["exporter"] = set()  # the package's __init__ only reads its version
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
