"""The lifespan wrapper every served app runs in (receiver.server.StartupGuard): a start-up
error becomes one line, and a started app's heap is frozen out of the garbage collector's
sight. Driven through the ASGI lifespan protocol by hand, as uvicorn drives it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette

from receiver.errors import StoreError
from receiver.server import StartupGuard

pytestmark = pytest.mark.anyio


async def start(app: Any) -> list[dict[str, Any]]:
    """Send lifespan.startup to ``app``; what it answered."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        await inbox.put({"type": "lifespan.shutdown"})

    with contextlib.suppress(Exception):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    return sent


async def test_a_started_app_has_its_heap_frozen() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        sent = await start(StartupGuard(Starlette()))
        assert sent[0]["type"] == "lifespan.startup.complete"
        assert gc.get_freeze_count() > 1000  # the modules, the app: everything alive
    finally:
        gc.unfreeze()


async def test_an_app_that_cannot_start_fails_in_one_line_and_freezes_nothing() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise StoreError("cannot open database /nowhere/receiver.db: unable to open")
        yield

    gc.unfreeze()
    guard = StartupGuard(Starlette(lifespan=lifespan))
    sent = await start(guard)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert sent[0]["message"] == "cannot open database /nowhere/receiver.db: unable to open"
    assert guard.error is not None
    assert gc.get_freeze_count() == 0
