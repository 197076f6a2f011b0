"""One database under every role: a :class:`Database` runs units of work on a backend
(:mod:`receiver.storage.connector`), writes through group commit, and says when a commit
queued jobs.

Group commit: every write that arrives while a transaction runs, or in the same turn of the
event loop, waits for the next one, which records them all together, each in its own
savepoint (one bad unit cannot fail the others), and answers them all after its single
commit. Under load that turns N commits into one; alone, a write is its own batch.

Jobs: a unit that queued jobs says so (``Tx.jobs_written``); once its batch committed, the
listeners given to :meth:`Database.on_jobs` are called, so that this process's worker starts
them at once. Workers in other processes are woken by the backend.

Outages: a write or read that fails as a whole (the database away, its lock held elsewhere)
marks the database away, once, and the first one that succeeds after marks it back (a log
line and a counter each, :mod:`receiver.metrics`). Nothing waits in here: every call tries
the database again, and the backend connects again then, without a backoff of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from receiver import metrics
from receiver.clock import Clock, SystemClock
from receiver.errors import StoreError, ValueRefused
from receiver.storage.connector import Connector, Unit, Work

log = structlog.get_logger("receiver.storage")

T = TypeVar("T")
MAX_BATCH = 128


class Database:
    """The units of work of every role, over ``connector``."""

    def __init__(self, connector: Connector, *, clock: Clock | None = None) -> None:
        self.connector = connector
        self.clock = clock or SystemClock()
        self._queue: list[tuple[Unit, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._job_listeners: list[Callable[[], None]] = []
        self.available = True  # whether the last operation that reached the database passed
        self._away_since = 0.0

    async def open(self) -> Database:
        await self.connector.open()
        return self

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self.connector.close()

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def describe(self) -> str:
        return self.connector.describe()

    def on_jobs(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each commit that queued jobs; returns the way to stop."""
        self._job_listeners.append(listener)
        return lambda: self._job_listeners.remove(listener)

    async def read(self, work: Work[T]) -> T:
        try:
            result = await self.connector.read(work)
        except ValueRefused:
            raise  # the database answered: it is not away
        except StoreError as exc:
            self._went_away(exc)
            raise
        self._came_back()
        return result

    def _went_away(self, exc: StoreError) -> None:
        if self.available:
            self.available = False
            self._away_since = self.clock.now()
            metrics.store_outage()
            log.error("store_unavailable", db=self.describe(), error=exc.message)

    def _came_back(self) -> None:
        if not self.available:
            self.available = True
            metrics.store_reconnect()
            log.info("store_back", db=self.describe(),
                     away_s=round(self.clock.now() - self._away_since, 3))

    async def write(
        self, work: Work[T], *, keep: bool = True, locks: tuple[str, ...] = ()
    ) -> T:
        """Run ``work`` in a transaction shared with the writes queued beside it (its own
        savepoint), and return once that transaction committed (or, not ``keep``, once its
        savepoint was rolled back: a preview). ``locks``: the tasks ``work`` will lock, when
        known (see :class:`receiver.storage.connector.Unit`)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((Unit(work=work, keep=keep, locks=locks), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="store-writer")
        return await future

    async def _flush(self) -> None:
        # One turn of the loop first: requests whose bytes arrived in the same turn reach their
        # write() and join this batch instead of the next.
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            units = [unit for unit, _ in batch]
            try:
                await self.connector.write(units)
            except BaseException as exc:
                failure = exc if isinstance(exc, StoreError) else StoreError(
                    f"transaction failed: {type(exc).__name__}: {exc}")
                if isinstance(exc, Exception) and not isinstance(exc, ValueRefused):
                    self._went_away(failure)
                # Whoever queued meanwhile would wait on the same lock or the same full disk:
                # answer them now too, instead of making each wait its turn for a timeout.
                waiting, self._queue = self._queue, []
                for _, future in (*batch, *waiting):
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            self._came_back()
            for unit, future in batch:
                if future.done():
                    continue  # its caller went away; the work is done all the same
                if unit.error is not None:
                    future.set_exception(unit.error)
                else:
                    future.set_result(unit.result)
            if any(unit.wrote_jobs for unit in units):
                self._jobs_committed()

    def _jobs_committed(self) -> None:
        for listener in tuple(self._job_listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not fail the writes it was told of
                log.exception("job_listener_failed")
