"""The store under test, on every backend: the contract suite takes the ``store`` fixture and
runs once per engine. PostgreSQL comes from the ``pg_dsn`` fixture (a fresh database on the
server ``scripts/test`` starts); without one, those runs are skipped by that fixture's rule."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.clock import Clock
from receiver.storage.connector import Connector
from receiver.storage.roles import Storage
from receiver.storage.sqlite import SQLiteConnector

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def connector_of(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Connector:
    if kind == "sqlite":
        return SQLiteConnector(tmp_path / "store.db")
    from receiver.storage.postgres import PostgresConnector

    dsn: str = request.getfixturevalue("pg_dsn")
    return PostgresConnector(dsn)


@contextlib.asynccontextmanager
async def backend_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, *, clock: Clock | None = None
) -> AsyncIterator[Storage]:
    async with Storage.over(connector_of(kind, request, tmp_path), clock=clock) as store:
        yield store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    async with backend_store(request.param, request, tmp_path) as opened:
        yield opened
