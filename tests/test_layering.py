"""
The house plan, checked: no module imports upward, and no import cycles.

Layers, lowest first: ``core`` (pure: nothing of ``twisted.internet``),
``source``, ``net``, ``web`` and ``onion``, ``app``; ``tap`` hands names
on to the plugin.  A module may import its own layer and the layers below
it, never one above.  Imports inside functions count too: a deferred import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "entropy_appliance"

#: What each layer may import from the package, besides itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "source": {"core"},
    "net": {"core", "source"},
    "web": {"core", "source", "net"},
    "onion": {"core", "net"},
    "app": {"core", "source", "net", "web", "onion"},
    "tap": {"core", "source", "net", "web", "onion", "app"},
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(path: Path) -> set[str]:
    """The package modules (and twisted.internet) that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import submodule`` depends on the submodule; names
            # that are not modules come from ``pkg`` itself.
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {name for name in found
            if name.startswith("entropy_appliance") or name.startswith("twisted.internet")}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = modules()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in ALLOWED))
def test_no_module_imports_upward(module: str) -> None:
    own = layer(module)
    assert own is not None
    wrong = sorted(
        name for name in imports_of(MODULES[module])
        if name.startswith("entropy_appliance.") and layer(name) not in ALLOWED[own] | {own}
    )
    assert wrong == [], f"{module} ({own}) imports a layer above it: {wrong}"


def test_the_core_imports_nothing_of_twisted_internet() -> None:
    for module, path in MODULES.items():
        if layer(module) == "core":
            assert not [n for n in imports_of(path) if n.startswith("twisted.internet")], module


def test_no_import_cycles() -> None:
    graph = {
        module: {name for name in imports_of(path) if name in MODULES and name != module}
        for module, path in MODULES.items()
    }
    # Importing a package's submodule runs the package's __init__ first, but
    # an __init__ that only hands names on is not a cycle of its own making.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
