"""What the benchmarks put inside the processes they measure: handlers named in a config
file by ``module:function`` path, and the reading of the stamps that
:class:`scripts.benchmarks.stamping.StampingIngest` leaves (it is a module of its own: an
earlier checkout served with ``--before`` imports these handlers, not today's storage).

Stamps are ``time.time()`` (one clock for every process on the machine), appended as
``<delivery id> <seconds>`` lines to the file named by ``$BENCH_PROBE_FILE`` (handler starts)
or given to ``StampingIngest`` (commits).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from receiver.context import Event, HandlerContext

PROBE_FILE = "BENCH_PROBE_FILE"


async def noop(event: Event, ctx: HandlerContext) -> None:
    """A handler that does nothing: jobs are claimed, run and finished, at no cost of their
    own."""


async def probe(event: Event, ctx: HandlerContext) -> None:
    """Note when this handler started, by the delivery that caused its job."""
    started = time.time()
    with open(os.environ[PROBE_FILE], "a") as out:  # noqa: ASYNC230 -- a few µs, after the stamp
        out.write(f"{event.delivery_id} {started!r}\n")


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


