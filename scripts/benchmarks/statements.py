"""``python -m scripts.benchmarks.statements``: what one SQLite group-commit batch spends under
the file's write lock, statement by statement (not one of ``scripts/bench``'s timed
benchmarks: it explains them).

The load generator's deliveries (a new task, two clips, the route's job each) are recorded
through the real store, with no HTTP, by ``--callers`` at once (so group commit makes batches
of about that size), on a fresh file or on ``--db`` (e.g. one filled by
:mod:`scripts.benchmarks.prefill`, to see what a grown file costs). The writer's statements,
units of work and batches are timed by wrapping the connector's own methods; the wrappers add
about a microsecond a call. ``--cache-mib`` and ``--mmap-mib`` set the writer connection's
``cache_size`` and ``mmap_size`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from receiver.models import Delivery, Source
from receiver.payloads import try_parse
from receiver.signatures import sign_musicapi
from receiver.storage import sqlite
from receiver.webhook import kept_headers
from scripts.benchmarks.loadgen import template
from scripts.benchmarks.prefill import ROUTER

SPENT: defaultdict[str, float] = defaultdict(float)  # seconds, by statement or <what>
CALLS: Counter[str] = Counter()


def _timed_statement(inner: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(self: Any, q: str, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return await inner(self, q, *args)
        finally:
            SPENT[q] += time.perf_counter() - began
            CALLS[q] += 1
    return timed


def _timed_statements() -> None:
    for method in ("rows", "one", "run", "run_many", "send", "send_many"):
        setattr(sqlite._ThreadTx, method, _timed_statement(getattr(sqlite._ThreadTx, method)))


def _timed(name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - began
            CALLS[name] += 1
    return timed


def delivery() -> Delivery:
    task, clip = str(uuid.uuid4()), str(uuid.uuid4())
    body = template().replace("TASK", task).replace("CLIP", clip).encode()
    headers = sign_musicapi("statements", body, int(time.time()))
    headers.update({"x-webhook-id": str(uuid.uuid4()), "content-type": "application/json"})
    callback, error = try_parse(body, event_header=None, task_id_hint=None)
    return Delivery(delivery_id=headers["x-webhook-id"], source=Source.WEBHOOK,
                    scheme="musicapi", event=callback.event.value if callback and callback.event
                    else None, headers=kept_headers(headers), body=body,
                    received_at=time.time(), callback=callback, error=error, task_id_hint=None)


async def measure(path: Path, count: int, callers: int, cache_mib: int, mmap_mib: int) -> str:
    from tests.backends import storage_at

    made = [delivery() for _ in range(count)]
    async with storage_at(path) as store:
        raw = store.db.connector._raw  # type: ignore[attr-defined]
        if cache_mib:
            raw.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
        if mmap_mib:
            raw.execute(f"PRAGMA mmap_size = {mmap_mib * 2**20}")
        pending = iter(made)

        async def caller() -> None:
            for one in pending:
                await store.ingest.record_delivery(one, router=ROUTER)

        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(caller() for _ in range(callers)))
        took, cpu = time.perf_counter() - began, time.process_time() - cpu
    batches = CALLS["<a batch, BEGIN to COMMIT>"]
    lines = [f"{count:,} deliveries in {took:.2f} s: {count / took:,.0f}/s, "
             f"{cpu / count * 1e3:.3f} ms of CPU a delivery (all threads), "
             f"{batches:,} batches of {count / max(1, batches):.1f}", "",
             "| µs a delivery | calls | what |", "|---|---|---|"]
    for name, spent in sorted(SPENT.items(), key=lambda item: -item[1]):
        lines.append(f"| {spent / count * 1e6:.1f} | {CALLS[name]:,} | {name} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmarks.statements",
                                     description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--db", type=Path, help="record into this SQLite file (it grows)")
    parser.add_argument("--cache-mib", type=int, default=0)
    parser.add_argument("--mmap-mib", type=int, default=0)
    args = parser.parse_args(argv)
    _timed_statements()
    setattr(sqlite, "drive", _timed("<a unit of work, statements included>", sqlite.drive))  # noqa: B010
    connector = sqlite.SQLiteConnector
    connector._write_batch = _timed(  # type: ignore[method-assign]
        "<a batch, BEGIN to COMMIT>", connector._write_batch)
    with tempfile.TemporaryDirectory(prefix="statements-") as folder:
        path = args.db or Path(folder) / "receiver.db"
        print(asyncio.run(measure(path, args.count, args.callers, args.cache_mib,
                                  args.mmap_mib)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
