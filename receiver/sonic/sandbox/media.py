"""Real media bytes, made on demand and the same every time for the same clip.

* Audio: a WAV (8 kHz mono 16-bit by default) exactly ``duration`` long, holding a click
  track at the clip's tempo (an accented click on each bar's first beat), so that get-bpm can
  report the tempo actually used and a test can measure it back from the samples.
* Cover: a small valid PNG (a gradient in the clip's colour).
* HTTP: single byte ranges (206 + Content-Range, 416 when unsatisfiable), HEAD, and the media
  faults of :mod:`.faults` (500, a body cut short, a slow body, a redirect, an HTML page or no
  bytes under the media's type, audio shorter than the clip says), and the 403 of a link
  that expired.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import wave
import zlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from receiver.clock import Clock
from receiver.sonic.sandbox.faults import MediaFault, MediaFaultKind

WAV = "audio/wav"
PNG = "image/png"
_CLICK_S = 0.015


def frames_for(duration_cs: int, sample_rate: int) -> int:
    """Frames in a clip of ``duration_cs`` hundredths of a second (exact for rates that are
    multiples of 100)."""
    return duration_cs * sample_rate // 100


@functools.cache
def _click(sample_rate: int, hz: int) -> bytes:
    count = int(sample_rate * _CLICK_S)
    samples = (
        int(26_000 * math.exp(-i / (count / 4)) * math.sin(2 * math.pi * hz * i / sample_rate))
        for i in range(count)
    )
    # Never a zero sample at the start: the click's onset is its first frame.
    return b"".join(struct.pack("<h", s or 1) for s in samples)


def beat_frames(frames: int, bpm: float, sample_rate: int) -> list[int]:
    """The frame each beat starts at, from frame 0."""
    step = 60.0 * sample_rate / bpm
    return [round(i * step) for i in range(math.ceil(frames / step)) if round(i * step) < frames]


@functools.lru_cache(maxsize=32)
def click_track(duration_cs: int, bpm: float, sample_rate: int, *, start_cs: int = 0) -> bytes:
    """A WAV file, ``duration_cs`` long, of the clip's click track from ``start_cs`` on."""
    frames = frames_for(duration_cs, sample_rate)
    offset = frames_for(start_cs, sample_rate)
    pcm = bytearray(frames * 2)
    for beat, at in enumerate(beat_frames(offset + frames, bpm, sample_rate)):
        if at < offset:
            continue
        click = _click(sample_rate, 1_500 if beat % 4 == 0 else 1_000)
        start = (at - offset) * 2
        chunk = click[: len(pcm) - start]
        pcm[start : start + len(chunk)] = chunk
    return wav_bytes(bytes(pcm), sample_rate)


def silence(duration_cs: int, sample_rate: int) -> bytes:
    return wav_bytes(bytes(frames_for(duration_cs, sample_rate) * 2), sample_rate)


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()


def pcm_of(content: bytes, sample_rate: int) -> bytes | None:
    """The samples of a mono 16-bit WAV at ``sample_rate``, or None for anything else."""
    try:
        with wave.open(io.BytesIO(content), "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (
                1, 2, sample_rate
            ):
                return None
            return wav.readframes(wav.getnframes())
    except (wave.Error, EOFError):
        return None


def shortened(content: bytes, fraction: float = 0.25) -> bytes:
    """A WAV holding the first ``fraction`` of ``content``'s frames (valid audio, shorter than
    it should be); anything that is not a WAV comes back unchanged."""
    try:
        with wave.open(io.BytesIO(content), "rb") as wav:
            params = wav.getparams()
            pcm = wav.readframes(int(wav.getnframes() * fraction))
    except (wave.Error, EOFError):
        return content
    out = io.BytesIO()
    with wave.open(out, "wb") as short:
        short.setparams(params)
        short.writeframes(pcm)
    return out.getvalue()


# What a CDN sends when it serves its own error page as the object (with a 200).
ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head>"
    b"<body><h1>Access denied</h1><p>The link you followed has expired or is not valid."
    b"</p></body></html>\n"
)


def expired_link(reason: str) -> Response:
    """The 403 an object store answers to a link that expired (or was never signed)."""
    body = (
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
        f"<Message>Request {reason}</Message></Error>\n"
    )
    return Response(body, status_code=403, media_type="application/xml")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=256)
def cover_png(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    """A ``size`` by ``size`` PNG: a diagonal gradient from ``rgb`` towards white."""
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter: none
        for x in range(size):
            t = (x + y) / (2 * size)
            rows.extend(int(c + (255 - c) * t) for c in rgb)
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows)))
        + _chunk(b"IEND", b"")
    )


