"""The one place uvicorn is driven: serving an app for the CLI, and running one on loopback in
the current event loop (tests, demo, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver import connections
from receiver.errors import ReceiverError
from receiver.settings import Settings

log = structlog.get_logger("receiver.server")


def config(app: Any, *, host: str, port: int, settings: Settings | None = None,
           **options: Any) -> uvicorn.Config:
    """uvicorn settings shared by every entry point: logging is ours (structlog), not uvicorn's.
    With ``settings``, slow and abusive clients are cut off as :mod:`receiver.connections`
    says (header and keep-alive timeouts, connection cap)."""
    options.setdefault("access_log", False)
    options.setdefault("lifespan", "on")
    if settings is not None:
        options.setdefault("http", connections.protocol_class(
            header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections,
        ))
        options.setdefault("timeout_keep_alive", settings.keepalive_timeout_s)
    return uvicorn.Config(app, host=host, port=port, log_config=None, **options)


class _EmbeddedServer(uvicorn.Server):
    """A server that leaves signals to whoever owns the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StartupGuard:
    """Wraps an app so that a :class:`ReceiverError` raised while its lifespan starts (a
    database that cannot be opened) is kept in :attr:`error` with its one-line message, instead
    of a traceback in the log; :func:`serve` raises it once uvicorn has stopped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.error: ReceiverError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched_send(message: Message) -> None:
            # Starlette sends startup.failed from inside its except block: the error is current.
            current = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(current, ReceiverError):
                self.error = current
                message = {**message, "message": current.message}
                await settle_failed_connections()
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except ReceiverError as exc:
            if exc is not self.error:
                raise


async def settle_failed_connections() -> None:
    """Let aiosqlite's threads of connections that failed to open finish while the loop still
    runs. (aiosqlite 0.22 stops such a thread without waiting for it; when the loop closes
    first, as it does when start-up fails, the thread prints a traceback on its way out.)"""
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            await asyncio.to_thread(thread.join, 1.0)


@contextlib.asynccontextmanager
async def running(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                  settings: Settings | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on loopback inside the running loop; yields its base URL.

    ``port=0`` lets the OS pick a free port. The server (and the app's lifespan) is shut down
    when the block exits. With ``settings``, its connection limits apply (see :func:`config`).
    """
    server = _EmbeddedServer(config(app, host=host, port=port, settings=settings))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raises why it failed to start
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.005)
        sockets = [s for srv in server.servers for s in srv.sockets]
        bound_port = sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await task


def serve(app: Any, *, host: str, port: int, settings: Settings | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (the CLI's ``serve``). A :class:`ReceiverError` that
    stopped the app from starting is raised here, after uvicorn has stopped."""
    if settings is not None:
        soft, hard = connections.raise_open_files_limit()
        if soft < settings.max_connections + 64:
            log.warning("open_files_limit_low", soft=soft, hard=hard,
                        max_connections=settings.max_connections)
    guard = StartupGuard(app)
    try:
        uvicorn.Server(config(guard, host=host, port=port, settings=settings,
                              timeout_graceful_shutdown=30)).run()
    except SystemExit:  # uvicorn exits with status 3 when the lifespan fails to start
        if guard.error is not None:
            raise guard.error from None
        raise
    if guard.error is not None:
        raise guard.error
