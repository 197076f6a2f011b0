"""Slow and abusive clients: what a connection may cost the server.

uvicorn closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``), but it waits forever for a request head that never completes, for a
body that trickles in a byte at a time, and for a fresh connection that sends nothing; and it
accepts connections until the process runs out of file descriptors. Here:

- :func:`protocol_class`: uvicorn's HTTP protocol with a **header timeout** (the request head
  must be complete within ``header_timeout_s`` of the connection being made or of the previous
  response; else the connection is closed) and a **connection cap** (past ``max_connections``
  open connections, a new one gets a bare 503 and is closed before anything is read);
- :class:`BodyTimeout`: ASGI middleware that gives a request ``timeout_s`` to deliver its whole
  body and otherwise answers 408 and closes the connection;
- :func:`raise_open_files_limit`: the soft file-descriptor limit raised to the hard one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A stdlib logger: its repeated lines are rate-limited by receiver.logs.FloodFilter.
log = logging.getLogger("receiver.connections")

FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
        b"content-length: 20\r\nconnection: close\r\n\r\ntoo many connections")

_Base: Any = H11Protocol if TYPE_CHECKING else object


class _Guarded(_Base):  # type: ignore[misc]
    """The header timeout and the connection cap, mixed into one of uvicorn's protocols."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("connection cap of %d reached: refusing new connections",
                        self.max_connections)
            self.transport.write(FULL)
            self.transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_head():
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._awaiting_head():
            self._arm_head_timer()
        else:  # a pipelined request's head was already in the buffer
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            self.transport.close()


class GuardedH11Protocol(_Guarded, H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection cap."""


class GuardedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timeout and the connection cap."""


def protocol_class(*, header_timeout_s: float, max_connections: int,
                   implementation: str = "httptools") -> type[asyncio.Protocol]:
    """The HTTP protocol class to give ``uvicorn.Config(http=...)``: ``httptools`` (its C
    parser costs about 0.13 ms less CPU a delivery than h11's pure Python, measured end to
    end) or ``h11``."""
    bases: dict[str, type[asyncio.Protocol]] = {
        "httptools": GuardedHttpToolsProtocol, "h11": GuardedH11Protocol}
    if implementation not in bases:
        raise ValueError(f"unknown HTTP implementation {implementation!r}")
    base = bases[implementation]
    settings = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type(base.__name__, (base,), settings)


class BodyTimeout:
    """ASGI middleware: a request has ``timeout_s`` from its first read to deliver its whole
    body. Past it, the app sees the client as gone (``http.disconnect``, which Starlette raises
    as ``ClientDisconnect``) and, if it has not answered yet, the client gets 408 and the
    connection is closed."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False
        timed_out = False
        started = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete, timed_out
            if complete:  # the body is in: what follows is waiting for a disconnect
                return await receive()
            if timed_out:
                return {"type": "http.disconnect"}
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except Exception:
            if not timed_out:
                raise
        if timed_out and not started:
            response = JSONResponse(
                {"error": "body_timeout",
                 "message": f"the request body did not arrive within {self.timeout_s:g}s"},
                408, headers={"connection": "close"},
            )
            with contextlib.suppress(OSError):
                await response(scope, receive, send)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (each connection is one); returns
    the (soft, hard) limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