def looks_like_audio(content: bytes, content_type: str | None) -> bool:
    """Audio by its Content-Type or by its first bytes (RIFF/WAVE, ID3, an MPEG frame, FLAC,
    Ogg)."""
    if content_type and content_type.split(";")[0].strip().lower().startswith("audio/"):
        return True
    head = content[:12]
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"WAVE")
        or head[:3] == b"ID3"
        or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
        or head[:4] in (b"fLaC", b"OggS")
    )


def audio_extension(content: bytes) -> str:
    if content[:4] == b"RIFF":
        return "wav"
    if content[:4] == b"fLaC":
        return "flac"
    if content[:4] == b"OggS":
        return "ogg"
    return "mp3"


def wav_duration_cs(content: bytes) -> int | None:
    """The duration of a WAV in hundredths of a second, or ``None`` if it is not one."""
    try:
        with wave.open(io.BytesIO(content), "rb") as wav:
            return round(wav.getnframes() * 100 / wav.getframerate())
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


# --- HTTP -------------------------------------------------------------------------------------


class RangeNotSatisfiable(Exception):
    """The requested range lies outside the content (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` of a single ``Range: bytes=`` request; ``None`` to send
    everything (no header, several ranges, or one we do not understand: RFC 9110 lets a
    server ignore it). Raises :class:`RangeNotSatisfiable` when it cannot be satisfied."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first_text, sep, last_text = header.removeprefix("bytes=").strip().partition("-")
    if not sep or not all(t == "" or (t.isascii() and t.isdigit())
                          for t in (first_text, last_text)):
        return None
    if first_text == "":
        if last_text == "":
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if first >= size:
        raise RangeNotSatisfiable
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


class _CutShort(Response):
    """Promises ``Content-Length`` of the whole body, sends half, then ends the exchange without
    finishing it: the server closes the connection and the client sees a short body."""

    def __init__(self, content: bytes, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": self._content[: len(self._content) // 2],
                "more_body": True,
            }
        )


def media_response(
    request: Request,
    content: bytes,
    content_type: str,
    *,
    fault: MediaFault | None,
    clock: Clock,
) -> Response:
    """``content`` as an HTTP answer honouring Range, with ``fault`` applied (if any)."""
    if fault is not None and fault.kind is MediaFaultKind.STATUS_500:
        return Response("media fault: 500", status_code=500, media_type="text/plain")
    if fault is not None and fault.kind is MediaFaultKind.REDIRECT:
        return RedirectResponse(fault.url or "/", status_code=302)
    if fault is not None and fault.kind is MediaFaultKind.HTML:
        # Range ignored, as an error page does
        return Response(ERROR_PAGE, status_code=200, headers={"Content-Type": content_type})
    if fault is not None and fault.kind is MediaFaultKind.EMPTY:
        return Response(b"", status_code=200, headers={"Content-Type": content_type})
    if fault is not None and fault.kind is MediaFaultKind.SHORT:
        content = shortened(content)
    size = len(content)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=3600"}
    try:
        wanted = byte_range(request.headers.get("range"), size)
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(b"", status_code=416, headers=headers)
    status = 200
    if wanted is not None:
        first, last = wanted
        content = content[first : last + 1]
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        status = 206
    headers["Content-Length"] = str(len(content))
    headers["Content-Type"] = content_type
    if fault is not None and fault.kind is MediaFaultKind.TRUNCATE:
        return _CutShort(content, status, headers)
    if fault is not None and fault.kind is MediaFaultKind.SLOW:
        return StreamingResponse(
            _slowly(content, fault.bytes_per_s, clock), status_code=status, headers=headers
        )
    return Response(content, status_code=status, headers=headers)


async def _slowly(content: bytes, bytes_per_s: int, clock: Clock) -> AsyncIterator[bytes]:
    step = max(1, bytes_per_s // 10)  # ten chunks a second
    for start in range(0, len(content), step):
        chunk = content[start : start + step]
        await clock.sleep(len(chunk) / bytes_per_s)
        yield chunk


def streaming_response(content: bytes, content_type: str) -> Response:
    """A live stream: chunked, with no length and no ranges, like the short-lived streaming
    URL a running task offers."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 64 * 1024):
            yield content[start : start + 64 * 1024]

    return StreamingResponse(
        chunks(), media_type=content_type, headers={"Cache-Control": "no-store"}
    )
