"""Slow and abusive clients: what a connection may cost the server.

uvicorn closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``), but it waits forever for a request head that never completes, for a
body that trickles in a byte at a time, and for a fresh connection that sends nothing; and it
accepts connections until the process runs out of file descriptors. Here:

- :func:`protocol_class`: uvicorn's HTTP protocol with
  - a **header timeout**: a request head must be complete within ``header_timeout_s`` of the
    connection being made, or of the first byte of a later request (an idle kept-alive
    connection is uvicorn's ``timeout_keep_alive``'s);
  - a **head size limit**: a head past :data:`MAX_HEAD_BYTES` gets 431 and the connection is
    closed (httptools holds a head whole, however large, until it ends); a request sending
    more than twice the body limit after its head (a chunked body's endless trailers, which
    no one reads) is cut off;
  - a **connection cap**: past ``max_connections`` open connections an idle kept-alive one is
    closed to make room; with none idle, the new one gets a bare 503 and a lingering close
    (what it sent is read and dropped, never parsed: closing with unread bytes would make the
    kernel reset the connection and drop the 503);
- :class:`BodyTimeout`: ASGI middleware that gives a request ``timeout_s`` to deliver its whole
  body and otherwise answers 408 and closes the connection;
- :func:`raise_open_files_limit`: the soft file-descriptor limit raised to the hard one.

Both timeouts are :class:`Deadlines` (one sweep a tenth of the timeout, not a timer per
request: a late head or body is cut off within 1.1 times its timeout), and the protocol sends
a response's head and body in one write (:class:`_Coalescing`); what each request costs is
measured by ``scripts/bench ingest``.
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
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                  b"content-type: text/plain\r\ncontent-length: 22\r\n"
                  b"connection: close\r\n\r\nrequest head too large")

# A connection refused at the cap reads and drops what its client sends this long at most.
LINGER_S = 2.0

# A request head (its line and headers) larger than this is refused: see _Guarded.
MAX_HEAD_BYTES = 64 * 1024

_Base: Any = H11Protocol if TYPE_CHECKING else object


class Deadlines:
    """Deadlines ``timeout_s`` away, checked by one sweep every ``timeout_s / 10`` while any is
    pending, rather than by a timer each: a timer is a push onto the event loop's heap and a
    pop off it, of handles compared in Python, and a request would pay for one or two.
    What is due is expired (its ``expire()`` called) between ``timeout_s`` and
    ``1.1 * timeout_s`` after it was watched."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._due: dict[Any, float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, item: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Expire ``item`` in ``timeout_s`` unless it is forgotten first."""
        self._due[item] = loop.time() + self.timeout_s
        # (a sweep left on another loop: the same object served again by a new loop, in tests)
        if self._sweep is None or self._loop is not loop:
            self._loop = loop
            self._sweep = loop.call_later(self.timeout_s / 10, self._expire_due, loop)

    def forget(self, item: Any) -> None:
        self._due.pop(item, None)

    def __contains__(self, item: Any) -> bool:
        return item in self._due

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        due = [item for item, deadline in self._due.items() if deadline <= now]
        for item in due:
            del self._due[item]
        self._sweep = (loop.call_later(self.timeout_s / 10, self._expire_due, loop)
                       if self._due else None)
        for item in due:
            item.expire()


