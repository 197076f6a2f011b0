"""The embedded backend: one SQLite file in WAL mode. Connection handling only; the rules are
in the roles above (:mod:`receiver.storage.database`), the SQL in ``queries.sql``.

- Writes run on one connection, one batch at a time: a whole batch of units of work (group
  commit, a savepoint each) commits once. A small batch runs right on the event loop when the
  write lock is free (a trip to another thread costs more than the batch); a big batch, one
  that must wait for another process's lock, and every batch under ``synchronous=full`` (an
  fsync) go to a thread of our own, where they do not stall the loop. aiosqlite has no public
  way to run a function on its thread, so the writer does not use it.
- Reads run on an aiosqlite connection of their own: in WAL mode they see every commit and
  never wait for the writer.
- ``BEGIN IMMEDIATE`` takes the file's write lock up front, so a second process on the same
  file waits at most ``lock_timeout_s``, then the batch fails with :class:`StoreError` (503).
- Checkpoints: a PASSIVE one every quarter second on a connection of its own, followed by an
  fdatasync of the database file, and, when the WAL passed half of ``wal_limit_bytes`` under
  continuous load, a short one by the writer between two batches, which copies the frames
  left, so that the WAL starts over and stays bounded.

With ``synchronous=NORMAL`` (the default) a commit survives the process being killed at any
point; ``full`` also survives power loss, at the price of an fsync per commit. Rows are
``sqlite3.Row``: read by column name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from receiver.errors import StoreError, ValueRefused
from receiver.storage.connector import Params, ReadOnlyTx, Unit, Work, drive
from receiver.storage.records import Row
from receiver.storage.sql import Dialect

T = TypeVar("T")
SYNCHRONOUS = ("normal", "full")
CHECKPOINT_EVERY_S = 0.25
MIGRATION_WAIT_MS = 600_000  # how long opening waits for another process's migration
CATCH_UP_PASSES = 4  # see _checkpoint_loop
CATCH_UP_S = 0.015
INLINE_MAX = 8  # batches up to this many units may run on the event loop (see the docstring)
# Pages of a new database file (an existing file keeps its own): small pages cut the bytes
# a delivery writes, and a leaf still holds enough random ids (scripts/benchmarks/README.md).
PAGE_SIZE = 1024
WAIT_POLL_S = 0.05

DIALECT = Dialect(
    name="sqlite",
    types={"id": "INTEGER PRIMARY KEY", "real": "REAL", "blob": "BLOB"},
    macros={"JSON_TEXTS": "SELECT value FROM json_each({})",
            "JSON_INTS": "SELECT value FROM json_each({})",
            "FOR_CLAIM": ""},  # one writer at a time: nothing to skip
)


class SQLiteConnector:
    """The SQLite file at ``path``."""

    dialect = DIALECT

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "normal",
        lock_timeout_s: float = 5.0,
        min_free_bytes: int = 64 * 1024 * 1024,
        wal_limit_bytes: int = 32 * 1024 * 1024,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}")
        self.path = path
        self.synchronous = synchronous
        self.lock_timeout_s = lock_timeout_s
        self.min_free_bytes = min_free_bytes
        self.wal_limit_bytes = wal_limit_bytes
        self.checkpoint_every_s = checkpoint_every_s
        self._sql = DIALECT.statements()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._raw: sqlite3.Connection | None = None  # the writer's, used on its thread only
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_conn: aiosqlite.Connection | None = None
        self._restart_due = False  # set by the side checkpoint: see _bound_wal
        self._sync_fd: int | None = None  # the database file, for fdatasync: see _sync_database

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    # -- opening and closing -----------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-writer")
        try:
            await self._on_writer(self._connect_writer)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            await self._reader.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            # opened here, not in its task: a task cancelled while connecting would leave an
            # unclosed connection whose thread outlives the event loop
            self._checkpoint_conn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._checkpoint_conn.execute("PRAGMA busy_timeout = 100")
            self._sync_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        self._checkpointer = asyncio.create_task(
            self._checkpoint_loop(self._checkpoint_conn), name="checkpoint")

    @property
    def _busy_ms(self) -> int:
        return max(1, int(self.lock_timeout_s * 1000))

    def _connect_writer(self) -> None:
        # Used by one thread at a time, but not always the same one (see write).
        raw = sqlite3.connect(self.path, isolation_level=None, cached_statements=256,
                              check_same_thread=False)
        try:
            # Another process may be migrating the file: wait for it, however long it takes
            # (a migration that rebuilds tables takes seconds per 100,000 tasks).
            raw.execute(f"PRAGMA busy_timeout = {max(self._busy_ms, MIGRATION_WAIT_MS)}")
            # Only a new file takes it (before WAL mode and the first table); see PAGE_SIZE.
            raw.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            raw.execute("PRAGMA journal_mode = WAL")
            raw.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            raw.execute("PRAGMA foreign_keys = ON")
            raw.execute("PRAGMA wal_autocheckpoint = 0")  # see _checkpoint_loop
            raw.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")
            _migrate(raw, self.path, DIALECT.migrations())
            raw.execute("PRAGMA busy_timeout = 0")  # the writer waits for the lock itself
            raw.row_factory = sqlite3.Row
        except BaseException:
            raw.close()
            raise
        self._raw = raw

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        for name in ("_checkpoint_conn", "_reader"):
            conn = getattr(self, name)
            if conn is not None:
                setattr(self, name, None)
                await conn.close()
        if self._executor is not None:
            if self._raw is not None:
                await self._on_writer(self._close_writer)
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True)
        if self._sync_fd is not None:
            # Last, once no connection is open: closing any descriptor of the file drops every
            # POSIX lock this process holds on it, SQLite's included.
            fd, self._sync_fd = self._sync_fd, None
            os.close(fd)

    def _close_writer(self) -> None:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            with contextlib.suppress(sqlite3.Error):
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
            raw.close()

    async def _on_writer(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise StoreError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def writer_pragma(self, name: str) -> object:
        """A PRAGMA's value on the writer's connection (they are per connection)."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")

        def read() -> object:
            if self._raw is None:
                raise StoreError("the store is not open")
            value: object = self._raw.execute(f"PRAGMA {name}").fetchone()[0]
            return value

        return await self._on_writer(read)

    # -- writing: a batch of units in one trip to the writer's thread ------------------------

    async def write(self, units: Sequence[Unit]) -> None:
        # The store runs one batch at a time, so the connection is never used by the loop and
        # the writer's thread at once.
        try:
            raw = self._raw
            if (raw is not None and len(units) <= INLINE_MAX and self.synchronous == "normal"
                    and _try_begin(raw)):
                self._write_batch(units, begun=True)
                if self._restart_due or self._wal_size() > self.wal_limit_bytes:
                    await self._on_writer(self._bound_wal, raw)
                return
            await self._on_writer(self._write_batch_bounded, units)
        except sqlite3.Error as exc:
            raise _store_error("transaction failed", exc) from exc

    def _write_batch_bounded(self, units: Sequence[Unit]) -> None:
        self._write_batch(units)
        if self._raw is not None and (self._restart_due
                                      or self._wal_size() > self.wal_limit_bytes):
            self._bound_wal(self._raw)

    def _write_batch(self, units: Sequence[Unit], *, begun: bool = False) -> None:
        raw = self._raw
        if raw is None:
            raise StoreError("the store is not open")
        if not begun:
            self._begin(raw)
        try:
            tx = _ThreadTx(raw, self._sql)
            if len(units) == 1:
                unit = units[0]
                try:
                    unit.result = drive(unit.work(tx))
                except Exception as exc:  # this unit alone: roll it back, keep its error
                    raw.execute("ROLLBACK")
                    unit.error = _translate(exc)
                    return
                raw.execute("COMMIT" if unit.keep else "ROLLBACK")
                unit.wrote_jobs = tx.jobs and unit.keep
            else:
                for unit in units:
                    raw.execute("SAVEPOINT unit")
                    tx.jobs = False
                    try:
                        unit.result = drive(unit.work(tx))
                    except Exception as exc:
                        raw.execute("ROLLBACK TO unit")
                        unit.error = _translate(exc)
                    else:
                        if not unit.keep:
                            raw.execute("ROLLBACK TO unit")
                        unit.wrote_jobs = tx.jobs and unit.keep
                    raw.execute("RELEASE unit")
                raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise

    def _begin(self, raw: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting up to ``lock_timeout_s`` while another process (a second
        web process, a separate worker) holds the file's write lock, in steps of at most 2 ms:
        SQLite's own busy handler sleeps up to 100 ms between tries, and two processes on one
        file would then sleep while the lock is free."""
        deadline = time.monotonic() + self.lock_timeout_s
        pause = 0.0001
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _bound_wal(self, raw: sqlite3.Connection) -> None:
        """Under continuous load the passive checkpoints of the side connection never catch up
        (frames keep coming while they copy), so the WAL would never start over. So the writer
        itself checkpoints between two batches, when no frame can arrive: it copies every one
        and the next transaction writes the WAL from its start again. It does so right after
        the side checkpoints found the WAL past half its limit and caught up
        (:meth:`_checkpoint_loop` sets ``_restart_due``), when few frames are left; past the
        limit (the side checkpoints fell behind) it runs anyway. PASSIVE, not RESTART, which
        would also wait for readers and for the side checkpoint."""
        if self._restart_due or self._wal_size() > self.wal_limit_bytes:
            self._restart_due = False
            with contextlib.suppress(sqlite3.Error):
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- reading -----------------------------------------------------------------------------

    async def read(self, work: Work[T]) -> T:
        reader = self._reader
        if reader is None:
            raise StoreError("the store is not open")
        async with self._read_lock:  # one snapshot at a time on the one reader
            try:
                try:
                    await reader.execute("BEGIN")
                except BaseException:
                    # Cancelled (a client gone) or failed as it began: aiosqlite queues a
                    # statement on the reader's thread before it first waits, so the BEGIN
                    # runs all the same; end it there, in order, before the next read's
                    # BEGIN ("cannot start a transaction within a transaction" otherwise).
                    with contextlib.suppress(sqlite3.Error):
                        await reader.execute("ROLLBACK")
                    raise
                try:
                    return await work(_ReaderTx(reader, self._sql))
                finally:
                    await reader.execute("COMMIT")  # queued even when cancelled: see above
            except sqlite3.Error as exc:
                raise _store_error("read failed", exc) from exc

    async def wait_for_jobs(self, wait_s: float) -> None:
        """SQLite has no notifications: watch ``PRAGMA data_version``, which changes when any
        other connection (another process, or this one's writer) commits."""
        reader = self._reader
        if reader is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        first = await self._data_version(reader)
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(WAIT_POLL_S, left))
            if await self._data_version(reader) != first:
                return

    async def _data_version(self, reader: aiosqlite.Connection) -> int:
        async with self._read_lock:
            rows = list(await reader.execute_fetchall("PRAGMA data_version"))
        return int(rows[0][0])

    async def check_space(self) -> None:
        """A probe write can succeed on a full disk (the WAL reuses its space), while a
        delivery's body cannot: demand room for deliveries as well."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            raise StoreError(f"cannot read free space of {self.path.parent}: {exc}") from exc
        if free < self.min_free_bytes:
            raise StoreError(
                f"only {free} bytes free beside {self.path} (need {self.min_free_bytes})")

    # -- checkpoints -------------------------------------------------------------------------

    async def _checkpoint_loop(self, conn: aiosqlite.Connection | None) -> None:
        """Move the WAL back into the database every ``checkpoint_every_s``, on a connection of its
        own, so that no commit waits for the copy and its fsyncs. PASSIVE never blocks a
        writer. When the WAL it found holds more than half the limit, the writer is asked to
        finish the job (:meth:`_bound_wal`), so that the WAL starts over."""
        if conn is None:
            return
        frame = int(next(iter(await conn.execute_fetchall("PRAGMA page_size")))[0]) + 24
        loop = asyncio.get_running_loop()

        async def checkpoint() -> tuple[int, int, float]:
            """The frames the WAL held when the pass began (-1: not in WAL mode), how many of
            them are in the database now, and how long the pass took."""
            began = loop.time()
            rows = list(await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)"))
            return int(rows[0][1]), int(rows[0][2]), loop.time() - began

        synced = (0, 0)  # the WAL's frames and those in the database at the last sync
        while True:
            await asyncio.sleep(self.checkpoint_every_s)
            with contextlib.suppress(sqlite3.Error):
                frames, copied, took = await checkpoint()
                if copied > 0 and (frames, copied) != synced:  # an idle file is not synced
                    await self._sync_database()
                    synced = (frames, copied)
                if frames * frame <= self.wal_limit_bytes // 2:
                    continue
                # Passes again right away copy what was written during the last one; each is
                # shorter, so what is left for the writer (whose pass stalls ingest) is small.
                for _ in range(CATCH_UP_PASSES):
                    if took < CATCH_UP_S:
                        break
                    _, _, took = await checkpoint()
                self._restart_due = True

    async def _sync_database(self) -> None:
        """fdatasync the database file after a side checkpoint copied pages into it. SQLite
        syncs the file only when a checkpoint copies the whole WAL, which under load only the
        writer's pass (:meth:`_bound_wal`) does, and ingest would wait for that sync of every
        page copied since. Synced here, off the writer's way, what is left for that pass is
        what the last catch-up copied. Any descriptor of the file syncs it."""
        fd = self._sync_fd
        if fd is not None:
            # a failure here only leaves more to the writer's sync, which reports its own
            with contextlib.suppress(OSError):
                sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
                await asyncio.get_running_loop().run_in_executor(None, sync, fd)


class _ThreadTx:
    """:class:`receiver.storage.connector.Tx` on the writer's connection: it never suspends."""

    def __init__(self, raw: sqlite3.Connection, sql: Mapping[str, str]) -> None:
        self._raw = raw
        self._sql = sql
        self.jobs = False  # the unit running now called jobs_written()

    async def rows(self, q: str, params: Params | None = None) -> list[Row]:
        return self._raw.execute(self._sql[q], params or {}).fetchall()

    async def one(self, q: str, params: Params | None = None) -> Row | None:
        row: Row | None = self._raw.execute(self._sql[q], params or {}).fetchone()
        return row

    async def run(self, q: str, params: Params | None = None) -> int:
        return self._raw.execute(self._sql[q], params or {}).rowcount

    async def run_many(self, q: str, params: Sequence[Params]) -> int:
        if not params:
            return 0
        before = self._raw.total_changes
        self._raw.executemany(self._sql[q], params)
        return self._raw.total_changes - before

    async def send(self, q: str, params: Params | None = None) -> None:
        sql = self._sql[q]
        if sql:  # empty: a step this dialect has nothing to run for
            self._raw.execute(sql, params or {})

    async def send_many(self, q: str, params: Sequence[Params]) -> None:
        if params:
            self._raw.executemany(self._sql[q], params)

    def jobs_written(self) -> None:
        """Workers in other processes notice the commit through ``PRAGMA data_version``."""
        self.jobs = True


class _ReaderTx(ReadOnlyTx):
    """:class:`receiver.storage.connector.Tx` for reads, on the aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection, sql: Mapping[str, str]) -> None:
        self._conn = conn
        self._sql = sql

    async def rows(self, q: str, params: Params | None = None) -> list[Row]:
        return list(await self._conn.execute_fetchall(self._sql[q], params or {}))

    async def one(self, q: str, params: Params | None = None) -> Row | None:
        rows = await self.rows(q, params)
        return rows[0] if rows else None


def _try_begin(raw: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` if the write lock is free now (the writer's busy timeout is 0)."""
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            return False
        raise
    return True


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return _store_error("transaction failed", exc)
    return exc


def _store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """``exc`` as the store's error: :class:`ValueRefused` when SQLite refused a value (a
    string or blob past its length limit, SQLITE_TOOBIG), not the file."""
    kind = ValueRefused if isinstance(exc, sqlite3.DataError) else StoreError
    return kind(f"{what}: {exc}")


_MIGRATION_LOCK = threading.Lock()


def _migrate(raw: sqlite3.Connection, path: Path, migrations: Sequence[str]) -> None:
    """Apply the migrations this file lacks, each in one transaction with its version bump;
    ``BEGIN IMMEDIATE`` makes processes starting together apply each one once."""
    latest = len(migrations)
    with _MIGRATION_LOCK:
        while True:
            raw.execute("BEGIN IMMEDIATE")
            try:
                version = int(raw.execute("PRAGMA user_version").fetchone()[0])
                if version > latest:
                    raise StoreError(
                        f"database {path} has schema version {version}, newer than this "
                        f"code's {latest}: upgrade sonic-receiver")
                if version == latest:
                    raw.execute("COMMIT")
                    return
                for statement in _split(migrations[version]):
                    raw.execute(statement)
                raw.execute(f"PRAGMA user_version = {version + 1}")
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise


def _split(script: str) -> list[str]:
    """A migration script's statements (they hold no ``;`` inside literals)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
