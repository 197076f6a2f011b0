"""``python -m scripts.benchmarks.loadgen``: send signed deliveries for a while, report on
stdout as JSON.

Each delivery is a distinct, validly signed ``song.completed`` callback (its own task, two
clips, about 1.5 KB, like the service's) with its own ``X-Webhook-Id``, so that the receiver
commits every one. ``concurrency`` workers each keep one connection:

``--client raw`` (the default)
    HTTP/1.1 written and read by hand on asyncio streams (keep-alive, ``Content-Length``
    bodies: all the servers measured here send). It costs ~10x less CPU a request than httpx,
    so that on a small machine the server, not the generator, is what saturates.
``--client httpx``
    One ``httpx.AsyncClient`` with a pool of ``concurrency`` connections. It saturates a
    core at a few hundred requests a second, and its pool's cost grows with the square of
    the connections (httpcore assigns requests by scanning every connection on every event):
    measure with several generator processes (``--clients``), and read its CPU column.
 The run starts at ``--start-at`` (unix time, so that several generator
processes start together), sends for ``--warmup`` seconds unmeasured, then ``--duration``
seconds measured: a response counts when it arrives inside the measured window. With
``--rate`` requests are paced (open loop) instead of sent back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx

from receiver.signatures import sign_musicapi

Response = tuple[int, bytes]

_CLIP: dict[str, Any] = {
    "state": "succeeded",
    "title": "Neon Harbour Lights",
    "tags": "synthwave, dreamy, female vocals",
    "lyrics": "[Verse]\nCity lights on the water\nWe drift where the signals go\n\n"
              "[Chorus]\nSing it again, sing it loud\nUnder the neon harbour lights\n\n"
              "[Outro]\nCity lights on the water",
    "image_url": "https://cdn.example.com/image/CLIP.png",
    "audio_url": "https://cdn.example.com/audio/CLIP.mp3",
    "video_url": None,
    "created_at": "2025-01-01T00:00:00.000Z",
    "mv": "sonic-v4-5",
    "gpt_description_prompt": "a dreamy synthwave song about a harbour at night",
    "duration": "104.88",
}


def template() -> str:
    clips = [{"clip_id": f"CLIP-{n}", **_CLIP} for n in ("a", "b")]
    for n, c in zip(("a", "b"), clips, strict=True):
        c["image_url"] = c["image_url"].replace("CLIP", f"CLIP-{n}")
        c["audio_url"] = c["audio_url"].replace("CLIP", f"CLIP-{n}")
    body = {"code": 200, "message": "success", "task_id": "TASK", "platform": "sonic",
            "event": "song.completed", "data": clips}
    return json.dumps(body)


class RawConnection:
    """One keep-alive HTTP/1.1 connection, written and parsed by hand."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.head = f"POST {self.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: dict[str, str]) -> Response:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"{self.head}{lines}Content-Length: {len(body)}\r\n\r\n".encode()
                          + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise ConnectionError(f"connection lost: {exc}") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length, close = 0, False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        content = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.template = template()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.acked: list[str] = []
        self.sent = 0
        self.window = (0.0, 0.0)  # perf_counter bounds of the measured window

    def body(self, delivery_id: str) -> tuple[bytes, dict[str, str]]:
        # random ids, as the service's task and clip ids (UUIDs): sequential ones land next to
        # each other in every index and flatter the bytes written per delivery (about half)
        body = self.template.replace("TASK", str(uuid.uuid4())).replace(
            "CLIP", str(uuid.uuid4())).encode()
        headers = sign_musicapi(self.args.secret, body, int(time.time()))
        headers["X-Webhook-Id"] = delivery_id
        headers["Content-Type"] = "application/json"
        return body, headers

    async def worker(self, client: httpx.AsyncClient | None, index: int, start: float) -> None:
        w0, w1 = self.window
        raw = RawConnection(self.args.url) if client is None else None
        n = 0
        while True:
            if self.args.rate:
                due = start + self.sent / self.args.rate
                self.sent += 1
                if due >= w1:
                    return
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
            elif time.perf_counter() >= w1:
                return
            else:
                self.sent += 1
            n += 1
            delivery_id = f"{self.args.prefix}-{uuid.uuid4()}"
            body, headers = self.body(delivery_id)
            t0 = time.perf_counter()
            try:
                if raw is not None:
                    status, _ = await raw.post(body, headers)
                else:
                    assert client is not None
                    status = (await client.post(self.args.url, content=body,
                                                headers=headers)).status_code
            except (httpx.HTTPError, OSError) as exc:
                self.errors[type(exc).__name__] += 1
                continue
            t1 = time.perf_counter()
            if w0 <= t1 <= w1:
                self.latencies.append(t1 - t0)
                self.statuses[str(status)] += 1
            if status == 200:
                self.acked.append(delivery_id)
        if raw is not None:
            await raw.close()

    async def run(self) -> dict[str, Any]:
        args = self.args
        limits = httpx.Limits(max_connections=args.concurrency,
                              max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as pool:
            client = pool if args.client == "httpx" else None
            await asyncio.sleep(max(0.0, args.start_at - time.time()))
            start = time.perf_counter()
            self.window = (start + args.warmup, start + args.warmup + args.duration)
            cpu: list[float] = []

            async def mark_cpu() -> None:
                for edge in self.window:
                    await asyncio.sleep(max(0.0, edge - time.perf_counter()))
                    cpu.append(time.process_time())

            marks = asyncio.create_task(mark_cpu())
            await asyncio.gather(*(self.worker(client, i, start)
                                   for i in range(args.concurrency)))
            await marks
        return {
            "completed": len(self.latencies),
            "window_s": args.duration,
            "latencies_s": self.latencies,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "acked": self.acked,
            "cpu_s": cpu[1] - cpu[0] if len(cpu) == 2 else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmarks.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--prefix", required=True, help="delivery ids start with this")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0, help="unix time to start at")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (0: back to back)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(Generator(args).run())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
