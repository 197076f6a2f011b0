"""The storage seam: :class:`Store` names what the receiver asks of storage by intent, and
:class:`SQLiteStore` is the embedded engine behind it (its test twin is
:class:`receiver.memstore.MemoryStore`).

SQLite runs in WAL mode with one connection opened once for the app's lifetime. Writes are
serialised through an asyncio lock and ``BEGIN IMMEDIATE`` (so a second process on the same
file, the worker, waits on ``busy_timeout`` instead of failing half-way). With
``synchronous=NORMAL`` (the default) a commit survives the process being killed at any point;
``full`` also survives power loss, at the price of an fsync per commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from receiver import sql
from receiver.clock import Clock, SystemClock
from receiver.errors import StoreError
from receiver.models import (
    Clip,
    Delivery,
    Outcome,
    RecordResult,
    Source,
    StoredDelivery,
    Task,
    TaskView,
    Transition,
)
from receiver.payloads import ClipReport
from receiver.recording import record
from receiver.states import Entity, State

SYNCHRONOUS = ("normal", "full")


class Store(Protocol):
    """What the receiver keeps, named by intent. Implementations must make
    :meth:`record_delivery` atomic: all of it is committed when it returns, or none of it."""

    async def record_delivery(self, delivery: Delivery) -> RecordResult:
        """Record one verified delivery (see :mod:`receiver.recording`)."""
        ...

    async def get_task(self, task_id: str) -> TaskView | None:
        """A task with its clips and transitions, or None."""
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
            await _migrate(conn, self.path)
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot prepare database {self.path}: {exc}") from exc
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
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

    async def record_delivery(self, delivery: Delivery) -> RecordResult:
        async with self.transaction() as tx:
            return await record(tx, delivery)

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
