"""Round trips a PostgreSQL group-commit batch makes, by its size:
``.venv/bin/python -m scripts.benchmarks.roundtrips`` (not one of ``scripts/bench``'s timed
benchmarks: it counts, on a throwaway cluster).

The writer runs in psycopg's pipeline mode, where the client waits for the server only at a
sync point: each ``Pipeline.sync()`` and the pipeline's end (the commit). Those are counted
while one batch of N new deliveries (a new task with two clips each, as the load generator
sends them), then one of N deliveries that finish those tasks (each writing the route's job),
are recorded through the real store.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from receiver.routing import HandlerRef, Route, Router
from tests.backends import storage_at
from tests.services import running_postgres
from tests.support import callback, clip, delivery

ROUTER = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                       handlers=(HandlerRef(name="h"),))])
SIZES = (1, 8, 32, 128)


class _Counted:
    """``psycopg.Pipeline``'s sync points, counted."""

    syncs = 0

    def __init__(self) -> None:
        self.sync = psycopg.Pipeline.sync
        self.exit = psycopg.Pipeline.__exit__

    def install(self) -> None:
        counted = self

        def sync(pipeline: psycopg.Pipeline) -> None:
            counted.syncs += 1
            counted.sync(pipeline)

        def leave(pipeline: psycopg.Pipeline, *exc: Any) -> None:
            counted.syncs += 1
            counted.exit(pipeline, *exc)

        psycopg.Pipeline.sync = sync  # type: ignore[method-assign]
        psycopg.Pipeline.__exit__ = leave  # type: ignore[method-assign]


async def count(dsn: str, counter: _Counted) -> list[tuple[int, int, int]]:
    out = []
    async with storage_at(dsn) as store:
        for size in SIZES:
            tasks = [str(uuid.uuid4()) for _ in range(size)]
            made = []
            for states, event in ((("streaming",) * 2, "song.streaming"),
                                  (("succeeded",) * 2, None)):
                batch = [delivery(str(uuid.uuid4()), callback(task, [
                    clip(f"{task}-{n}", state, audio_url=f"http://cdn/{task}-{n}.mp3")
                    for n, state in enumerate(states)], event=event)) for task in tasks]
                counter.syncs = 0
                await asyncio.gather(*(store.ingest.record_delivery(d, router=ROUTER)
                                       for d in batch))
                made.append(counter.syncs)
            out.append((size, made[0], made[1]))
    return out


def main() -> None:
    counter = _Counted()
    counter.install()
    with running_postgres() as server:
        name = f"roundtrips_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        rows = asyncio.run(count(server.dsn(name), counter))
    print("| deliveries in the batch | round trips, new tasks | round trips, tasks finished "
          "(a job each) |")
    print("|---|---|---|")
    for size, new, finished in rows:
        print(f"| {size} | {new} | {finished} |")


if __name__ == "__main__":
    main()
