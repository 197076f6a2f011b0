"""The seam between the storage logic and a database engine.

A backend supplies two things, nothing more (procrastinate's connector split):

- a :class:`Connector`: connection handling, a way to run one *unit of work* inside one
  transaction (or several units in one transaction, each in its own savepoint: group commit),
  read-only work, migrations, and a wake-up for job workers;
- a :class:`receiver.storage.sql.Dialect`: its variant of the named statements of
  ``queries.sql``, and of the migrations.

A unit of work is an async function of a :class:`Tx`. It must await nothing but its ``Tx``: the
SQLite connector runs a whole batch of units on its database thread in one trip, where a
``Tx`` never suspends.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from receiver.errors import StoreError
from receiver.storage.records import Row
from receiver.storage.sql import Dialect

T = TypeVar("T")
Params = Mapping[str, Any]


class Tx(Protocol):
    """Named statements (of ``queries.sql``) inside one open transaction; rows are read by
    column name."""

    async def rows(self, q: str, params: Params | None = None) -> list[Row]: ...

    async def one(self, q: str, params: Params | None = None) -> Row | None: ...

    async def run(self, q: str, params: Params | None = None) -> int:
        """Run a write; the number of rows it changed."""
        ...

    async def run_many(self, q: str, params: Sequence[Params]) -> int:
        """Run a write once per parameter set; the number of rows changed in all."""
        ...

    async def send(self, q: str, params: Params | None = None) -> None:
        """Run a write whose count nobody needs. A backend may send it without waiting for
        its answer (PostgreSQL's pipeline); an error it meets is raised by a later statement
        of the same unit, or when the unit's savepoint ends, so the unit still fails whole.
        An empty statement runs nothing: a step the dialect needs nothing for, such as
        ``lock_task`` on SQLite."""
        ...

    async def send_many(self, q: str, params: Sequence[Params]) -> None:
        """:meth:`send`, once per parameter set."""
        ...

    def jobs_written(self) -> None:
        """Say that this unit of work queued jobs: when it commits, workers are woken (this
        process's through :class:`receiver.storage.database.Database`, other processes'
        by PostgreSQL's NOTIFY; where they watch the file, nothing more is needed)."""
        ...


Work = Callable[[Tx], Coroutine[Any, Any, T]]


class ReadOnlyTx:
    """The writes of a :class:`Tx` for read-only work (:meth:`Connector.read`): each refuses.
    A backend's reader adds ``rows`` and ``one``."""

    async def run(self, q: str, params: Params | None = None) -> int:
        raise StoreError("a read cannot write")

    async def run_many(self, q: str, params: Sequence[Params]) -> int:
        raise StoreError("a read cannot write")

    async def send(self, q: str, params: Params | None = None) -> None:
        raise StoreError("a read cannot write")

    async def send_many(self, q: str, params: Sequence[Params]) -> None:
        raise StoreError("a read cannot write")

    def jobs_written(self) -> None:
        raise StoreError("a read cannot write")


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a unit of work's coroutine to its end, here and now, on a ``Tx`` whose methods
    never suspend (a backend's writer thread); a unit that awaits anything else is a bug."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a unit of work awaited something other than its transaction")


@dataclass
class Unit:
    """One unit of work in a batch, with what became of it."""

    work: Work[Any]
    keep: bool = True  # False: run, then roll back its savepoint (a preview)
    # The tasks its work will lock (lock_task), when known beforehand. A backend whose
    # batches can run beside another process's takes a whole batch's task locks first, in one
    # order, so that two batches locking the same tasks in opposite orders cannot deadlock.
    locks: tuple[str, ...] = ()
    result: Any = None
    error: BaseException | None = None
    wrote_jobs: bool = False  # set by the backend when the unit called Tx.jobs_written()


class Connector(Protocol):
    """What a backend gives the storage logic."""

    dialect: Dialect

    async def open(self) -> None:
        """Connect and migrate. Raises :class:`receiver.errors.StoreError` with one line."""
        ...

    async def close(self) -> None: ...

    async def write(self, units: Sequence[Unit]) -> None:
        """Run ``units`` in one transaction, each in its own savepoint when there are several,
        and commit. A unit that raises is rolled back alone and its error kept on it; an error
        of the transaction itself (begin, commit) is raised for all of them."""
        ...

    async def read(self, work: Work[T]) -> T:
        """Run read-only ``work``; it may run beside writes."""
        ...

    async def wait_for_jobs(self, wait_s: float) -> None:
        """Return when another process may have queued jobs, or after ``wait_s`` seconds."""
        ...

    async def check_space(self) -> None:
        """Raise :class:`receiver.errors.StoreError` when a delivery could not be committed
        for lack of room (beyond what a probe write shows)."""
        ...

    def describe(self) -> str:
        """Where the data lives, with no secret in it (for logs)."""
        ...
