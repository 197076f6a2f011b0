"""The storage backends the contract runs on: ``BACKENDS`` (the PostgreSQL one carries the
``postgres`` marker) and the store on a database of either. The fixtures over them (``backend``,
``backend_store``, ``store``) are in :mod:`tests.fixtures.storage`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from receiver.clock import Clock
from receiver.storage.connector import Connector
from receiver.storage.roles import Storage
from receiver.storage.sqlite import SQLiteConnector

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def connector_at(database: Path | str) -> Connector:
    """The connector of ``database``: a SQLite file, or a PostgreSQL DSN."""
    if isinstance(database, Path):
        return SQLiteConnector(database)
    from receiver.storage.postgres import PostgresConnector

    return PostgresConnector(database)


def storage_at(database: Path | str, *, clock: Clock | None = None) -> Storage:
    """The storage on ``database``, not yet open (``async with``)."""
    return Storage.over(connector_at(database), clock=clock)


class StoreOpener(Protocol):
    """The ``backend_store`` fixture: the storage on this test's database, not yet open; each
    call is another connection to the same database (as another process would hold)."""

    def __call__(self, *, clock: Clock | None = None) -> Storage: ...
