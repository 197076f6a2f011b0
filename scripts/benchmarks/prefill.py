"""Filling a receiver's database fast to N stored deliveries, as the service stores them, so
that ingest can be measured on a database that has grown (``scripts/bench ingest --prefill``).

One delivery of the load generator's shape (a new task, two clips, the route's job) is
recorded through the real store (:mod:`receiver.recording`); its rows in every table are then
copied N - 1 times with fresh random ids (UUIDs, as the service's: keys that land all over
each index, as real ones do), in transactions of a few thousand deliveries: ``executemany``
on SQLite, ``COPY`` on PostgreSQL. A copied task keeps its own number (``tasks.seq``) and its
clips, transitions and job point to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from receiver.models import Delivery, Source
from receiver.payloads import try_parse
from receiver.routing import HandlerRef, Route, Router
from receiver.signatures import sign_musicapi
from receiver.webhook import kept_headers
from scripts.benchmarks.loadgen import template

TABLES = ("deliveries", "tasks", "clips", "transitions", "jobs")
SKIP = {"deliveries": ("id",), "transitions": ("id",), "jobs": ("id",)}  # numbered on insert
CHUNK = 2_000  # deliveries a transaction
ROUTER = Router([Route(name="bench", on=frozenset({"task.succeeded"}),
                       handlers=(HandlerRef(name="bench_noop"),))])


def prefill(database: Path | str, count: int) -> float:
    """Fill ``database`` (a SQLite file or a PostgreSQL URL) to ``count`` deliveries; the
    seconds it took."""
    began = time.monotonic()
    ids = asyncio.run(_record_one(database))
    if isinstance(database, Path):
        _copy_sqlite(database, ids, count - 1)
    else:
        _copy_postgres(database, ids, count - 1)
    return time.monotonic() - began


async def _record_one(database: Path | str) -> dict[str, str]:
    """Record one delivery through the store; the ids in it, by role."""
    from tests.backends import storage_at

    ids = {"delivery": f"prefill-{uuid.uuid4()}", "task": str(uuid.uuid4()),
           "clip": str(uuid.uuid4())}
    body = template().replace("TASK", ids["task"]).replace("CLIP", ids["clip"]).encode()
    headers = sign_musicapi("prefill-secret", body, int(time.time()))
    headers.update({"x-webhook-id": ids["delivery"], "content-type": "application/json",
                    "host": "127.0.0.1", "content-length": str(len(body))})
    callback, error = try_parse(body, event_header=None, task_id_hint=None)
    delivery = Delivery(delivery_id=ids["delivery"], source=Source.WEBHOOK, scheme="musicapi",
                        event=callback.event.value if callback and callback.event else None,
                        headers=kept_headers(headers), body=body, received_at=time.time(),
                        callback=callback, error=error, task_id_hint=None)
    async with storage_at(database) as store:
        await store.ingest.record_delivery(delivery, router=ROUTER)
    return ids


def _renamed(value: Any, names: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in names:
            value = value.replace(old, new)
    elif isinstance(value, bytes | memoryview):
        value = bytes(value)
        for old, new in names:
            value = value.replace(old.encode(), new.encode())
    return value


def _copies(rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]], ids: dict[str, str],
            first_seq: int, count: int) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """Chunks of copies: table -> rows, each copy with new ids and the next task number."""
    for start in range(0, count, CHUNK):
        chunk: dict[str, list[tuple[Any, ...]]] = {table: [] for table in TABLES}
        for n in range(start, min(count, start + CHUNK)):
            names = [(old, f"prefill-{uuid.uuid4()}" if role == "delivery" else str(uuid.uuid4()))
                     for role, old in ids.items()]
            seq = first_seq + n
            for table, (columns, template_rows) in rows.items():
                for row in template_rows:
                    chunk[table].append(tuple(
                        seq if column in ("seq", "task_seq") else _renamed(value, names)
                        for column, value in zip(columns, row, strict=True)))
        yield chunk


def _template_rows(conn: Any) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    rows = {}
    for table in TABLES:
        cursor = conn.execute(f"SELECT * FROM {table}")  # noqa: S608 (names above)
        names = [d[0] for d in cursor.description]
        keep = [i for i, name in enumerate(names) if name not in SKIP.get(table, ())]
        rows[table] = ([names[i] for i in keep],
                       [tuple(row[i] for i in keep) for row in cursor.fetchall()])
    return rows


def _copy_sqlite(path: Path, ids: dict[str, str], count: int) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for this connection only
        rows = _template_rows(conn)
        first_seq = int(conn.execute("SELECT max(seq) FROM tasks").fetchone()[0]) + 1
        for chunk in _copies(rows, ids, first_seq, count):
            conn.execute("BEGIN")
            for table, (columns, _) in rows.items():
                marks = ", ".join("?" for _ in columns)
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                    chunk[table])
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _copy_postgres(dsn: str, ids: dict[str, str], count: int) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = _template_rows(conn)
        first_seq = int(conn.execute("SELECT max(seq) FROM tasks").fetchone()[0]) + 1
        conn.commit()
        for chunk in _copies(rows, ids, first_seq, count):
            with conn.transaction():
                for table, (columns, _) in rows.items():
                    with conn.cursor().copy(
                            f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in chunk[table]:
                            copy.write_row(row)
        conn.execute("SELECT setval(pg_get_serial_sequence('tasks', 'seq'), "
                     "(SELECT max(seq) FROM tasks))")
        conn.commit()
