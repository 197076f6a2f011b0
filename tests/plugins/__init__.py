"""Handlers used by tests through config paths (``tests.plugins:touch``), as a user's own
module would be."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from receiver.context import Event, HandlerContext


async def touch(event: Event, ctx: HandlerContext) -> None:
    """Append the job key to ``options.path``, once per run: the file counts the runs."""
    path = Path(str(ctx.options["path"]))

    def append() -> None:
        with path.open("a") as handle:
            handle.write(f"{event.key} pid={os.getpid()}\n")

    await asyncio.to_thread(append)


async def effect_once(event: Event, ctx: HandlerContext) -> None:
    """An effect per task, written as a file named after it holding the job key. A second
    job for the same task (a doubled effect) is written down in ``DOUBLED``. With
    ``options.hold_s``, the job takes that long first (a kill can land while it runs)."""
    folder = Path(str(ctx.options["dir"]))
    hold_s = float(str(ctx.options.get("hold_s", 0)))
    if hold_s > 0:
        await asyncio.sleep(hold_s)

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / event.task_id
        try:
            with target.open("x") as handle:
                handle.write(event.key)
        except FileExistsError:
            if target.read_text() != event.key:
                with (folder / "DOUBLED").open("a") as handle:
                    handle.write(f"{event.task_id} {event.key}\n")

    await asyncio.to_thread(write)
