"""Slow and abusive clients against a real uvicorn on loopback, with real sockets: slow
headers, slow bodies and idle connections are cut off after the configured timeouts, too many
connections are refused, and a normal signed sender's deliveries keep succeeding meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from asyncio.constants import ACCEPT_RETRY_DELAY
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message

from receiver.app import create_app
from receiver.connections import MAX_HEAD_BYTES, BodyTimeout, raise_open_files_limit
from receiver.errors import SettingsError
from receiver.server import running
from receiver.settings import load
from tests.processes import serve
from tests.support import callback, clip, free_port, settings_for, signed_headers
from tests.waiting import wait_until, wait_until_blocking

pytestmark = pytest.mark.anyio

# Short limits, so that the test does not wait long; the assertions are about what happens,
# not how fast (a connection that is never cut off fails the test at GIVE_UP_S).
LIMITS: dict[str, Any] = {"header_timeout_s": 0.5, "body_timeout_s": 0.5,
                          "keepalive_timeout_s": 0.5}
GIVE_UP_S = 20.0


@pytest.fixture(params=["httptools", "h11"])
def http_parser(request: pytest.FixtureRequest) -> str:
    """Both of uvicorn's HTTP implementations carry the same guards."""
    return str(request.param)


@asynccontextmanager
async def receiver(tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[str, int]]:
    settings = settings_for(tmp_path, **{**LIMITS, **limits})
    async with running(create_app(settings), settings=settings) as url:
        yield url, int(url.rsplit(":", 1)[1])


