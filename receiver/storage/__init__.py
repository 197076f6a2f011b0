"""Storage: the rules once (:mod:`receiver.storage.store`), the engines thin
(:mod:`receiver.storage.sqlite`, :mod:`receiver.storage.postgres`), the roles callers depend on
(:mod:`receiver.storage.roles`).

:func:`connector_for` picks the engine from the settings' database location: a path (or
``sqlite:///path``) for the embedded SQLite file, ``postgresql://...`` for PostgreSQL.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from receiver.clock import Clock
from receiver.settings import Settings
from receiver.storage.connector import Connector
from receiver.storage.store import PruneReport, Store

__all__ = ["Connector", "PruneReport", "Store", "connector_for", "sqlite_store", "store_for"]


def connector_for(settings: Settings) -> Connector:
    """The backend the settings name, not yet open."""
    if settings.db_url is not None:
        # imported by name: psycopg loads only for deployments that use it
        module = importlib.import_module("receiver.storage.postgres")
        connector: Connector = module.PostgresConnector(
            settings.db_url, lock_timeout_s=settings.db_lock_timeout_s)
        return connector
    from receiver.storage.sqlite import SQLiteConnector

    return SQLiteConnector(settings.db_path, synchronous=settings.db_synchronous,
                           lock_timeout_s=settings.db_lock_timeout_s)


def sqlite_store(
    path: Path, *, clock: Clock | None = None, synchronous: str = "normal",
    lock_timeout_s: float = 5.0,
) -> Store:
    """A store on the SQLite file at ``path``, not yet open."""
    from receiver.storage.sqlite import SQLiteConnector

    return Store(SQLiteConnector(path, synchronous=synchronous, lock_timeout_s=lock_timeout_s),
                 clock=clock)


def store_for(settings: Settings, *, clock: Clock | None = None) -> Store:
    """The store the settings name, not yet open (``await store.open()`` or ``async with``)."""
    return Store(connector_for(settings), clock=clock)
