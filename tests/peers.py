"""Real peers on loopback for handler tests: a JSON webhook sink (uvicorn) and an SMTP server
(aiosmtpd) that keep what they receive."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
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
