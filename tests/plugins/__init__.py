"""Handlers used by tests through config paths (``tests.plugins:touch``), as a user's own
module would be."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

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
        await asyncio.sleep(hold_s)  # not a wait: the job held while a kill lands

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / event.task_id
        # Written whole, then linked into place: a process killed mid-write leaves no empty
        # file behind that the job's next attempt would take for another job's effect.
        staged = folder / f".{event.task_id}.{os.getpid()}.tmp"
        staged.write_text(event.key)
        try:
            os.link(staged, target)
        except FileExistsError:
            if target.read_text() != event.key:
                with (folder / "DOUBLED").open("a") as handle:
                    handle.write(f"{event.task_id} {event.key}\n")
        finally:
            staged.unlink()

    await asyncio.to_thread(write)


def app_that_cannot_start(settings: Any) -> Any:
    """An app factory (for ``receiver.server.serve_processes``) whose app builds fine and then
    fails to start: its lifespan raises the receiver's own error."""
    import contextlib

    from starlette.applications import Starlette

    from receiver.errors import StoreError

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        if os.environ.get("PLANTED_START_FAILURE") == "child":
            raise StoreError("planted: the database went away")
        yield

    return Starlette(lifespan=lifespan)


def app_that_fails_while_marked(settings: Any) -> Any:
    """An app factory whose app answers ``GET /pid`` with its process id, and fails to start
    (the receiver's own error, as when its database is away) while the file named by
    ``$PLANTED_FAILURE_FILE`` exists."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from receiver.errors import StoreError

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        if await asyncio.to_thread(Path(os.environ["PLANTED_FAILURE_FILE"]).exists):
            raise StoreError("planted: the database is away")
        yield

    async def pid(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    return Starlette(routes=[Route("/pid", pid)], lifespan=lifespan)