class _Guarded(_Base):  # type: ignore[misc]
    """The header timeout and the connection cap, mixed into one of uvicorn's protocols."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    heads: Deadlines = Deadlines(header_timeout_s)  # protocol_class() gives each class its own
    refused = False  # past the cap: answered 503, lingering until closed (see _refuse)
    head_bytes = 0  # received since the current request's body ended (a next head's bytes)
    request_bytes = 0  # received since the current request's head ended (body, trailers)
    max_request_bytes: int = MAX_HEAD_BYTES + 2 * 1048576  # protocol_class() sets it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_Coalescing(transport, self.loop))
        if len(self.connections) > self.max_connections and not self._evict_an_idle_one():
            log.warning("connection cap of %d reached: refusing new connections",
                        self.max_connections)
            self._refuse()
            return
        self.heads.watch(self, self.loop)

    def _refuse(self) -> None:
        """503, then a lingering close: a refused client has usually sent its request already,
        and closing a socket with unread bytes makes the kernel reset the connection and drop
        the 503 unsent. So the 503 is sent and this side shut for writing; what the client
        still sends is read and dropped until it closes (asyncio then closes this side) or
        :data:`LINGER_S` has passed."""
        self.refused = True
        self.transport.write(FULL)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # read and dropped: see _refuse
        cycle = self.cycle
        between = self._between_requests()
        super().data_received(data)
        if self.cycle is not cycle:  # a head ended in this data
            self.head_bytes = self.request_bytes = 0
        elif self.transport.is_closing():
            pass
        elif between:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
        else:  # a body (the app reads it under its limit) or a chunked body's trailers (no one)
            self.request_bytes += len(data)
            if self.request_bytes > self.max_request_bytes:
                log.warning("request past %d bytes after its head: connection closed",
                            self.max_request_bytes)
                self.transport.close()
                return
        if not self._awaiting_head():
            self.heads.forget(self)
        elif self not in self.heads:  # the first byte of the next request starts its clock
            self.heads.watch(self, self.loop)

    def on_response_complete(self) -> None:
        # Idle from here on: uvicorn's keep-alive timer closes the connection, not the header
        # timeout, so that a keep-alive timeout longer than the header timeout holds.
        super().on_response_complete()
        self.heads.forget(self)

    def _idle(self) -> bool:
        """Kept alive after a response, with nothing received since (uvicorn's keep-alive
        timer is armed from the response until the next byte)."""
        return (getattr(self, "timeout_keep_alive_task", None) is not None
                and self._awaiting_head())

    def _evict_an_idle_one(self) -> bool:
        """Close the longest idle kept-alive connection to make room for this new one, as a
        proxy would: a client that held its connection open for later loses nothing it sent,
        and the one idle longest is the least likely to be about to send."""
        idle = [c for c in self.connections
                if c is not self and isinstance(c, _Guarded) and c._idle()
                and not c.transport.is_closing()]
        if not idle:
            return False
        # the keep-alive timer armed earliest: the connection idle since longest
        min(idle, key=lambda c: c.timeout_keep_alive_task.when()).transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.heads.forget(self)
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _between_requests(self) -> bool:
        """Whether what arrives now is a next request's head: the current request's body has
        ended (its response may still be under way: a pipelined head is counted too)."""
        return self.cycle is None or bool(self.cycle.response_complete) or not \
            self.cycle.more_body

    def _refuse_head(self) -> None:
        """A head past :data:`MAX_HEAD_BYTES`: 431, unless a response is under way on this
        connection (then it is only closed), and nothing more is read."""
        log.warning("request head past %d bytes: connection closed", MAX_HEAD_BYTES)
        self.heads.forget(self)
        if self._awaiting_head():
            self.transport.write(HEAD_TOO_LARGE)
        self.transport.close()

    def expire(self) -> None:
        """The header timeout: no complete request head in time."""
        if self._awaiting_head() and not self.transport.is_closing():
            self.transport.close()


class _Coalescing:
    """A connection's transport whose writes made in one turn of the event loop go out
    together, at the end of that turn: uvicorn writes a response's head and its body
    separately, which costs two send(2) calls and two TCP segments for every small answer.
    Closing sends what is held first; everything else is the transport's own."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def _flush(self) -> None:
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedH11Protocol(_Guarded, H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection cap."""


class GuardedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timeout and the connection cap."""


def protocol_class(*, header_timeout_s: float, max_connections: int,
                   implementation: str = "httptools",
                   max_body_bytes: int = 1048576) -> type[asyncio.Protocol]:
    """The HTTP protocol class to give ``uvicorn.Config(http=...)``: ``httptools`` (a C parser,
    cheaper per request than h11's pure Python: ``scripts/bench ingest``) or ``h11``.
    ``max_body_bytes``: the largest body any route takes; a request that sends more than
    twice that after its head (chunk framing, trailers) is cut off."""
    bases: dict[str, type[asyncio.Protocol]] = {
        "httptools": GuardedHttpToolsProtocol, "h11": GuardedH11Protocol}
    if implementation not in bases:
        raise ValueError(f"unknown HTTP implementation {implementation!r}")
    base = bases[implementation]
    settings = {"header_timeout_s": header_timeout_s, "max_connections": max_connections,
                "heads": Deadlines(header_timeout_s),
                "max_request_bytes": MAX_HEAD_BYTES + 2 * max_body_bytes}
    return type(base.__name__, (base,), settings)


class BodyTimeout:
    """ASGI middleware: a request has ``timeout_s`` from its first read to deliver its whole
    body. Past it, the app sees the client as gone (``http.disconnect``, which Starlette raises
    as ``ClientDisconnect``) and, if it has not answered yet, the client gets 408 and the
    connection is closed. The deadlines are :class:`Deadlines`' (a late body is cut off
    within ``1.1 * timeout_s``)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.bodies = Deadlines(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _BodyGuard(self.bodies, receive, send)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.timed_out:
                raise
        finally:
            self.bodies.forget(guard)
        if guard.timed_out and not guard.started:
            response = JSONResponse(
                {"error": "body_timeout",
                 "message": f"the request body did not arrive within {self.timeout_s:g}s"},
                408, headers={"connection": "close"},
            )
            with contextlib.suppress(OSError):
                await response(scope, receive, send)


_DISCONNECT: Message = {"type": "http.disconnect"}


class _BodyGuard:
    """One request under :class:`BodyTimeout`: watched from its first read until its body is
    in. Expired while the app waits for the body, that wait is cancelled and answered
    ``http.disconnect``; expired between reads, the next read is."""

    __slots__ = ("_bodies", "_cancelled", "_cancelling", "_receive", "_send", "_task",
                 "_waiting", "complete", "started", "timed_out")

    def __init__(self, bodies: Deadlines, receive: Receive, send: Send) -> None:
        self._bodies = bodies
        self._receive = receive
        self._send = send
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._waiting = False
        self._cancelled = False  # expire() cancelled the wait in receive()
        self.complete = False  # the whole body is in: what follows waits for a disconnect
        self.timed_out = False
        self.started = False  # the app has started its response

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()
        if self.timed_out:
            return _DISCONNECT
        if self._task is None:  # the first read: the clock starts
            task = self._task = asyncio.current_task()
            assert task is not None  # an ASGI app runs in a task
            self._cancelling = task.cancelling()
            self._bodies.watch(self, task.get_loop())
        self._waiting = True
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self._cancelled and self._task is not None:
                self._cancelled = False
                if self._task.uncancel() <= self._cancelling:
                    return _DISCONNECT  # our own cancellation: the body is late
            raise
        finally:
            self._waiting = False
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
            self._bodies.forget(self)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    def expire(self) -> None:
        if self.complete:
            return
        self.timed_out = True
        if self._waiting and self._task is not None:
            self._cancelled = True
            self._task.cancel()


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (each connection is one); returns
    the (soft, hard) limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