async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection; ``(data, True)`` once it
    has, ``(data, False)`` if it still holds the connection after GIVE_UP_S."""
    data = b""
    try:
        async with asyncio.timeout(GIVE_UP_S):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


async def sent_slowly(port: int, start: bytes, then: bytes | None) -> tuple[bytes, bool]:
    """Send ``start``, then ``then`` every 100 ms for ever (or nothing more when None); what
    the server answers, and whether it closed the connection (see :func:`until_closed`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(start)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while then is not None:
                await writer.drain()
                await asyncio.sleep(0.1)  # not a wait: the trickle is the slow client itself
                writer.write(then)

    feeding = asyncio.create_task(trickle())
    try:
        return await until_closed(reader)
    finally:
        feeding.cancel()
        writer.close()


async def slow_header(port: int) -> tuple[bytes, bool]:
    """Slowloris: a request head that grows by a byte every 100 ms and never ends."""
    return await sent_slowly(
        port, b"POST /webhooks/sonic HTTP/1.1\r\nHost: receiver\r\nX-Slow: ", b"z")


async def slow_body(port: int, *, trickle: bool) -> tuple[bytes, bool]:
    """A complete head announcing 1,000 bytes, then 10 bytes, then a stall (or a byte every
    100 ms)."""
    return await sent_slowly(
        port, b"POST /webhooks/sonic HTTP/1.1\r\nHost: receiver\r\nContent-Length: 1000\r\n"
        b"Content-Type: application/json\r\n\r\n" + b"{" * 10, b" " if trickle else None)


async def idle(port: int, *, after_a_request: bool) -> tuple[bytes, bool]:
    """A connection that sends nothing (at all, or after one answered request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if after_a_request:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
    try:
        return await until_closed(reader)
    finally:
        writer.close()


async def normal_sender(url: str, count: int) -> list[int]:
    statuses = []
    async with httpx.AsyncClient(timeout=GIVE_UP_S) as http:
        for n in range(count):
            body = callback(f"t-{n}", [clip(f"c-{n}", "succeeded")])
            answer = await http.post(f"{url}/webhooks/sonic", content=body,
                                     headers=signed_headers(body, delivery_id=f"d-{n}"))
            statuses.append(answer.status_code)
            await asyncio.sleep(0.02)  # not a wait: paced, to keep sending while abused
    return statuses


async def test_slow_and_idle_clients_are_cut_off_while_deliveries_keep_succeeding(
    tmp_path: Path, http_parser: str,
) -> None:
    async with receiver(tmp_path, http_parser=http_parser) as (url, port):
        abusers = [
            *(slow_header(port) for _ in range(20)),
            *(slow_body(port, trickle=False) for _ in range(10)),
            *(slow_body(port, trickle=True) for _ in range(10)),
            *(idle(port, after_a_request=False) for _ in range(10)),
            *(idle(port, after_a_request=True) for _ in range(10)),
        ]
        abused = asyncio.gather(*abusers)
        statuses = await normal_sender(url, 40)
        results = await abused
    assert statuses == [200] * 40
    closed = [was_closed for _, was_closed in results]
    assert closed == [True] * len(results)
    heads, stalled, trickled, fresh, kept = (results[0:20], results[20:30], results[30:40],
                                             results[40:50], results[50:60])
    assert all(data == b"" for data, _ in heads)  # cut off: nothing to answer
    assert all(data.startswith(b"HTTP/1.1 408 ") for data, _ in stalled)
    assert all(data == b"" or data.startswith(b"HTTP/1.1 408 ") for data, _ in trickled)
    assert all(data == b"" for data, _ in fresh)
    assert all(data.startswith(b"HTTP/1.1 200 ") for data, _ in kept)


async def test_past_the_connection_cap_new_connections_get_503_and_are_closed(
    tmp_path: Path, http_parser: str,
) -> None:
    async with receiver(tmp_path, max_connections=3, header_timeout_s=60,
                        keepalive_timeout_s=60, http_parser=http_parser) as (url, port):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data, closed = await until_closed(reader)
        writer.close()
        assert closed
        assert data.startswith(b"HTTP/1.1 503 ")
        for _, w in held:
            w.close()
            await w.wait_closed()
        # Once the held connections are gone, the server takes requests again.
        async with httpx.AsyncClient(timeout=GIVE_UP_S) as http:

            async def answered() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get(f"{url}/healthz")).status_code == 200
                return False

            await wait_until(answered, within=10, what="the server to take a request again")


async def answered_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One ``GET /healthz`` on a raw connection, kept alive; the head of its answer."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
    async with asyncio.timeout(GIVE_UP_S):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
    return head


async def test_a_kept_alive_connection_is_held_past_the_header_timeout_until_its_next_byte(
    tmp_path: Path, http_parser: str,
) -> None:
    """The header timeout counts from a kept-alive connection's next byte, not from the
    previous response: an idle connection is the keep-alive timeout's (held, and used again),
    while a next head begun and left unfinished is cut off by the header timeout."""
    async with receiver(tmp_path, header_timeout_s=0.3, keepalive_timeout_s=60,
                        http_parser=http_parser) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await answered_on(reader, writer)).startswith(b"HTTP/1.1 200 ")
            # not a wait: the client idles three header timeouts, which is what is tested
            await asyncio.sleep(1.0)
            assert (await answered_on(reader, writer)).startswith(b"HTTP/1.1 200 ")
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: rec")
            data, closed = await until_closed(reader)
        finally:
            writer.close()
    assert closed  # by the header timeout: the keep-alive timeout (60 s) is past GIVE_UP_S
    assert data == b""


async def test_at_the_connection_cap_an_idle_kept_alive_connection_makes_room(
    tmp_path: Path, http_parser: str,
) -> None:
    """Past the cap a new connection is served and the longest idle kept-alive connection is
    closed in its place (a pool's spare connection costs its client nothing); only with none
    idle is the new one refused."""
    async with receiver(tmp_path, max_connections=3, header_timeout_s=60,
                        keepalive_timeout_s=60, http_parser=http_parser) as (_, port):
        kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            for reader, writer in kept:
                assert (await answered_on(reader, writer)).startswith(b"HTTP/1.1 200 ")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert (await answered_on(reader, writer)).startswith(b"HTTP/1.1 200 ")
            finally:
                writer.close()
            ends = [asyncio.create_task(r.read()) for r, _ in kept]
            done, pending = await asyncio.wait(ends, timeout=GIVE_UP_S,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            assert done == {ends[0]}  # the one idle longest (it was answered first)
            assert ends[0].result() == b""  # closed, nothing sent
        finally:
            for _, w in kept:
                w.close()


async def sent_at_once(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` as fast as the server reads it (giving up when it stops reading): what the
    server answers, and whether it closed the connection (see :func:`until_closed`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for at in range(0, len(data), 65536):
                writer.write(data[at:at + 65536])
                await writer.drain()

    sending = asyncio.create_task(send())
    try:
        return await until_closed(reader)
    finally:
        sending.cancel()
        writer.close()


async def test_a_request_head_past_the_limit_gets_431_and_is_not_read_on(
    tmp_path: Path, http_parser: str,
) -> None:
    """A request head (its line and headers) is held in memory until it ends, and a verified
    delivery keeps its headers: past MAX_HEAD_BYTES it gets 431 and the connection is closed,
    whether the head is many headers, one endless header value or an endless URL, and on a
    kept-alive connection too; a head under the limit with a body as large as allowed is
    served."""
    many = b"".join(b"X-H%d: %s\r\n" % (n, b"a" * 100) for n in range(2000))
    heads = {
        "many headers": b"POST /webhooks/sonic HTTP/1.1\r\nHost: r\r\n" + many
        + b"Content-Length: 2\r\n\r\n{}",
        "one endless value": b"POST /webhooks/sonic HTTP/1.1\r\nHost: r\r\nX-Big: "
        + b"b" * (8 << 20),
        "endless url": b"GET /healthz?" + b"u" * (8 << 20),
        "kept alive": b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: r\r\n" + many,
    }
    body = callback("t-big", [clip("c-big", "succeeded")])
    under = body + b" " * (1_048_576 - len(body))
    signed = signed_headers(under, delivery_id="d-under")
    allowed = (b"POST /webhooks/sonic HTTP/1.1\r\nHost: r\r\n"
               + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in signed.items())
               + b"X-Pad: " + b"p" * (MAX_HEAD_BYTES // 2) + b"\r\n"
               + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(under) + under)
    async with receiver(tmp_path, header_timeout_s=60, body_timeout_s=60,
                        http_parser=http_parser) as (_, port):
        answers = {name: await sent_at_once(port, head) for name, head in heads.items()}
        served, closed = await sent_at_once(port, allowed)
    for name, (data, was_closed) in answers.items():
        assert was_closed, name
        # (h11 reads a head sent behind a request out of its own buffer once that request is
        # answered; that buffer has its own limit, twice ours, which uvicorn answers 400)
        refused = b"HTTP/1.1 431 " in data or (
            http_parser == "h11" and name == "kept alive" and b"HTTP/1.1 400 " in data)
        assert refused, (name, data[:200])
    assert answers["kept alive"][0].startswith(b"HTTP/1.1 200 ")
    assert closed
    assert served.startswith(b"HTTP/1.1 200 "), served[:300]


async def test_a_chunked_body_whose_trailers_never_end_is_cut_off(
    tmp_path: Path, http_parser: str,
) -> None:
    """A chunked body's trailers are headers after the body: the app never sees them, and
    httptools holds them whole until they end. What a request sends after its head (body and
    trailers) is bounded too: past MAX_HEAD_BYTES plus twice RECEIVER_MAX_BODY_BYTES the
    connection is closed, long before the body timeout."""
    endless = (b"POST /webhooks/sonic HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\nX-Trailer: " + b"t" * (8 << 20))
    async with receiver(tmp_path, header_timeout_s=60, body_timeout_s=60,
                        max_body_bytes=65536, http_parser=http_parser) as (_, port):
        _, closed = await sent_at_once(port, endless)
    assert closed


async def first_line_or_reset(port: int) -> str:
    """One connection that sends its request at once: the first line of what it reads to the
    end, or ``reset``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\nConnection: close\r\n\r\n")
        data = b""
        async with asyncio.timeout(GIVE_UP_S):
            while chunk := await reader.read(65536):
                data += chunk
        return data.split(b"\r\n", 1)[0].decode()
    except ConnectionResetError:
        return "reset"
    finally:
        writer.close()


def test_past_the_cap_each_client_of_a_burst_reads_its_503_not_a_reset(
    tmp_path: Path, http_parser: str,
) -> None:
    """A refused client has sent its request by the time it is refused; closing a socket
    with unread bytes makes the kernel reset the connection, dropping the 503 unsent. A burst
    of 300 connections on a cap of 20 (``serve``, as deployed: the load from another
    process): every one reads 200 or 503, none a reset."""
    port = free_port()

    async def bursts() -> Counter[str]:
        got: Counter[str] = Counter()
        for _ in range(3):
            got.update(await asyncio.gather(*(first_line_or_reset(port) for _ in range(300))))
        return got

    with serve(tmp_path / "r.db", port, tmp_path / "serve.log", extra_env={
            "RECEIVER_MAX_CONNECTIONS": "20", "RECEIVER_HTTP_PARSER": http_parser}):
        got = asyncio.run(bursts())
    assert set(got) <= {"HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"}, got
    assert got["HTTP/1.1 503 Service Unavailable"] > 0


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft == hard and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
        assert raise_open_files_limit() == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_limits_are_settings_with_defaults() -> None:
    base = {"SONIC_WEBHOOK_SECRET": "s3cret-1"}
    defaults = load(base)
    assert (defaults.header_timeout_s, defaults.body_timeout_s, defaults.keepalive_timeout_s,
            defaults.max_connections, defaults.http_parser) == (10.0, 20.0, 120.0, 1000,
                                                                 "httptools")
    tuned = load({**base, "RECEIVER_HEADER_TIMEOUT_S": "2.5", "RECEIVER_BODY_TIMEOUT_S": "7",
                  "RECEIVER_KEEPALIVE_TIMEOUT_S": "1", "RECEIVER_MAX_CONNECTIONS": "50",
                  "RECEIVER_HTTP_PARSER": "H11"})
    assert (tuned.header_timeout_s, tuned.body_timeout_s, tuned.keepalive_timeout_s,
            tuned.max_connections, tuned.http_parser) == (2.5, 7.0, 1.0, 50, "h11")
    for name, value in (("RECEIVER_HEADER_TIMEOUT_S", "0"), ("RECEIVER_BODY_TIMEOUT_S", "x"),
                        ("RECEIVER_KEEPALIVE_TIMEOUT_S", "-1"),
                        ("RECEIVER_MAX_CONNECTIONS", "0"), ("RECEIVER_BODY_TIMEOUT_S", "inf"),
                        ("RECEIVER_HTTP_PARSER", "llhttp")):
        with pytest.raises(SettingsError, match=name):
            load({**base, name: value})


FEW_FILES = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
sys.argv[0] = "sonic-receiver"
runpy.run_module("receiver", run_name="__main__")
"""


@pytest.mark.slow
def test_running_out_of_file_descriptors_does_not_flood_the_log(tmp_path: Path) -> None:
    """A server with 100 file descriptors, 300 connections held for seconds after its first
    failed accept(): asyncio reports every failed accept() (tens of thousands of lines without
    the filter); the log gets it once."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
    env |= {"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_DB": str(tmp_path / "r.db"), "RECEIVER_HEADER_TIMEOUT_S": "60"}
    (tmp_path / "routes.toml").write_text("routes = []\n")
    env["RECEIVER_CONFIG"] = str(tmp_path / "routes.toml")
    log = tmp_path / "log"
    with log.open("wb") as out:
        # The limit is set by the child itself (no preexec_fn: fork in a threaded test runner).
        proc = subprocess.Popen([sys.executable, "-c", FEW_FILES, "serve", "--port", str(port)],
                                env=env, stdout=out, stderr=out)
    held: list[socket.socket] = []

    def connected() -> bool:
        with contextlib.suppress(OSError):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        return len(held) > 0

    try:
        wait_until_blocking(connected, within=30, what="the server to listen",
                            detail=log.read_text)
        for _ in range(299):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        wait_until_blocking(lambda: "out of system resource" in log.read_text(), within=30,
                            what="the server to run out of file descriptors",
                            detail=log.read_text)
        # Not a wait: the connections stay held past the first failure, for asyncio's
        # accept() retries (one a second) to fail again, the flood the log must hold back.
        time.sleep(3 * ACCEPT_RETRY_DELAY)
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "open_files_limit_low" in text  # the server knew, and said so once
    assert text.count("out of system resource") == 1, text[-2000:]


# ---- BodyTimeout on its own: the ASGI messages a server would send, from a queue ---------------
# (no HTTP client can hold a body back on cue; the end-to-end test above does it with sockets)


class Exchange:
    """One request's side of the ASGI conversation: messages in from a queue, out to a list."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[Message] = []
        self.reads = 0  # receive() calls, the one waiting included

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        return await self.incoming.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)


async def reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body (stopping at a disconnect), then answers 200 with its size."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % size})


async def test_a_stalled_body_gets_408_and_a_complete_one_is_never_cut_off() -> None:
    timeout = BodyTimeout(reading_app, timeout_s=0.2)
    stalled = Exchange()
    stalled.incoming.put_nowait({"type": "http.request", "body": b"{", "more_body": True})
    await timeout({"type": "http"}, stalled.receive, stalled.send)
    assert stalled.status() == 408

    async def slow_after_reading(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(0.6)  # not a wait: the store is slow, three times the body timeout
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    done = Exchange()
    done.incoming.put_nowait({"type": "http.request", "body": b"{}", "more_body": False})
    await BodyTimeout(slow_after_reading, timeout_s=0.2)({"type": "http"}, done.receive,
                                                          done.send)
    assert done.status() == 200


async def test_a_body_late_between_reads_is_cut_off_at_the_next_read() -> None:
    async def slow_reader(scope: Any, receive: Any, send: Any) -> None:
        first = await receive()
        await asyncio.sleep(0.6)  # not a wait: busy with the first chunk past the deadline
        second = await receive()
        kinds = f"{first['type']} {second['type']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": kinds})

    exchange = Exchange()
    exchange.incoming.put_nowait({"type": "http.request", "body": b"{", "more_body": True})
    exchange.incoming.put_nowait({"type": "http.request", "body": b"}", "more_body": False})
    await BodyTimeout(slow_reader, timeout_s=0.2)({"type": "http"}, exchange.receive,
                                                 exchange.send)
    assert exchange.sent[-1]["body"] == b"http.request http.disconnect"


async def test_a_cancellation_from_elsewhere_is_not_taken_for_a_late_body() -> None:
    exchange = Exchange()
    exchange.incoming.put_nowait({"type": "http.request", "body": b"{", "more_body": True})
    running = asyncio.create_task(
        BodyTimeout(reading_app, timeout_s=30)({"type": "http"}, exchange.receive, exchange.send))
    await wait_until(lambda: exchange.reads == 2 and exchange.incoming.empty(), within=5,
                     what="the app to wait for the rest of the body")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert exchange.sent == []


def test_the_same_middleware_keeps_cutting_off_when_served_by_a_new_event_loop() -> None:
    timeout = BodyTimeout(reading_app, timeout_s=0.2)

    async def stalled_status(*, give_up_after: float) -> int | None:
        exchange = Exchange()
        exchange.incoming.put_nowait({"type": "http.request", "body": b"{", "more_body": True})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(give_up_after):
                await timeout({"type": "http"}, exchange.receive, exchange.send)
        return exchange.status()

    # the first loop ends while a body is awaited: its sweep is left behind on that loop
    assert asyncio.run(stalled_status(give_up_after=0.05)) is None
    assert asyncio.run(stalled_status(give_up_after=GIVE_UP_S)) == 408


# ---- the transport under uvicorn's protocol: a response's pieces go out in one send ------------


class CountingSocket(socket.socket):
    """A real socket that counts the send(2) calls made through it."""

    sends = 0

    def send(self, data: Any, *args: Any) -> int:
        self.sends += 1
        return super().send(data, *args)


async def test_the_writes_of_one_turn_leave_in_one_send_and_close_sends_what_is_held() -> None:
    from receiver.connections import _Coalescing

    ours, theirs = socket.socketpair()
    counting = CountingSocket(ours.family, ours.type, fileno=ours.detach())
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=counting)
    reader, writer = await asyncio.open_connection(sock=theirs)
    coalescing = _Coalescing(transport, loop)
    coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    coalescing.write(b"")
    coalescing.write(b"ok")
    assert counting.sends == 0  # held until the end of this turn of the loop
    await asyncio.sleep(0)  # not a wait: the one turn of the loop the writes are held for
    assert counting.sends == 1
    assert await reader.readexactly(40) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    coalescing.write(b"last words")
    coalescing.close()
    assert await reader.read() == b"last words"
    assert coalescing.is_closing()  # the rest is the transport's own
    writer.close()
    await writer.wait_closed()
