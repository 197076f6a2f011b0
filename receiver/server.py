"""The one place uvicorn is driven: serving an app for the CLI (in one process, or in several
on one port), and running one on loopback in the current event loop (tests, demo, benchmarks).

Several web processes (:func:`serve_processes`, ``sonic-receiver serve --workers N``): the
parent reserves the port and starts N children with Python's ``spawn``; each receives the
loaded :class:`Settings` (pickled: command-line options included, no environment to re-read)
and runs the app in its own uvicorn server. On Linux each child listens on a socket of its
own bound with ``SO_REUSEPORT``, once its app has started, and the kernel spreads new
connections over the children that listen (one shared socket let whichever process woke
first accept every connection of a burst: kept-alive connections then all stayed with one
process while the other idled). A child that dies takes only the connections still queued
on its socket (never answered), and is started again; SIGTERM/SIGINT stop them all
gracefully. Elsewhere the children accept from one socket the parent made. The protocol sets
``TCP_NODELAY`` on every accepted connection (:class:`NoDelay`), whoever made the listening
socket: one made without ``IPPROTO_TCP`` (uvicorn's ``--workers`` before 0.55, uvicorn issue
3149; an inherited descriptor) leaves Nagle's algorithm on in asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver import connections
from receiver.errors import ReceiverError, ServeError
from receiver.settings import Settings

log = structlog.get_logger("receiver.server")
GRACEFUL_S = 30  # in-flight requests get this long to finish on SIGTERM


def config(app: Any, *, host: str, port: int, settings: Settings | None = None,
           **options: Any) -> uvicorn.Config:
    """uvicorn settings shared by every entry point: logging is ours (structlog), not uvicorn's.
    With ``settings``, slow and abusive clients are cut off as :mod:`receiver.connections`
    says (header and keep-alive timeouts, connection cap). uvicorn's proxy headers are off:
    it would believe any loopback peer; the app believes the trusted proxies only
    (:mod:`receiver.proxies`)."""
    options.setdefault("access_log", False)
    options.setdefault("proxy_headers", False)
    options.setdefault("lifespan", "on")
    # One process per uvicorn server, always (several are serve_processes'): left unset,
    # uvicorn reads WEB_CONCURRENCY itself, which the settings have checked already.
    options.setdefault("workers", 1)
    if settings is not None:
        options.setdefault("http", protocol_class(settings))
        options.setdefault("timeout_keep_alive", settings.keepalive_timeout_s)
        # h11 refuses a head past its own limit (16 KiB by default) with a bare 400: past
        # ours, so that both implementations answer a large head alike (431).
        options.setdefault("h11_max_incomplete_event_size", 2 * connections.MAX_HEAD_BYTES)
    return uvicorn.Config(app, host=host, port=port, log_config=None, **options)


class NoDelay(asyncio.Protocol):
    """Mixed into the HTTP protocol: ``TCP_NODELAY`` on every accepted TCP connection.

    asyncio sets it only when the listening socket says ``IPPROTO_TCP`` as its protocol; a
    socket made with ``socket.socket()`` (uvicorn's ``--workers``, gunicorn, an inherited fd)
    says 0, and its connections keep Nagle's algorithm: a response written in two pieces
    (head, then body) waits for the client's delayed ACK, ~40 ms a request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def protocol_class(settings: Settings) -> type[asyncio.Protocol]:
    """The HTTP protocol every server of the receiver runs: :mod:`receiver.connections`'
    limits, with :class:`NoDelay`."""
    guarded = connections.protocol_class(
        header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections,
        implementation=settings.http_parser, max_body_bytes=settings.max_body_bytes)
    return type(guarded.__name__, (NoDelay, guarded), {})


class _EmbeddedServer(uvicorn.Server):
    """A server that leaves signals to whoever owns the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def settle_heap() -> None:
    """Once the app has started: collect, then freeze what is alive (modules, settings, the
    app) out of the cyclic garbage collector's sight, as CPython's ``gc.freeze``
    documentation advises for servers: otherwise every full collection walks them all again,
    a pause under load that made the worst of the latency tail."""
    gc.collect()
    gc.freeze()


class StartupGuard:
    """Wraps an app so that a :class:`ReceiverError` raised while its lifespan starts (a
    database that cannot be opened) is kept in :attr:`error` with its one-line message, instead
    of a traceback in the log; :func:`serve` raises it once uvicorn has stopped. Once the
    lifespan has started, the heap is settled (:func:`settle_heap`)."""

    def __init__(self, app: ASGIApp, *, on_started: Callable[[], None] | None = None) -> None:
        self.app = app
        self.error: ReceiverError | None = None
        self.on_started = on_started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched_send(message: Message) -> None:
            # Starlette sends startup.failed from inside its except block: the error is current.
            current = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(current, ReceiverError):
                self.error = current
                message = {**message, "message": current.message}
                await settle_failed_connections()
            elif message["type"] == "lifespan.startup.complete":
                settle_heap()
                if self.on_started is not None:
                    self.on_started()
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except ReceiverError as exc:
            if exc is not self.error:
                raise


async def settle_failed_connections() -> None:
    """Let aiosqlite's threads of connections that failed to open finish while the loop still
    runs. (aiosqlite 0.22 stops such a thread without waiting for it; when the loop closes
    first, as it does when start-up fails, the thread prints a traceback on its way out.)"""
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            await asyncio.to_thread(thread.join, 1.0)


@contextlib.asynccontextmanager
async def running(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                  settings: Settings | None = None,
                  sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on loopback inside the running loop; yields its base URL.

    ``port=0`` lets the OS pick a free port; ``sock``, a listening socket made elsewhere, is
    served instead of binding one. The server (and the app's lifespan) is shut down when the
    block exits. With ``settings``, its connection limits apply (see :func:`config`).
    """
    server = _EmbeddedServer(config(app, host=host, port=port, settings=settings))
    task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
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


def serve(app: Any, *, host: str, port: int, settings: Settings | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (the CLI's ``serve``). A :class:`ReceiverError` that
    stopped the app from starting is raised here, after uvicorn has stopped."""
    if settings is not None:
        soft, hard = connections.raise_open_files_limit()
        if soft < settings.max_connections + 64:
            log.warning("open_files_limit_low", soft=soft, hard=hard,
                        max_connections=settings.max_connections)
    guard = StartupGuard(app)
    try:
        uvicorn.Server(config(guard, host=host, port=port, settings=settings,
                              timeout_graceful_shutdown=GRACEFUL_S)).run()
    except SystemExit:  # uvicorn exits with status 3 when the lifespan fails to start
        if guard.error is not None:
            raise guard.error from None
        raise
    if guard.error is not None:
        raise guard.error


# -- several web processes on one port ----------------------------------------------------------

AppFactory = Callable[[Settings], ASGIApp]
STARTUP_FAILURE = 3  # a child's exit status when its app could not start (uvicorn's too)
RESTART_PAUSE_S = 1.0  # a child that dies this soon after starting is started again this late
RESTART_BACKOFF_MAX_S = 10.0  # the longest wait between two starts of a failing child


# Linux spreads connections over the listening sockets of one SO_REUSEPORT group; BSD and
# macOS accept the option but send every connection to one of them.
SPREAD_BY_KERNEL = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, backlog: int = 2048, reuse_port: bool = False,
         listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port``, listening unless not ``listen`` (asyncio's
    ``create_server`` then listens when it starts serving): made with ``IPPROTO_TCP`` so that
    asyncio, too, sets ``TCP_NODELAY`` on what it accepts; ``reuse_port``: one of the group
    of sockets on that port the kernel spreads connections over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


@dataclass
class _Slot:
    """One web process's place: its current child, and how its starts have gone."""

    child: multiprocessing.process.BaseProcess | None = None
    ready: Any = None  # a multiprocessing Event the child sets once its app has started
    started_at: float = 0.0
    restart_at: float | None = None  # when to start it again (None: it runs, or is starting)
    failures: int = 0  # failed starts in a row
    failing_since: float | None = None  # when the first of them failed


def serve_processes(settings: Settings, factory: AppFactory, *, host: str, port: int,
                    processes: int, configure: Callable[[Settings], None] | None = None) -> int:
    """Serve ``factory(settings)`` in ``processes`` child processes on one port (see the module
    docstring for how they share it), until SIGTERM/SIGINT; returns the exit status.

    A child that dies is started again. A child whose app cannot start (the database away)
    stops everything only at the first start, before any child has served
    (:data:`STARTUP_FAILURE`); after that it is started again with backoff while the others
    keep serving, and ``serve`` gives up (:data:`STARTUP_FAILURE`, with one line saying why)
    only when one keeps failing for longer than ``settings.web_restart_limit_s``.

    ``factory`` and ``configure`` (logging, run first in each child) must be importable
    functions: children are started with ``spawn`` and receive them and the settings pickled
    (and the shared socket, where the kernel does not spread connections). The parent builds
    the app once too, so that a bad route or an unknown handler stops start-up before anything
    is bound. Its own socket on the port (bound, never listening, so never handed a
    connection) holds the port for the children and says at once when it is taken.
    """
    factory(settings)
    sock = bind(host, port, reuse_port=SPREAD_BY_KERNEL, listen=not SPREAD_BY_KERNEL)
    shared = None if SPREAD_BY_KERNEL else sock
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}

    def start(slot: _Slot) -> None:
        slot.ready = context.Event()
        slot.child = context.Process(
            target=_child, name="sonic-receiver-web", daemon=False,
            args=(settings, factory, configure, shared, host, sock.getsockname()[1],
                  os.getpid(), slot.ready))
        slot.child.start()
        slot.started_at, slot.restart_at = time.monotonic(), None

    slots = [_Slot() for _ in range(processes)]
    served = False  # whether some child's app has started: the first start is behind us
    status = 0
    try:
        for slot in slots:
            start(slot)
        log.info("web_processes_started", processes=processes, host=host,
                 port=sock.getsockname()[1], pids=[s.child.pid for s in slots if s.child])
        while not stop.is_set():
            running = [s.child.sentinel for s in slots if s.child is not None]
            due = [s.restart_at for s in slots if s.restart_at is not None]
            wait_s = min([0.5, *(max(0.0, at - time.monotonic()) for at in due)])
            multiprocessing.connection.wait(running, timeout=wait_s)
            for slot in slots:
                if stop.is_set():
                    break
                if slot.ready is not None and slot.ready.is_set():
                    served = True
                    slot.failures, slot.failing_since = 0, None
                if slot.child is None:
                    if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                        start(slot)
                        log.info("web_process_restarted", pid=slot.child.pid if slot.child
                                 else None)
                    continue
                if slot.child.exitcode is None:
                    continue
                status = _ended(slot, served=served, limit_s=settings.web_restart_limit_s)
                if status:
                    stop.set()
    finally:
        _stop_all([s.child for s in slots if s.child is not None])
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("web_processes_stopped", status=status)
    return status


def _ended(slot: _Slot, *, served: bool, limit_s: float) -> int:
    """A slot's child has exited: when to start it again, or (a status) why to stop all."""
    child = slot.child
    assert child is not None
    child.join()
    slot.child = None
    now = time.monotonic()
    if child.exitcode != STARTUP_FAILURE:
        log.warning("web_process_died", pid=child.pid, exitcode=child.exitcode)
        slot.restart_at = max(now, slot.started_at + RESTART_PAUSE_S)
        return 0
    if not served:  # the first start: a setting or a database that is not there at all
        log.error("web_process_failed_to_start", pid=child.pid)
        return STARTUP_FAILURE
    slot.failures += 1
    slot.failing_since = slot.failing_since or now
    if now - slot.failing_since > limit_s:
        reason = (f"a web process failed to start again for {now - slot.failing_since:.0f} s "
                  f"(RECEIVER_WEB_RESTART_LIMIT_S={limit_s:g}): stopping")
        log.error("web_process_keeps_failing", pid=child.pid, failures=slot.failures,
                  limit_s=limit_s)
        print(f"sonic-receiver: error: {reason}", file=sys.stderr, flush=True)
        return STARTUP_FAILURE
    delay = min(RESTART_BACKOFF_MAX_S, RESTART_PAUSE_S * 2 ** (slot.failures - 1))
    delay *= random.uniform(0.8, 1.2)
    slot.restart_at = now + delay
    log.warning("web_process_failed_to_start_again", pid=child.pid, failures=slot.failures,
                retry_in_s=round(delay, 2))
    return 0


def _stop_all(children: list[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM every child still running, wait for the graceful shutdown, then kill."""
    for child in children:
        if child.exitcode is None and child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACEFUL_S + 5
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.exitcode is None:
            log.warning("web_process_killed", pid=child.pid)
            child.kill()
            child.join()


def _child(settings: Settings, factory: AppFactory, configure: Callable[[Settings], None] | None,
           shared: socket.socket | None, host: str, port: int, parent: int, ready: Any) -> None:
    """One web process: the app on the ``shared`` socket, or else on a socket of its own in
    the port's ``SO_REUSEPORT`` group, which listens once the app has started (until then,
    connections go to the siblings); until SIGTERM/SIGINT or until the parent is gone (a
    parent killed with SIGKILL leaves no one to stop us). ``ready`` is set once the app has
    started."""
    if configure is not None:
        configure(settings)
    sock = shared if shared is not None else bind(host, port, reuse_port=True, listen=False)
    guard = StartupGuard(factory(settings), on_started=ready.set)
    server = uvicorn.Server(config(guard, host=host, port=port,
                                   settings=settings, timeout_graceful_shutdown=GRACEFUL_S))

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("web_parent_gone", parent=parent)
        server.should_exit = True

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        if guard.error is None:
            raise
        print(f"sonic-receiver: error: {guard.error.message}", file=sys.stderr, flush=True)
        raise SystemExit(STARTUP_FAILURE) from exc
    if guard.error is not None:
        print(f"sonic-receiver: error: {guard.error.message}", file=sys.stderr, flush=True)
        raise SystemExit(STARTUP_FAILURE)
