"""The layers of the project, read from its import graph: no import cycle among the modules of
``receiver/`` and ``handlers/``, the core never imports the operator's console, and no test
module imports another (what tests share lives in helper modules and ``tests/fixtures/``).

The graph is read from the source with :mod:`ast`, not by importing: an import inside a function
counts (it is a dependency all the same, only deferred), one under ``if TYPE_CHECKING:`` does
not (it never runs). ``from package import name`` depends on ``package`` and, when ``name`` is a
module, on ``package.name``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
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


# ---- the tests' own layers ---------------------------------------------------------------------

FIXTURES = "tests.fixtures"


def is_test_module(name: str) -> bool:
    return name.rpartition(".")[2].startswith("test_")


def importers_of(edges: Mapping[str, set[str]],
                 wanted: Callable[[str], bool]) -> list[str]:
    """``module -> target`` for each test module importing a module that ``wanted`` picks."""
    return sorted(f"{name} -> {target}" for name, targets in edges.items()
                  if is_test_module(name) for target in targets if wanted(target))


def test_no_test_module_imports_another() -> None:
    """A test module imports helpers (tests/support.py, tests/waiting.py, ...), never another
    test module: what two modules share moves to a helper."""
    edges = graph(modules(ROOT, ["tests"]))
    assert importers_of(edges, is_test_module) == []


def test_fixtures_are_requested_by_name_never_imported() -> None:
    """No test module imports from tests/fixtures/ (pytest loads it through ``pytest_plugins``),
    and every fixture outside it is defined in the test module that uses it."""
    known = modules(ROOT, ["tests"])
    edges = graph(known)

    def in_fixtures(module: str) -> bool:
        return module == FIXTURES or module.startswith(FIXTURES + ".")

    assert importers_of(edges, in_fixtures) == []
    elsewhere = sorted(
        name for name, path in known.items()
        if not is_test_module(name) and not in_fixtures(name) and name != "tests.conftest"
        and any("pytest.fixture" in ast.unparse(decorator)
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                for decorator in node.decorator_list))
    assert elsewhere == [], "helper modules defining fixtures: move them to tests/fixtures/"


def test_the_check_finds_a_test_module_imported_by_another(tmp_path: Path) -> None:
    """``from tests.test_a import x``, ``from tests import test_a`` and a deferred import all
    count; an import of a helper does not."""
    folder = tmp_path / "tests"
    (folder / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "support.py", "test_a.py"):
        (folder / name).write_text("")
    (folder / "test_b.py").write_text("from tests.test_a import x\nfrom tests.support import y\n")
    (folder / "sub" / "test_c.py").write_text("from tests import test_a\n")
    (folder / "sub" / "test_d.py").write_text("def f() -> None:\n    import tests.test_a\n")
    edges = graph(modules(tmp_path, ["tests"]))
    assert importers_of(edges, is_test_module) == [
        "tests.sub.test_c -> tests.test_a", "tests.sub.test_d -> tests.test_a",
        "tests.test_b -> tests.test_a"]


# ---- no fixed sleep used to wait for something ---------------------------------------------

# Sleeps that wait for nothing say so on their line, or in the comment just above it: "not a
# wait", then why (a client trickling bytes, a job held while a kill lands, a paced load).
# Anything else waits for a condition with tests/waiting.py, which alone polls.
NOT_A_WAIT = "not a wait"
MAY_SLEEP = {"tests/waiting.py"}
# Files owned by the handler-surface rewrite, each with the sleeps it still holds unexplained:
# an entry that no longer matches fails the test too, so the list only names what is true.
UNEXPLAINED: dict[str, int] = {"tests/handlers/__init__.py": 1}


def sleeps_without_a_reason(path: Path) -> list[int]:
    """The lines of ``sleep(...)`` calls in ``path`` whose line and the comment lines just above
    it do not say they are not a wait."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not (isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "sleep"):
            continue
        said = [lines[node.lineno - 1]]
        above = node.lineno - 2
        while above >= 0 and lines[above].strip().startswith("#"):
            said.append(lines[above])
            above -= 1
        if not any(NOT_A_WAIT in line.lower() for line in said):
            found.append(node.lineno)
    return found


def test_every_sleep_in_the_tests_says_why_it_is_not_a_wait() -> None:
    """A fixed sleep never stands in for waiting on a condition: every ``sleep()`` under
    tests/ outside tests/waiting.py says why it is the behaviour under test."""
    found = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative not in MAY_SLEEP and (lines := sleeps_without_a_reason(path)):
            found[relative] = lines
    unexplained = {name: len(lines) for name, lines in found.items()}
    assert {name: found[name] for name in unexplained.keys() - UNEXPLAINED.keys()} == {}
    assert {name: n for name, n in UNEXPLAINED.items() if unexplained.get(name) != n} == {}, (
        "listed as unexplained but changed: update the entry")
