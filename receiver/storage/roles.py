"""The roles over one database, opened together: :class:`Storage`.

Each caller holds the role it uses, typed as that role, so that what it may touch is visible in
its signature: the webhook, reconciliation and replay :class:`~receiver.storage.ingest.Ingest`;
the worker the :class:`~receiver.storage.queue.JobQueue`; handlers their
:class:`~receiver.storage.tasks.HandlerOutput`; the console and the scripts the
:class:`~receiver.storage.admin.Admin`; alerts and deadlines the
:class:`~receiver.storage.watch.Watch`. All of them write through the one
:class:`~receiver.storage.database.Database` (one writer, group commit) underneath.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from receiver.clock import Clock
from receiver.settings import Settings
from receiver.storage.admin import Admin
from receiver.storage.connector import Connector
from receiver.storage.database import Database
from receiver.storage.ingest import Ingest
from receiver.storage.queue import JobQueue
from receiver.storage.tasks import HandlerOutput
from receiver.storage.watch import Watch


@dataclass(frozen=True)
class Storage:
    """Every role over ``db``; ``async with`` opens and closes the database."""

    db: Database
    ingest: Ingest
    jobs: JobQueue
    outputs: HandlerOutput
    admin: Admin
    watch: Watch

    @classmethod
    def over(cls, connector: Connector, *, clock: Clock | None = None) -> Storage:
        """The roles over ``connector``, not yet open."""
        db = Database(connector, clock=clock)
        return cls(db=db, ingest=Ingest(db), jobs=JobQueue(db), outputs=HandlerOutput(db),
                   admin=Admin(db), watch=Watch(db))

    async def __aenter__(self) -> Storage:
        await self.db.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.db.close()

    def describe(self) -> str:
        return self.db.describe()


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


def storage_for(settings: Settings, *, clock: Clock | None = None) -> Storage:
    """The storage the settings name, not yet open (``async with``)."""
    return Storage.over(connector_for(settings), clock=clock)


def sqlite_storage(
    path: Path, *, clock: Clock | None = None, synchronous: str = "normal",
    lock_timeout_s: float = 5.0,
) -> Storage:
    """The storage in the SQLite file at ``path``, not yet open."""
    from receiver.storage.sqlite import SQLiteConnector

    return Storage.over(SQLiteConnector(path, synchronous=synchronous,
                                        lock_timeout_s=lock_timeout_s), clock=clock)
