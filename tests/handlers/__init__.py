"""Handler tests, and the small media server they (and the fetching tests) download from: a
real Starlette app served by uvicorn on loopback, whose files can fail, stall, redirect or
stop half-way, and which remembers every request it was sent."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver.server import running
from tests.support import http_client

LOOPBACK_ONLY = {"network": {"allow_networks": ["127.0.0.0/8"]}}


@dataclass
class Media:
    """One file the server holds, and how it misbehaves."""

    body: bytes
    content_type: str = "audio/mpeg"
    etag: str | None = None
    fail_first: int = 0  # answer fail_status to this many requests first
    fail_status: int = 500
    cut_first: int = 0  # stop half-way through this many bodies first
    pause_s: float = 0.0  # between chunks
    chunk: int = 16 * 1024
    ranges: bool = True  # honour Range
    length: bool = True  # send Content-Length (else chunked)
    redirect: str | None = None  # answer 302 to this Location


@dataclass(frozen=True, kw_only=True)
class Seen:
    path: str
    host: str | None
    range: str | None
    if_range: str | None


@dataclass
class MediaServer:
    files: dict[str, Media] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    base: str = ""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    def ranges(self, path: str) -> list[str | None]:
        return [s.range for s in self.seen if s.path == path]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._serve)])

    async def _serve(self, request: Request) -> Response:
        path = request.url.path
        self.seen.append(Seen(path=path, host=request.headers.get("host"),
                              range=request.headers.get("range"),
                              if_range=request.headers.get("if-range")))
        media = self.files.get(path)
        if media is None:
            return Response("not here", status_code=404, media_type="text/plain")
        if media.redirect is not None:
            return RedirectResponse(media.redirect, status_code=302)
        if media.fail_first > 0:
            media.fail_first -= 1
            return Response("broken", status_code=media.fail_status, media_type="text/plain")
        body, status = media.body, 200
        headers = {"content-type": media.content_type}
        if media.etag:
            headers["etag"] = media.etag
        first = _range_start(request, media)
        if first is not None:
            if first >= len(body):
                return Response(b"", status_code=416,
                                headers={"content-range": f"bytes */{len(body)}"})
            headers["content-range"] = f"bytes {first}-{len(body) - 1}/{len(body)}"
            body, status = body[first:], 206
        if media.cut_first > 0:
            media.cut_first -= 1
            headers["content-length"] = str(len(body))
            return _CutShort(body[: len(body) // 2], status, headers)
        if media.length:
            headers["content-length"] = str(len(body))
        return StreamingResponse(_chunks(body, media.chunk, media.pause_s), status_code=status,
                                 headers=headers)


def _range_start(request: Request, media: Media) -> int | None:
    header = request.headers.get("range")
    if not media.ranges or not header or not header.startswith("bytes="):
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != media.etag:
        return None  # the resource changed: the whole of it, as RFC 9110 says
    start, _, end = header.removeprefix("bytes=").partition("-")
    return int(start) if start.isdigit() and not end else None


async def _chunks(body: bytes, size: int, pause_s: float) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        if pause_s and start:
            await asyncio.sleep(pause_s)
        yield body[start : start + size]


class _CutShort(Response):
    """Promises the whole Content-Length, sends part of it, and ends the exchange unfinished:
    uvicorn closes the connection and the client sees a short body."""

    def __init__(self, part: bytes, status: int, headers: dict[str, str]) -> None:
        super().__init__(status_code=status, headers=headers)
        self._part = part

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self._part, "more_body": True})


@asynccontextmanager
async def media_server() -> AsyncIterator[MediaServer]:
    server = MediaServer()
    async with running(server.app()) as base:
        server.base = base
        yield server


@asynccontextmanager
async def watched_client() -> AsyncIterator[tuple[httpx.AsyncClient, list[httpx.URL]]]:
    """A client that notes the URL of every request it sends (the address it connects to),
    so a test can show that nothing was sent outside loopback."""
    sent: list[httpx.URL] = []

    async def note(request: httpx.Request) -> None:
        sent.append(request.url)

    async with http_client(timeout=httpx.Timeout(5.0),
                                 event_hooks={"request": [note]}) as client:
        yield client, sent


def mp3_bytes(frames: int = 24) -> bytes:
    """A small valid MPEG-1 Layer III stream (128 kbit/s, 44.1 kHz, stereo, silent frames)
    that mutagen can parse: each frame is its 4-byte header and 413 zero bytes."""
    header = struct.pack(">I", 0xFFFB9000)
    frame = header + bytes(144 * 128_000 // 44_100 - 4)
    return frame * frames


def wav_bytes(frames: int = 8_000) -> bytes:
    """A one-second 8 kHz mono 16-bit silent WAV."""
    data = bytes(frames * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, 8_000, 16_000, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack(
        "<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


PNG_BYTES = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
