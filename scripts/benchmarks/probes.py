"""What the benchmarks put inside the processes they measure: handlers named in a config
file by ``module:function`` path, and an ingest role that notes when each delivery committed.

Stamps are ``time.time()`` (one clock for every process on the machine), appended as
``<delivery id> <seconds>`` lines to the file named by ``$BENCH_PROBE_FILE`` (handler starts)
or given to :class:`StampingIngest` (commits).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

from receiver.context import Event, HandlerContext
from receiver.models import Delivery, RecordResult
from receiver.routing import Router
from receiver.storage.database import Database
from receiver.storage.ingest import Ingest

PROBE_FILE = "BENCH_PROBE_FILE"


async def noop(event: Event, ctx: HandlerContext) -> None:
    """A handler that does nothing: jobs are claimed, run and finished, at no cost of their
    own."""


async def probe(event: Event, ctx: HandlerContext) -> None:
    """Note when this handler started, by the delivery that caused its job."""
    started = time.time()
    with open(os.environ[PROBE_FILE], "a") as out:  # noqa: ASYNC230 -- a few µs, after the stamp
        out.write(f"{event.delivery_id} {started!r}\n")


class StampingIngest(Ingest):
    """The real ingest role (any backend), noting the moment each :meth:`record_delivery`
    returned (the transaction committed)."""

    def __init__(self, db: Database, stamps: Path) -> None:
        super().__init__(db)
        self._stamps: IO[str] = stamps.open("a", buffering=1)

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        result = await super().record_delivery(delivery, router=router)
        self._stamps.write(f"{delivery.delivery_id} {time.time()!r}\n")
        return result

    def close(self) -> None:
        self._stamps.close()


def read_stamps(path: Path) -> dict[str, float]:
    """``{delivery id: seconds}`` from a stamp file (the first stamp of an id wins)."""
    found: dict[str, float] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        key, _, value = line.rpartition(" ")
        if key and key not in found:
            found[key] = float(value)
    return found


