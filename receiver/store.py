"""The storage seam: :class:`Store` names what the receiver asks of storage by intent, and
:class:`SQLiteStore` is the embedded engine behind it (its test twin is
:class:`receiver.memstore.MemoryStore`).

SQLite runs in WAL mode with one connection opened once for the app's lifetime. Writes are
serialised through an asyncio lock and ``BEGIN IMMEDIATE`` (so a second process on the same
file, the worker, waits on ``busy_timeout`` instead of failing half-way). With
``synchronous=NORMAL`` (the default) a commit survives the process being killed at any point;
``full`` also survives power loss, at the price of an fsync per commit.

Two things keep the ingest path short (measured with ``scripts/bench ingest``):

- recording a delivery is one trip to the connection's thread: BEGIN, the whole
  :func:`receiver.recording.record` and COMMIT run there together, instead of a dozen trips;
- WAL checkpoints (an fsync each) run in the background on a connection of their own, every
  second, instead of inside whichever commit crosses the automatic threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import aiosqlite

from receiver import sql
from receiver.clock import Clock, SystemClock
from receiver.errors import StoreError
from receiver.jobs import Job, JobSpec, JobState
from receiver.models import (
    ChildState,
    ChildTask,
    Clip,
    Delivery,
    JobFilter,
    Outcome,
    RawDelivery,
    RecordResult,
    Result,
    Source,
    StoredDelivery,
    StoredFile,
    Task,
    TaskView,
    Transition,
)
from receiver.payloads import ClipReport
from receiver.recording import plan_jobs, record
from receiver.routing import Router, TaskFacts, split_tags
from receiver.states import Entity, State

SYNCHRONOUS = ("normal", "full")
CHECKPOINT_EVERY_S = 1.0
T = TypeVar("T")


class Store(Protocol):
    """What the receiver keeps, named by intent. Implementations must make
    :meth:`record_delivery` atomic: all of it is committed when it returns, or none of it."""

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        """Record one verified delivery and the jobs ``router`` plans for it (see
        :mod:`receiver.recording`)."""
        ...

    async def get_task(self, task_id: str) -> TaskView | None:
        """A task with its clips and transitions, or None."""
        ...

    # -- jobs: every method that changes a claimed job checks the lease owner, so a worker
    #    that lost its lease (it was too slow, another took the job over) changes nothing.

    async def claim_jobs(self, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
        """Take up to ``limit`` due jobs (or jobs whose lease expired) for ``owner``."""
        ...

    async def renew_lease(self, job_id: int, *, owner: str, until: float, now: float) -> bool: ...

    async def finish_job(self, job_id: int, *, owner: str, now: float) -> bool: ...

    async def retry_job(
        self, job_id: int, *, owner: str, error: str, run_after: float, now: float,
        count_attempt: bool = True,
    ) -> bool: ...

    async def kill_job(self, job_id: int, *, owner: str, error: str, now: float) -> bool: ...

    async def release_jobs(self, *, owner: str, now: float) -> int:
        """Hand ``owner``'s running jobs back (graceful stop), without charging the attempt."""
        ...

    async def next_due(self) -> float | None:
        """When the next job becomes claimable (a run_after or a lease expiry), if any."""
        ...

    async def list_jobs(
        self, *, state: JobState | None = None, task_id: str | None = None, limit: int = 500
    ) -> list[Job]: ...

    # -- what handlers leave behind

    async def record_file(self, file: StoredFile) -> None: ...

    async def list_files(self, task_id: str) -> list[StoredFile]: ...

    async def record_result(self, result: Result) -> None: ...

    async def list_results(self, task_id: str) -> list[Result]: ...

    async def claim_child(self, child: ChildTask) -> tuple[ChildTask, bool]:
        """Record a follow-up before it is created: ``(child, True)``. An existing one for the
        same trigger key is returned instead, ``(existing, False)``: never two children for
        one trigger."""
        ...

    async def register_task(
        self, task_id: str, *, task_type: str, now: float, router: Router | None = None
    ) -> None:
        """Record a task this receiver created itself (a root), with its type, and write the
        jobs its already-recorded transitions owe."""
        ...

    async def update_child(
        self, trigger_key: str, *, state: ChildState, child_task_id: str | None = None,
        error: str | None = None, now: float, router: Router | None = None,
    ) -> ChildTask:
        """Move a child on. With a ``child_task_id``, the task is registered with its type and
        parent, and the jobs its already-recorded transitions owe are written (its webhook may
        have arrived before the create call returned)."""
        ...

    async def child_of(self, task_id: str) -> ChildTask | None:
        """The child record that created ``task_id``, if this receiver created it."""
        ...

    async def list_children(self, parent_task_id: str) -> list[ChildTask]: ...

    async def credits_under(self, root_task_id: str) -> int:
        """Credits of every follow-up under ``root_task_id`` that was not refused."""
        ...

    # -- replay

    async def tasks_to_reconcile(
        self, *, stale_before: float | None = None, since: float | None = None,
        limit: int = 1_000_000,
    ) -> list[str]:
        """Tasks not yet terminal whose last event is older than ``stale_before``, or every
        task first seen at or after ``since``."""
        ...

    async def preview_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        """What :meth:`record_delivery` would do, with nothing written (rolled back)."""
        ...

    async def rerecord_quarantined(
        self, delivery: Delivery, *, router: Router | None = None, preview: bool = False
    ) -> RecordResult:
        """Record a quarantined delivery again (after a fix, or once its task is known): the
        quarantined row is replaced by whatever recording it now gives, in one transaction
        (rolled back with ``preview``)."""
        ...

    async def raw_deliveries(
        self, *, since: float | None = None, until: float | None = None,
        task_id: str | None = None, outcome: Outcome | None = None, limit: int = 1_000_000,
    ) -> list[RawDelivery]: ...

    async def find_jobs(self, where: JobFilter, *, limit: int = 1_000_000) -> list[Job]: ...

    async def requeue_jobs(self, job_ids: Sequence[int], *, now: float) -> int:
        """Queue finished (done or dead) jobs again, attempts reset; returns how many."""
        ...

    async def check_writable(self) -> None:
        """Raise :class:`StoreError` unless a write can be committed now."""
        ...

    async def counts(self) -> Mapping[str, int]:
        """Row counts by table (operations and tests)."""
        ...

    async def close(self) -> None: ...


