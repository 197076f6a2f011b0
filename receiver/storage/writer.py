"""One writer for several processes on one SQLite file (``serve --workers N``).

SQLite lets one connection write at a time. When each web process ran its own group commit,
their batches queued for the file's write lock instead of sharing one transaction, and each
process's page cache was dropped whenever another had written (a connection re-reads after a
change it did not make): two processes were slower than one. Here one process, the writer,
holds the one busy write connection; web processes send it their operations
(:class:`receiver.storage.connector.Operation`) over a Unix socket, and it runs them in its
group commit together with everyone else's, answering each once its batch has committed.

- The wire: frames of a 4-byte length and a kind. A request frame is a batch of ``(id,
  operation, keep, locks)``, an answer frame a list of ``(id, status, result or error, jobs
  written)``, in msgpack (msgspec: several times cheaper than pickle for a delivery; an
  operation or a result it cannot encode is pickled, and so are errors). An operation is
  named by its class; a result is decoded as the type its ``__call__`` returns. A router
  (what recording plans jobs with) is sent once per connection, pickled, and named by a
  digest of its routes afterwards.
- A web process (:class:`SharedWriterConnector`) runs what is not an operation itself, on a
  connection of its own to the file (rare writes: the console's, handlers' outputs), reads on
  its own reader, and never checkpoints: the writer does.
- Pickles are read from the socket, which only the serving account can reach: it lies in a
  folder of its own that only that account may enter (``serve`` makes it, mode 0700), and
  that account can write the database file anyway.
- Every answer comes after the commit: a web process answers a delivery 2xx only then. A
  writer that dies takes the answers it owed with it: those units fail (503; the sender
  retries, and a delivery that had committed is then found as a duplicate). The next write
  connects again: the listening socket stays with the parent, so a connection made while a
  new writer starts waits for it in the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
import os
import pickle
import signal
import struct
import threading
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
import structlog

from receiver.errors import StoreError
from receiver.routing import Router
from receiver.settings import Settings
from receiver.storage.connector import Operation, Unit, Work
from receiver.storage.database import MAX_BATCH, Database
from receiver.storage.sqlite import SQLiteConnector

log = structlog.get_logger("receiver.storage.writer")

T = TypeVar("T")
_LENGTH = struct.Struct("!I")
ROUTERS, UNITS, ANSWERS = b"R", b"U", b"A"  # a frame's kind, its first byte
PICKLED = ""  # the tag of a unit whose operation msgspec could not encode
OK, OK_PICKLED, FAILED = 0, 1, 2  # an answer's status
ANSWER_MARGIN_S = 10.0  # past the lock timeout, how long an answer may take before giving up

_units = msgspec.msgpack.Decoder(list[tuple[int, str, bool, tuple[str, ...], msgspec.Raw]])
_answers = msgspec.msgpack.Decoder(list[tuple[int, int, msgspec.Raw, bool]])
_plain = msgspec.msgpack.Encoder()
_blob = msgspec.msgpack.Decoder(bytes)

# Routers known to this process's writer, by digest (the same for every web process's copy).
_known_routers: dict[str, Router] = {}


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload) + 1) + kind + payload


class _Frames:
    """Splits a byte stream into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        start = 0
        while len(self._buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer, start)
            end = start + _LENGTH.size + size
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[start + _LENGTH.size:end]))
            start = end
        del self._buffer[:start]
        return frames


def _tag(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


@functools.cache
def _operation(tag: str) -> tuple[type[Operation], msgspec.msgpack.Decoder[Any]]:
    """The operation class a tag names, and its decoder (the writer's side)."""
    module, _, name = tag.partition(":")
    cls = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, Operation)):
        raise StoreError(f"the writer was sent {tag}, which is no operation")
    return cls, msgspec.msgpack.Decoder(cls, dec_hook=_decode_router)


def _decode_router(kind: type, digest: Any) -> Any:
    if kind is Router:
        try:
            return _known_routers[digest]
        except KeyError:
            raise StoreError(f"the writer was sent an unknown router {digest!s:.12}") from None
    raise NotImplementedError(f"cannot decode {kind}")


