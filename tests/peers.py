"""Real peers on loopback for handler tests: a JSON webhook sink (uvicorn) and an SMTP server
(aiosmtpd) that keep what they receive, and an inbox served from a thread for tests that block
on real processes."""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.server import running


@dataclass
class Sink:
    """A JSON webhook peer: keeps every POST; answers ``status[path]`` (200 by default)."""

    base: str = ""
    status: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, int, dict[str, Any], Mapping[str, str]]] = field(
        default_factory=list
    )

    def url(self, path: str, *, userinfo: str = "") -> str:
        host = self.base.removeprefix("http://")
        return f"json://{userinfo}{host}/{path}"

    def delivered(self, path: str | None = None) -> list[dict[str, Any]]:
        """Bodies answered with 2xx (what the peer accepted)."""
        return [body for p, code, body, _ in self.requests
                if code < 300 and (path is None or p == path)]

    def attempts(self, path: str) -> int:
        return sum(1 for p, *_ in self.requests if p == path)


@asynccontextmanager
async def json_sink() -> AsyncIterator[Sink]:
    sink = Sink()

    async def hook(request: Request) -> JSONResponse:
        path = request.path_params["path"]
        code = sink.status.get(path, 200)
        sink.requests.append((path, code, await request.json(), dict(request.headers)))
        return JSONResponse({"ok": code < 300}, status_code=code)

    app = Starlette(routes=[Route("/{path}", hook, methods=["POST"])])
    async with running(app) as base:
        sink.base = base
        yield sink


class Mailbox:
    """An aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def messages(self) -> list[EmailMessage]:
        out = []
        for envelope in self.envelopes:
            assert isinstance(envelope.content, bytes)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
        return out


@asynccontextmanager
async def smtp_server() -> AsyncIterator[tuple[Mailbox, int]]:
    """aiosmtpd's SMTP protocol served in this loop on a port the OS picks. (Its threaded
    ``Controller`` checks readiness by connecting to the configured port, so it cannot take
    port 0; this avoids guessing a free port.)"""
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(mailbox, hostname="receiver.test"), "127.0.0.1", 0
    )
    try:
        yield mailbox, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class _Inbox(http.server.BaseHTTPRequestHandler):
    """POST: keep the JSON body; GET: answer the status the path names (``/status/410``)."""

    server: InboxServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:
            self.server.posts.append((self.path, json.loads(body or b"null")))
        self._answer(200, b'{"ok": true}')

    def do_GET(self) -> None:
        _, _, code = self.path.rpartition("/")
        self._answer(int(code) if code.isdigit() else 404, b"gone")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class InboxServer(http.server.ThreadingHTTPServer):
    """A peer for tests that run blocking (real processes): keeps what is POSTed to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Inbox)
        self.lock = threading.Lock()
        self.posts: list[tuple[str, Any]] = []

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.posts if p == path]


@contextmanager
def inbox() -> Iterator[InboxServer]:
    """An :class:`InboxServer` on loopback, served from a thread while the block runs."""
    server = InboxServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