class SQLiteStore:
    """The embedded store: one SQLite file. Use :meth:`open` (or ``async with``)."""

    def __init__(
        self, path: Path, *, clock: Clock | None = None, synchronous: str = "normal"
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}")
        self.path = path
        self._clock = clock or SystemClock()
        self._synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, path: Path, *, clock: Clock | None = None, synchronous: str = "normal"
    ) -> SQLiteStore:
        store = cls(path, clock=clock, synchronous=synchronous)
        await store.connect()
        return store

    async def connect(self) -> None:
        """Open the file (creating its folder), switch to WAL and migrate the schema."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        try:
            await conn.execute("PRAGMA busy_timeout = 10000")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA wal_autocheckpoint = 0")  # see _checkpoint_loop
            await _migrate(conn, self.path)
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot prepare database {self.path}: {exc}") from exc
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="checkpoint")

    async def _checkpoint_loop(self) -> None:
        """Move the WAL back into the database every second, on a connection of its own, so
        that no commit waits for a checkpoint's fsync. PASSIVE never blocks a writer."""
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 100")
            while True:
                await asyncio.sleep(CHECKPOINT_EVERY_S)
                try:
                    await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    continue  # busy: the next round will do
        finally:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(conn.execute("PRAGMA wal_checkpoint(PASSIVE)"))
            await asyncio.shield(conn.close())

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def __aenter__(self) -> SQLiteStore:
        if self._conn is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTransaction]:
        """One write transaction; committed when the block exits, rolled back on error."""
        async with self._lock:
            conn = self.conn
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
            try:
                yield SQLiteTransaction(conn)
                await conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    await asyncio.shield(conn.execute("ROLLBACK"))
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"transaction failed: {exc}") from exc
                raise

    async def in_one_trip(
        self,
        body: Callable[[SQLiteTransaction], Coroutine[Any, Any, T]],
        *,
        keep: bool = True,
    ) -> T:
        """Run a whole transaction (BEGIN, ``body``, then COMMIT, or ROLLBACK when not
        ``keep``) in one trip to the connection's thread. ``body`` may await only the
        transaction it is given, which never suspends there (checked)."""

        def work(raw: sqlite3.Connection) -> T:
            raw.execute("BEGIN IMMEDIATE")
            try:
                tx = SQLiteTransaction(cast(aiosqlite.Connection, _InThread(raw)))
                result = _drive(body(tx))
                raw.execute("COMMIT" if keep else "ROLLBACK")
                return result
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

        async with self._lock:
            conn = self.conn
            try:
                # aiosqlite's own way to run a function on its thread (pinned in pyproject)
                execute: Any = conn._execute  # untyped in aiosqlite
                result: T = await execute(work, conn._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"transaction failed: {exc}") from exc
            return result

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        return await self.in_one_trip(lambda tx: record(tx, delivery, router=router))

    async def get_task(self, task_id: str) -> TaskView | None:
        async with self._lock:
            rows = await self.conn.execute_fetchall(sql.GET_TASK, (task_id,))
            if not rows:
                return None
            clips = await self.conn.execute_fetchall(sql.GET_CLIPS, (task_id,))
            transitions = await self.conn.execute_fetchall(sql.GET_TRANSITIONS, (task_id,))
        return TaskView(
            task=_task(next(iter(rows))),
            clips=tuple(_clip(row) for row in clips),
            transitions=tuple(_transition(row) for row in transitions),
        )

    async def check_writable(self) -> None:
        async with self.transaction() as tx:
            await tx.conn.execute(sql.PROBE_WRITE, (self._clock.now(),))

    async def counts(self) -> Mapping[str, int]:
        async with self._lock:
            result = {}
            for table, statement in sql.COUNT.items():
                rows = await self.conn.execute_fetchall(statement)
                result[table] = int(next(iter(rows))[0])
        return result

    async def _fetch(self, statement: str, params: Any = ()) -> list[Any]:
        async with self._lock:
            try:
                return list(await self.conn.execute_fetchall(statement, params))
            except sqlite3.Error as exc:
                raise StoreError(f"read failed: {exc}") from exc

    async def _write(self, statement: str, params: Any = ()) -> int:
        """Run one write in its own transaction; returns the rows it changed."""
        async with self.transaction() as tx:
            cursor = await tx.conn.execute(statement, params)
            return cursor.rowcount

    # -- jobs

    async def claim_jobs(self, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
        params = {"owner": owner, "until": now + lease_s, "now": now, "limit": limit}
        async with self.transaction() as tx:
            rows = await tx.conn.execute_fetchall(sql.CLAIM_JOBS, params)
        return sorted((_job(r) for r in rows), key=lambda j: (j.run_after, j.id))

    async def renew_lease(self, job_id: int, *, owner: str, until: float, now: float) -> bool:
        params = {"id": job_id, "owner": owner, "until": until, "now": now}
        return await self._write(sql.RENEW_LEASE, params) == 1

    async def finish_job(self, job_id: int, *, owner: str, now: float) -> bool:
        return await self._write(sql.FINISH_JOB, {"id": job_id, "owner": owner, "now": now}) == 1

    async def retry_job(
        self, job_id: int, *, owner: str, error: str, run_after: float, now: float,
        count_attempt: bool = True,
    ) -> bool:
        params = {"id": job_id, "owner": owner, "error": error, "run_after": run_after,
                  "now": now, "refund": 0 if count_attempt else 1}
        return await self._write(sql.RETRY_JOB, params) == 1

    async def kill_job(self, job_id: int, *, owner: str, error: str, now: float) -> bool:
        params = {"id": job_id, "owner": owner, "error": error, "now": now}
        return await self._write(sql.KILL_JOB, params) == 1

    async def release_jobs(self, *, owner: str, now: float) -> int:
        return await self._write(sql.RELEASE_JOBS, {"owner": owner, "now": now})

    async def next_due(self) -> float | None:
        rows = await self._fetch(sql.NEXT_DUE)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def list_jobs(
        self, *, state: JobState | None = None, task_id: str | None = None, limit: int = 500
    ) -> list[Job]:
        clauses, params = ["1 = 1"], []
        if state is not None:
            clauses.append("state = ?")
            params.append(state.value)
        if task_id is not None:
            clauses.append("task_id = ?")
            params.append(task_id)
        statement = sql.LIST_JOBS.format(where=" AND ".join(clauses))
        return [_job(r) for r in await self._fetch(statement, (*params, limit))]

    # -- what handlers leave behind

    async def record_file(self, file: StoredFile) -> None:
        await self._write(
            sql.UPSERT_FILE,
            (file.task_id, file.clip_id, file.kind, file.path, file.size, file.sha256, file.url,
             file.content_type, file.job_key, file.created_at),
        )

    async def list_files(self, task_id: str) -> list[StoredFile]:
        return [
            StoredFile(task_id=r[0], clip_id=r[1], kind=r[2], path=r[3], size=r[4],
                       sha256=r[5], url=r[6], content_type=r[7], job_key=r[8], created_at=r[9])
            for r in await self._fetch(sql.LIST_FILES, (task_id,))
        ]

    async def record_result(self, result: Result) -> None:
        await self._write(
            sql.UPSERT_RESULT,
            (result.task_id, result.clip_id, result.kind, json.dumps(dict(result.data)),
             result.job_key, result.created_at),
        )

    async def list_results(self, task_id: str) -> list[Result]:
        return [
            Result(task_id=r[0], clip_id=r[1], kind=r[2], data=json.loads(r[3]), job_key=r[4],
                   created_at=r[5])
            for r in await self._fetch(sql.LIST_RESULTS, (task_id,))
        ]

    async def claim_child(self, child: ChildTask) -> tuple[ChildTask, bool]:
        async with self.transaction() as tx:
            cursor = await tx.conn.execute(
                sql.INSERT_CHILD,
                (child.trigger_key, child.parent_task_id, child.root_task_id, child.rule,
                 child.depth, child.task_type, child.credits,
                 json.dumps(dict(child.request), sort_keys=True), child.child_task_id,
                 child.state.value, child.error, child.created_at, child.updated_at),
            )
            inserted = cursor.rowcount == 1
            rows = list(await tx.conn.execute_fetchall(sql.GET_CHILD, (child.trigger_key,)))
        return _child(rows[0]), inserted

    async def register_task(
        self, task_id: str, *, task_type: str, now: float, router: Router | None = None
    ) -> None:
        async with self.transaction() as tx:
            await tx.register_task(task_id, task_type=task_type, parent=None, at=now,
                                   router=router)

    async def update_child(
        self, trigger_key: str, *, state: ChildState, child_task_id: str | None = None,
        error: str | None = None, now: float, router: Router | None = None,
    ) -> ChildTask:
        async with self.transaction() as tx:
            await tx.conn.execute(
                sql.UPDATE_CHILD, (state.value, child_task_id, error, now, trigger_key)
            )
            rows = list(await tx.conn.execute_fetchall(sql.GET_CHILD, (trigger_key,)))
            if not rows:
                raise StoreError(f"no child task for trigger {trigger_key!r}")
            child = _child(rows[0])
            if child_task_id is not None:
                await tx.register_task(child_task_id, task_type=child.task_type,
                                       parent=child.parent_task_id, at=now, router=router)
        return child

    async def child_of(self, task_id: str) -> ChildTask | None:
        rows = await self._fetch(sql.CHILD_BY_TASK, (task_id,))
        return _child(rows[0]) if rows else None

    async def list_children(self, parent_task_id: str) -> list[ChildTask]:
        return [_child(r) for r in await self._fetch(sql.LIST_CHILDREN, (parent_task_id,))]

    async def credits_under(self, root_task_id: str) -> int:
        rows = await self._fetch(sql.CREDITS_UNDER_ROOT, (root_task_id,))
        return int(rows[0][0])


    # -- replay

    async def tasks_to_reconcile(
        self, *, stale_before: float | None = None, since: float | None = None,
        limit: int = 1_000_000,
    ) -> list[str]:
        found: list[str] = []
        if stale_before is not None:
            found += [r[0] for r in await self._fetch(sql.STALE_TASKS, (stale_before, limit))]
        if since is not None:
            found += [r[0] for r in await self._fetch(sql.TASKS_SINCE, (since, limit))]
        return list(dict.fromkeys(found))[:limit]

    async def preview_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        return await self.in_one_trip(lambda tx: record(tx, delivery, router=router),
                                      keep=False)

    async def rerecord_quarantined(
        self, delivery: Delivery, *, router: Router | None = None, preview: bool = False
    ) -> RecordResult:
        async def body(tx: SQLiteTransaction) -> RecordResult:
            await tx.conn.execute(sql.DELETE_QUARANTINED, (delivery.delivery_id,))
            return await record(tx, delivery, router=router)

        return await self.in_one_trip(body, keep=not preview)

    async def raw_deliveries(
        self, *, since: float | None = None, until: float | None = None,
        task_id: str | None = None, outcome: Outcome | None = None, limit: int = 1_000_000,
    ) -> list[RawDelivery]:
        clauses, params = ["1 = 1"], []
        for clause, value in (("received_at >= ?", since), ("received_at < ?", until),
                              ("task_id = ?", task_id),
                              ("outcome = ?", outcome.value if outcome else None)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        rows = await self._fetch(sql.RAW_DELIVERIES.format(where=" AND ".join(clauses)),
                                 (*params, limit))
        return [
            RawDelivery(
                stored=StoredDelivery(
                    delivery_id=r[0], source=Source(r[1]), scheme=r[2], event=r[3],
                    task_id=r[4], outcome=Outcome(r[5]), reason=r[6], received_at=r[7],
                ),
                headers=json.loads(r[8]),
                body=bytes(r[9]),
            )
            for r in rows
        ]

    async def find_jobs(self, where: JobFilter, *, limit: int = 1_000_000) -> list[Job]:
        clauses, params = ["1 = 1"], []
        for clause, value in (("state = ?", where.state.value if where.state else None),
                              ("handler = ?", where.handler), ("task_id = ?", where.task_id),
                              ("created_at >= ?", where.since), ("created_at < ?", where.until)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if where.delivery_ids is not None:
            ids = sorted(where.delivery_ids)
            clauses.append(f"delivery_id IN ({','.join('?' * len(ids))})" if ids else "0 = 1")
            params.extend(ids)
        statement = sql.LIST_JOBS.format(where=" AND ".join(clauses))
        return [_job(r) for r in await self._fetch(statement, (*params, limit))]

    async def requeue_jobs(self, job_ids: Sequence[int], *, now: float) -> int:
        changed = 0
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            statement = sql.REQUEUE_JOBS.format(marks=",".join("?" * len(chunk)))
            changed += await self._write(statement, (now, now, *chunk))
        return changed


class _InThread:
    """The part of aiosqlite's connection that :class:`SQLiteTransaction` uses, over the raw
    sqlite3 connection, for code already running on that connection's thread."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    async def execute(self, statement: str, params: Any = ()) -> sqlite3.Cursor:
        return self._raw.execute(statement, params)

    async def execute_fetchall(self, statement: str, params: Any = ()) -> list[Any]:
        return self._raw.execute(statement, params).fetchall()

    async def executemany(self, statement: str, rows: Any) -> sqlite3.Cursor:
        return self._raw.executemany(statement, rows)

    @property
    def total_changes(self) -> int:
        return self._raw.total_changes


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, here and now."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a transaction body awaited something other than its transaction")


class SQLiteTransaction:
    """:class:`receiver.recording.Transaction` over an open SQLite transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def find_delivery(self, delivery_id: str) -> StoredDelivery | None:
        rows = list(await self.conn.execute_fetchall(sql.FIND_DELIVERY, (delivery_id,)))
        if not rows:
            return None
        row = rows[0]
        return StoredDelivery(
            delivery_id=row[0],
            source=Source(row[1]),
            scheme=row[2],
            event=row[3],
            task_id=row[4],
            outcome=Outcome(row[5]),
            reason=row[6],
            received_at=row[7],
        )

    async def insert_delivery(
        self, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
    ) -> None:
        await self.conn.execute(
            sql.INSERT_DELIVERY,
            (
                delivery.delivery_id,
                delivery.source.value,
                delivery.scheme,
                delivery.event,
                task_id,
                outcome.value,
                reason,
                json.dumps(dict(delivery.headers), sort_keys=True),
                delivery.body,
                delivery.received_at,
            ),
        )

    async def task_for_clips(self, clip_ids: Sequence[str]) -> str | None:
        if not clip_ids:
            return None
        statement = sql.TASK_FOR_CLIPS.format(marks=",".join("?" * len(clip_ids)))
        rows = list(await self.conn.execute_fetchall(statement, tuple(clip_ids)))
        return str(rows[0][0]) if rows else None

    async def task_state(self, task_id: str) -> State | None:
        rows = list(await self.conn.execute_fetchall(sql.TASK_STATE, (task_id,)))
        return State(rows[0][0]) if rows else None

    async def clip_states(self, task_id: str) -> Mapping[str, State]:
        rows = await self.conn.execute_fetchall(sql.CLIP_STATES, (task_id,))
        return {row[0]: State(row[1]) for row in rows}

    async def upsert_task(
        self,
        task_id: str,
        *,
        state: State,
        platform: str | None,
        error: str | None,
        delivery_id: str,
        at: float,
    ) -> None:
        await self.conn.execute(
            sql.UPSERT_TASK,
            {
                "task_id": task_id,
                "state": state.value,
                "platform": platform,
                "error": error,
                "at": at,
                "delivery_id": delivery_id,
            },
        )

    async def upsert_clips(
        self, task_id: str, clips: Sequence[tuple[ClipReport, State]], *, at: float
    ) -> None:
        if clips:
            await self.conn.executemany(
                sql.UPSERT_CLIP, [_clip_row(task_id, c, state, at) for c, state in clips]
            )

    async def insert_transitions(self, transitions: Sequence[Transition]) -> None:
        if transitions:
            await self.conn.executemany(
                sql.INSERT_TRANSITION,
                [
                    (
                        t.task_id,
                        t.entity.value,
                        t.entity_id,
                        t.from_state.value if t.from_state else None,
                        t.to_state.value,
                        t.delivery_id,
                        t.source.value,
                        t.at,
                    )
                    for t in transitions
                ],
            )


    async def register_task(
        self, task_id: str, *, task_type: str, parent: str | None, at: float,
        router: Router | None,
    ) -> None:
        """Upsert a task we created (type, parent) and catch up on the jobs its recorded
        transitions owe: its webhook may have come before the create call returned."""
        await self.conn.execute(
            sql.REGISTER_TASK,
            {"task_id": task_id, "at": at, "task_type": task_type, "parent": parent},
        )
        earlier = await self.conn.execute_fetchall(sql.TASK_TRANSITIONS, (task_id,))
        await plan_jobs(self, router, task_id, [_transition(r) for r in earlier], at=at)

    async def task_facts(self, task_id: str) -> TaskFacts:
        rows = list(await self.conn.execute_fetchall(sql.TASK_FACTS, (task_id,)))
        tags = await self.conn.execute_fetchall(sql.CLIP_TAGS, (task_id,))
        task_type, platform = (rows[0][0], rows[0][1]) if rows else (None, None)
        return TaskFacts(task_id=task_id, task_type=task_type, platform=platform,
                         tags=split_tags(r[0] for r in tags))

    async def insert_jobs(self, specs: Sequence[JobSpec], *, at: float) -> int:
        before = self.conn.total_changes
        await self.conn.executemany(
            sql.INSERT_JOB,
            [
                (spec.key, spec.handler, spec.route, json.dumps(dict(spec.options)),
                 spec.task_id, spec.trigger, spec.delivery_id, spec.max_attempts, at, at, at)
                for spec in specs
            ],
        )
        return self.conn.total_changes - before


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    latest = len(sql.MIGRATIONS)
    if version > latest:
        raise StoreError(
            f"database {path} has schema version {version}, newer than this code's {latest}"
        )
    for number in range(version + 1, latest + 1):
        # executescript commits first; the script is one transaction including the version bump.
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{sql.MIGRATIONS[number - 1]}\nPRAGMA user_version = {number};\n"
            "COMMIT;"
        )


def _clip_row(task_id: str, clip: ClipReport, state: State, at: float) -> tuple[Any, ...]:
    return (
        task_id,
        clip.clip_id,
        state.value,
        clip.title,
        clip.tags,
        clip.lyrics,
        clip.audio_url,
        clip.image_url,
        clip.video_url,
        clip.duration,
        clip.mv,
        clip.created_at,
        json.dumps(dict(clip.raw), sort_keys=True),
        at,
    )


def _task(row: Any) -> Task:
    return Task(
        task_id=row[0],
        state=State(row[1]),
        platform=row[2],
        error=row[3],
        first_seen_at=row[4],
        updated_at=row[5],
        last_event_at=row[6],
        last_delivery_id=row[7],
        task_type=row[8],
        parent_task_id=row[9],
    )


def _job(row: Any) -> Job:
    return Job(
        id=row[0], key=row[1], handler=row[2], route=row[3], options=json.loads(row[4]),
        task_id=row[5], trigger=row[6], delivery_id=row[7], state=JobState(row[8]),
        attempts=row[9], max_attempts=row[10], run_after=row[11], lease_owner=row[12],
        lease_expires_at=row[13], last_error=row[14], created_at=row[15], updated_at=row[16],
    )


def _child(row: Any) -> ChildTask:
    return ChildTask(
        trigger_key=row[0], parent_task_id=row[1], root_task_id=row[2], rule=row[3],
        depth=row[4], task_type=row[5], credits=row[6], request=json.loads(row[7]),
        child_task_id=row[8], state=ChildState(row[9]), error=row[10], created_at=row[11],
        updated_at=row[12],
    )


def _clip(row: Any) -> Clip:
    return Clip(
        task_id=row[0],
        clip_id=row[1],
        state=State(row[2]),
        title=row[3],
        tags=row[4],
        lyrics=row[5],
        audio_url=row[6],
        image_url=row[7],
        video_url=row[8],
        duration=row[9],
        mv=row[10],
        created_at=row[11],
        updated_at=row[12],
        data=json.loads(row[13]),
    )


def _transition(row: Any) -> Transition:
    return Transition(
        task_id=row[0],
        entity=Entity(row[1]),
        entity_id=row[2],
        from_state=State(row[3]) if row[3] else None,
        to_state=State(row[4]),
        delivery_id=row[5],
        source=Source(row[6]),
        at=row[7],
    )