_result_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def _result_decoder(cls: type) -> msgspec.msgpack.Decoder[Any]:
    """What an operation's ``__call__`` returns, decoded as that type (the web side)."""
    decoder = _result_decoders.get(cls)
    if decoder is None:
        hints = typing.get_type_hints(cls.__call__)
        decoder = _result_decoders[cls] = msgspec.msgpack.Decoder(hints.get("return", Any))
    return decoder


def _encode_value(value: Any) -> tuple[int, bytes]:
    """A result as msgpack, else (an integer past 64 bits...) pickled."""
    try:
        return OK, _plain.encode(value)
    except (TypeError, OverflowError, msgspec.EncodeError):
        return OK_PICKLED, _plain.encode(pickle.dumps(value, protocol=5))


# -- the web process's side ------------------------------------------------------------------


class _Routers:
    """Routers as their digests on the wire, and those the writer must be told of first."""

    def __init__(self) -> None:
        self._digests: dict[int, tuple[Router, str]] = {}  # the router is kept: ids stay put
        self.told: set[str] = set()
        self.new: dict[str, tuple[Any, Any]] = {}

    def encode(self, value: Any) -> Any:
        """msgspec's hook: a router as its digest."""
        if not isinstance(value, Router):
            raise NotImplementedError(f"cannot encode {type(value).__name__}")
        known = self._digests.get(id(value))
        if known is None:
            definition = (value.routes, value.policy)
            digest = hashlib.sha256(pickle.dumps(definition, protocol=5)).hexdigest()
            self._digests[id(value)] = known = (value, digest)
        digest = known[1]
        if digest not in self.told:
            self.new[digest] = (value.routes, value.policy)
        return digest


