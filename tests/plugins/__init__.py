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
