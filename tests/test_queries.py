"""The named statements of receiver/storage/queries.sql and the code that names them stay in
step: every name a unit of work runs is defined (for both dialects), every statement defined is
run somewhere, and every enum member a statement names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from receiver.storage import postgres, sqlite
from receiver.storage.sql import Dialect, parse

ROOT = Path(__file__).resolve().parents[1]
TX_METHODS = {"rows", "one", "run", "run_many", "send", "send_many"}


def _sources() -> list[Path]:
    return sorted((ROOT / "receiver").rglob("*.py"))


def _defined() -> set[str]:
    text = (ROOT / "receiver" / "storage" / "queries.sql").read_text()
    return {name for name, _ in parse(text)}


def _run_by_name() -> dict[str, str]:
    """Statement names passed literally to a Tx method, with where."""
    found: dict[str, str] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in TX_METHODS and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found[node.args[0].value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def _literals() -> set[str]:
    return {node.value for path in _sources() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_statement_a_unit_runs_is_defined() -> None:
    missing = {name: where for name, where in _run_by_name().items() if name not in _defined()}
    assert missing == {}


def test_every_defined_statement_is_named_by_the_code() -> None:
    assert _defined() - _literals() == set()


@pytest.mark.parametrize("dialect", [sqlite.DIALECT, postgres.DIALECT], ids=lambda d: d.name)
def test_each_dialect_compiles_every_statement(dialect: Dialect) -> None:
    statements = dialect.statements()
    assert set(statements) == _defined()
    if dialect.paramstyle == "pyformat":  # no :name left behind
        assert [n for n, sql in statements.items() if re.search(r"(?<![:\w]):\w", sql)] == []


def test_both_dialects_have_every_migration() -> None:
    assert len(sqlite.DIALECT.migrations()) == len(postgres.DIALECT.migrations()) >= 7


def test_a_statement_naming_an_enum_member_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="names no member"):
        sqlite.DIALECT.compile("SELECT 1 FROM jobs WHERE state = :JobState.FINISHED")


def test_a_variant_of_an_unknown_statement_is_refused() -> None:
    with pytest.raises(ValueError, match="varies a statement that is not"):
        parse("-- name: nowhere [postgresql]\nSELECT 1\n")