class _Client(asyncio.Protocol):
    """One connection to the writer: requests out, answers matched to their units."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._frames = _Frames()
        self._next = 0
        # a unit's future is True once the writer answered it, False when it never will
        self._waiting: dict[int, tuple[Unit, asyncio.Future[bool]]] = {}
        self._routers = _Routers()
        self._encoder = msgspec.msgpack.Encoder(enc_hook=self._routers.encode)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, units: Sequence[Unit]) -> list[asyncio.Future[bool]]:
        """Send ``units`` in one frame; a future for each: True once the writer answered it
        (its result or error set on the unit), False when it never will."""
        if self.transport is None or self.transport.is_closing():
            raise StoreError("the writer went away")
        loop = asyncio.get_running_loop()
        requests, futures = [], []
        for unit in units:
            self._next += 1
            future: asyncio.Future[bool] = loop.create_future()
            self._waiting[self._next] = (unit, future)
            try:
                tag, op = _tag(type(unit.work)), self._encoder.encode(unit.work)
            except (TypeError, OverflowError, msgspec.EncodeError):
                tag, op = PICKLED, _plain.encode(pickle.dumps(unit.work, protocol=5))
            requests.append((self._next, tag, unit.keep, unit.locks, msgspec.Raw(op)))
            futures.append(future)
        payload = _plain.encode(requests)
        if self._routers.new:  # told before the units that name them
            new, self._routers.new = self._routers.new, {}
            self.transport.write(_frame(ROUTERS, pickle.dumps(new, protocol=5)))
            self._routers.told.update(new)
        self.transport.write(_frame(UNITS, payload))
        return futures

    def data_received(self, data: bytes) -> None:
        for frame in self._frames.feed(data):
            for rid, status, value, jobs in _answers.decode(memoryview(frame)[1:]):
                unit, future = self._waiting.pop(rid, (None, None))
                if unit is None or future is None:
                    continue  # its sender gave up on it
                try:
                    if status == OK:
                        unit.result = _result_decoder(type(unit.work)).decode(value)
                    else:
                        loaded = pickle.loads(_blob.decode(value))  # noqa: S301 (the module)
                        if status == FAILED:
                            unit.error = loaded
                        else:
                            unit.result = loaded
                except (msgspec.DecodeError, pickle.UnpicklingError, ValueError) as exc:
                    unit.error = StoreError(f"unreadable answer from the writer: {exc}")
                unit.wrote_jobs = jobs
                if not future.done():
                    future.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail("the writer went away" + (f": {exc}" if exc else ""))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, why: str) -> None:
        """Fail every unit still waiting for its answer."""
        waiting, self._waiting = self._waiting, {}
        for unit, future in waiting.values():
            unit.error = StoreError(why)
            if not future.done():
                future.set_result(False)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SharedWriterConnector:
    """A web process's connector when a writer process writes for all (see the module):
    operations go to the writer at ``address``, everything else to ``local``, the file's own
    connector in this process (opened without checkpoints)."""

    pipelined = True  # the writer queues what every process sends it

    def __init__(self, local: SQLiteConnector, address: str, *,
                 answer_timeout_s: float | None = None) -> None:
        self.local = local
        self.address = address
        self.dialect = local.dialect
        # the writer waits up to the lock timeout for the file, then answers
        self.answer_timeout_s = answer_timeout_s or local.lock_timeout_s + ANSWER_MARGIN_S
        self._client: _Client | None = None
        self._connecting = asyncio.Lock()
        self._local_lock = asyncio.Lock()  # the local connector writes one batch at a time

    def describe(self) -> str:
        return self.local.describe()

    async def open(self) -> None:
        await self.local.open()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(client.closed), 5)
        await self.local.close()

    async def _connected(self) -> _Client:
        async with self._connecting:
            client = self._client
            if client is not None and client.transport is not None \
                    and not client.transport.is_closing():
                return client
            try:
                _, client = await asyncio.get_running_loop().create_unix_connection(
                    _Client, self.address)
            except OSError as exc:
                raise StoreError(f"cannot reach the writer at {self.address}: {exc}") from exc
            self._client = client
            return client

    async def write(self, units: Sequence[Unit]) -> None:
        """Operations to the writer, the rest here. A part that fails as a whole fails its
        units alone; only when nothing was written at all is it raised for the batch."""
        remote = [u for u in units if isinstance(u.work, Operation)]
        here = [u for u in units if not isinstance(u.work, Operation)]
        parts = [(part, run) for part, run in ((remote, self._remote), (here, self._here))
                 if part]
        failures = await asyncio.gather(*(_whole(run, part) for part, run in parts))
        failed = [f for f in failures if f is not None]
        if failed and len(failed) == len(parts):
            raise failed[0]
        for (part, _), failure in zip(parts, failures, strict=True):
            if failure is not None:
                for unit in part:
                    unit.error = failure

    async def _here(self, units: Sequence[Unit]) -> None:
        async with self._local_lock:
            await self.local.write(units)

    async def _remote(self, units: Sequence[Unit]) -> None:
        client = await self._connected()
        futures = client.send(units)
        _, late = await asyncio.wait(futures, timeout=self.answer_timeout_s)
        if late:  # a writer that does not answer: give up on this connection, and what it owes
            client.fail(f"no answer from the writer in {self.answer_timeout_s:g} s")
            client.close()
        answered = [f.result() for f in futures]
        if not any(answered):  # the writer went away before it answered any of them
            error = units[0].error
            raise error if isinstance(error, StoreError) else StoreError("the writer went away")

    async def read(self, work: Work[T]) -> T:
        return await self.local.read(work)

    async def wait_for_jobs(self, wait_s: float) -> None:
        await self.local.wait_for_jobs(wait_s)

    async def check_space(self) -> None:
        await self.local.check_space()


async def _whole(run: Callable[[Sequence[Unit]], Any], part: Sequence[Unit]
                 ) -> BaseException | None:
    """Run one part of a batch; the error that failed it as a whole, if any."""
    try:
        await run(part)
    except StoreError as exc:
        return exc
    return None


# -- the writer's side -----------------------------------------------------------------------


class _Server(asyncio.Protocol):
    """One web process's connection to the writer."""

    def __init__(self, db: Database, peers: set[_Server]) -> None:
        self.db = db
        self.peers = peers
        self.transport: asyncio.Transport | None = None
        self._frames = _Frames()
        self._answers: list[tuple[int, int, msgspec.Raw, bool]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peers.discard(self)

    def data_received(self, data: bytes) -> None:
        for frame in self._frames.feed(data):
            try:
                self._received(frame)
            except Exception as exc:  # a frame this writer cannot read: drop the peer
                log.error("writer_frame_unreadable", error=f"{type(exc).__name__}: {exc}")
                if self.transport is not None:
                    self.transport.close()
                return

    def _received(self, frame: bytes) -> None:
        kind, payload = frame[:1], memoryview(frame)[1:]
        if kind == ROUTERS:
            routers = pickle.loads(payload)  # noqa: S301 (see the module)
            for digest, (routes, policy) in routers.items():
                _known_routers.setdefault(digest, Router(routes, policy=policy))
            return
        for rid, tag, keep, locks, op in _units.decode(payload):
            if tag == PICKLED:
                work = pickle.loads(_blob.decode(op))  # noqa: S301 (see the module)
            else:
                work = _operation(tag)[1].decode(op)
            unit = Unit(work=work, keep=keep, locks=locks)
            self.db.submit_unit(unit).add_done_callback(
                functools.partial(self._answer, rid, unit))

    def _answer(self, rid: int, unit: Unit, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            status, value = FAILED, _failure(StoreError("cancelled"))
        elif (error := future.exception()) is not None:
            if not isinstance(error, StoreError):  # a bug: its traceback stays here
                log.error("writer_unit_failed", error_type=type(error).__name__,
                          exc_info=error)
            status, value = FAILED, _failure(error)
        else:
            status, value = _encode_value(future.result())
        if not self._answers:
            asyncio.get_running_loop().call_soon(self._send)
        self._answers.append((rid, status, msgspec.Raw(value), unit.wrote_jobs))

    def _send(self) -> None:
        answers, self._answers = self._answers, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(ANSWERS, _plain.encode(answers)))


def _failure(error: BaseException) -> bytes:
    """An error as the web process will raise it (pickled; one that will not pickle becomes
    a :class:`StoreError` saying what it was)."""
    try:
        return _plain.encode(pickle.dumps(error, protocol=5))
    except Exception:
        return _plain.encode(pickle.dumps(
            StoreError(f"{type(error).__name__}: {error}"), protocol=5))


async def serve_writer(db: Database, sock: Any, stop: asyncio.Event) -> None:
    """Write for every process that connects to the listening Unix socket ``sock``, through
    ``db`` (open), until ``stop`` is set."""
    peers: set[_Server] = set()
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: _Server(db, peers), sock=sock)
    log.info("writer_started", db=db.describe())
    try:
        await stop.wait()
    finally:
        server.close()
        for peer in tuple(peers):
            if peer.transport is not None:
                peer.transport.close()
        await server.wait_closed()
    log.info("writer_stopped")


async def run(settings: Settings, sock: Any, *, parent: int | None = None,
              on_ready: Callable[[], None] | None = None) -> None:
    """The writer process's life: open the SQLite file the settings name (migrating it),
    call ``on_ready``, write for whoever connects to ``sock`` until SIGTERM or until process
    ``parent`` is gone (a parent killed with SIGKILL leaves no one to stop the writer)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def watch_parent() -> None:
        while os.getppid() == parent and not stop.is_set():
            time.sleep(1.0)
        loop.call_soon_threadsafe(stop.set)

    if parent is not None:
        threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    connector = SQLiteConnector(settings.db_path, synchronous=settings.db_synchronous,
                                lock_timeout_s=settings.db_lock_timeout_s, inline_max=MAX_BATCH)
    async with Database(connector) as db:
        if on_ready is not None:
            on_ready()
        await serve_writer(db, sock, stop)
