"""The one place uvicorn is driven: serving an app for the CLI, and running one on loopback in
the current event loop (tests, demo, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn


def config(app: Any, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn settings shared by every entry point: logging is ours (structlog), not uvicorn's."""
    options.setdefault("access_log", False)
    options.setdefault("lifespan", "on")
    return uvicorn.Config(app, host=host, port=port, log_config=None, **options)


class _EmbeddedServer(uvicorn.Server):
    """A server that leaves signals to whoever owns the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on loopback inside the running loop; yields its base URL.

    ``port=0`` lets the OS pick a free port. The server (and the app's lifespan) is shut down
    when the block exits.
    """
    server = _EmbeddedServer(config(app, host=host, port=port))
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


def serve(app: Any, *, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (the CLI's ``serve``)."""
    uvicorn.Server(config(app, host=host, port=port, timeout_graceful_shutdown=30)).run()
