"""The layers of the project, read from its import graph: no import cycle among the modules of
``receiver/`` and ``handlers/``, and the core never imports the operator's console.

The graph is read from the source with :mod:`ast`, not by importing: an import inside a function
counts (it is a dependency all the same, only deferred), one under ``if TYPE_CHECKING:`` does
not (it never runs). ``from package import name`` depends on ``package`` and, when ``name`` is a
module, on ``package.name``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("receiver", "handlers")

# Cycles known and owned elsewhere, each removed with the cycle. An entry that no longer
# matches a cycle fails the test too, so that the list only names what is true.
ALLOWED_CYCLES: set[frozenset[str]] = set()

# The console is the operator's side: only the app that mounts it may import it.
CONSOLE = "receiver.console"
MAY_IMPORT_CONSOLE = {"receiver.app"}


def modules(root: Path, tops: Iterable[str]) -> dict[str, Path]:
    """Every module under ``tops``, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imports(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The project's modules that module ``name`` (at ``path``) imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            # the nearest enclosing module of the project (a name imported from a module)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(known: Mapping[str, Path]) -> dict[str, set[str]]:
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _show(components: Iterable[frozenset[str]]) -> list[str]:
    return sorted(" <-> ".join(sorted(c)) for c in components)


def test_no_import_cycle_among_the_projects_modules() -> None:
    """Every cycle in the import graph of receiver/ and handlers/ is a known, listed one, and
    every listed one still exists."""
    found = set(cycles(graph(modules(ROOT, TOPS))))
    assert _show(found - ALLOWED_CYCLES) == [], "import cycles"
    assert _show(ALLOWED_CYCLES - found) == [], "listed as allowed but gone: remove the entry"


def test_the_core_never_imports_the_console() -> None:
    """Only receiver.app, which mounts it, imports a module of receiver/console/; the console
    imports nothing of the app."""
    edges = graph(modules(ROOT, TOPS))

    def is_console(module: str) -> bool:
        return module == CONSOLE or module.startswith(CONSOLE + ".")

    outside = {f"{name} -> {target}" for name, targets in edges.items() if not is_console(name)
               and name not in MAY_IMPORT_CONSOLE for target in targets if is_console(target)}
    assert sorted(outside) == []
    into_app = {name for name, targets in edges.items() if is_console(name)
                and "receiver.app" in targets}
    assert sorted(into_app) == []


def test_the_graph_sees_deferred_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """An import inside a function is an edge, one under ``if TYPE_CHECKING:`` is not, and a
    name imported from a package leads to the package and to the module of that name."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import run\n")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import c\n"
        "def run() -> None:\n    from pkg import b\n")
    (package / "b.py").write_text("from . import c\n")
    (package / "c.py").write_text("import os\n")
    edges = graph(modules(tmp_path, ["pkg"]))
    assert edges == {"pkg": {"pkg.a"}, "pkg.a": {"pkg", "pkg.b"}, "pkg.b": {"pkg", "pkg.c"},
                     "pkg.c": set()}
    assert _show(cycles(edges)) == ["pkg <-> pkg.a <-> pkg.b"]
