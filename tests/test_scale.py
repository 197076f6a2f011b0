"""Several processes on one database: ``serve --workers N`` web processes and separate
``worker`` processes, on PostgreSQL and on one SQLite file, killed with SIGKILL at random and
restarted under retrying senders; and no delayed-ACK stall in whatever serves several
processes (``TCP_NODELAY`` on every accepted connection, read back from the server's socket)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from receiver.server import SPREAD_BY_KERNEL, running
from tests.load import Senders, Stored, check_effects, deliveries, effect_config, until_jobs_done
from tests.processes import done_twice, serve, start_worker, wait_children, wait_logged
from tests.support import callback, clip, free_port, settings_for, signed_headers
from tests.waiting import wait_until_blocking

pytestmark = pytest.mark.slow

SYS_PIDFD_GETFD = 438  # the same number on every architecture (new syscalls are unified)


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's end of the TCP connection ``client_port`` → ``server_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if (int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port and inode):
                return inode
    return None


def _listening(port: int) -> int:
    """How many sockets listen on ``port`` (state 0A in /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                count += int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A"
    return count


def _fd_of(pid: int, inode: int) -> int | None:
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(link) == f"socket:[{inode}]":
                return int(link.name)
        except OSError:
            continue
    return None


def server_nodelay(pids: list[int], server_port: int, client_port: int) -> tuple[int, int]:
    """``(pid, TCP_NODELAY)`` of the server's end of the connection from ``client_port``,
    in whichever of ``pids`` holds it: its socket is duplicated into this process
    (``pidfd_getfd``, or ``dup`` for our own) and asked."""
    inode = _socket_inode(server_port, client_port)
    assert inode is not None, "the connection is not in /proc/net/tcp"
    for pid in pids:
        fd = _fd_of(pid, inode)
        if fd is None:
            continue
        if pid == os.getpid():
            copy = os.dup(fd)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            pidfd = os.pidfd_open(pid)
            try:
                copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            finally:
                os.close(pidfd)
            if copy < 0:
                code = ctypes.get_errno()
                if code in (errno.EPERM, errno.ENOSYS):
                    pytest.skip(f"pidfd_getfd not allowed here: {os.strerror(code)}")
                raise OSError(code, os.strerror(code))
        with socket.socket(fileno=copy) as sock:
            return pid, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    raise AssertionError(f"no process of {pids} holds the connection from port {client_port}")


def _request(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One request on a kept-alive connection; the whole answer (a small JSON body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


@pytest.mark.anyio
async def test_a_connection_accepted_from_a_socket_made_elsewhere_has_tcp_nodelay(
    tmp_path: Path,
) -> None:
    """uvicorn --workers and gunicorn hand the server a socket made with socket.socket()
    (protocol 0), for which asyncio leaves Nagle on: the receiver's protocol turns it off."""
    from receiver.app import create_app

    listener = socket.socket()  # as uvicorn's Config.bind_socket makes it: proto 0
    listener.bind(("127.0.0.1", 0))
    assert listener.proto == 0
    settings = settings_for(tmp_path)
    async with running(create_app(settings), settings=settings, sock=listener) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            answers = [await asyncio.to_thread(_request, client) for _ in range(3)]
            assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
            _, nodelay = server_nodelay([os.getpid()], port, client.getsockname()[1])
    assert nodelay != 0


def test_every_web_process_of_serve_workers_sets_tcp_nodelay(tmp_path: Path) -> None:
    """Kept-alive connections to `serve --workers 2`, whichever process accepted them, have
    TCP_NODELAY (else each answer waits ~40 ms for the client's delayed ACK)."""
    port = free_port()
    with serve(tmp_path / "r.db", port, tmp_path / "log", args=["--workers", "2"]) as web:
        pids = wait_children(web.pid, 2)
        seen: dict[int, int] = {}
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        try:
            for client in clients:
                assert _request(client).startswith(b"HTTP/1.1 200 ")
                assert _request(client).startswith(b"HTTP/1.1 200 ")  # kept alive
                _, nodelay = server_nodelay(pids, port, client.getsockname()[1])
                seen[client.getsockname()[1]] = nodelay
        finally:
            for client in clients:
                client.close()
    assert len(seen) == 8
    assert set(seen.values()) == {1}


@pytest.mark.skipif(not SPREAD_BY_KERNEL, reason="only Linux spreads SO_REUSEPORT connections")
def test_serve_workers_spreads_a_burst_of_kept_alive_connections_over_its_web_processes(
    tmp_path: Path,
) -> None:
    """32 connections opened at once and kept alive (a proxy's pool, a load generator) are
    served by both web processes. From one shared listening socket, whichever process woke
    first accepted the whole burst, and the other stayed idle for as long as they lived."""
    port = free_port()
    with serve(tmp_path / "r.db", port, tmp_path / "log", args=["--workers", "2"]) as web:
        pids = wait_children(web.pid, 2)
        wait_until_blocking(lambda: _listening(port) == 2, within=60,
                            what="both web processes listening", detail=lambda: str(
                                _listening(port)))
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        owners: Counter[int] = Counter()
        try:
            for client in clients:
                assert _request(client).startswith(b"HTTP/1.1 200 ")
                pid, _ = server_nodelay(pids, port, client.getsockname()[1])
                owners[pid] += 1
        finally:
            for client in clients:
                client.close()
    # the kernel hashes each connection to one of the two: fewer than 4 of 32 on one side
    # happens about once in 400,000 runs
    assert sorted(owners) == sorted(pids), owners
    assert min(owners.values()) >= 4, owners


# -- several web and worker processes, killed at random ----------------------------------------


def _chaos(db: Path | str, tmp_path: Path, *, workers: int, senders: int, tasks_each: int,
           kills: int, seed: int) -> None:
    """``serve --workers 2`` (RECEIVER_WORKER=off) and ``workers`` worker processes on ``db``
    under retrying senders with duplicates and reordering; ``kills`` times, once a further
    share of the deliveries is acknowledged, one web or worker process picked at random is
    killed with SIGKILL (the web ones are started again by serve, the workers by us). Then
    every acknowledged delivery is stored, every task and clip succeeded, and every task's
    job ran once to done, its effect written once."""
    rng = random.Random(seed)
    effects = tmp_path / "effects"
    config = effect_config(tmp_path / "receiver.toml", effects, lease_s=2, hold_s=0.2)
    port = free_port()
    logs = [tmp_path / "web.log"]
    pool: list[subprocess.Popen[bytes]] = []

    log_of: dict[int, Path] = {}

    def new_worker() -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"worker-{len(logs)}.log")
        proc = start_worker(db, logs[-1], config)
        log_of[proc.pid] = logs[-1]
        return proc

    load = Senders(f"http://127.0.0.1:{port}/webhooks/sonic", senders, tasks_each,
                   shuffle=True, duplicates=0.3, overlap=0.6, seed=seed, pace_s=0.03)
    killed: list[str] = []

    async def drive(web: subprocess.Popen[bytes]) -> Stored:
        traffic = asyncio.create_task(load.run())
        for k in range(1, kills + 1):
            await load.until_acked(load.expected * k // (kills + 1))
            if rng.random() < 0.5:
                victim = rng.choice(await asyncio.to_thread(wait_children, web.pid, 2))
                os.kill(victim, signal.SIGKILL)
                killed.append(f"web {victim}")
            else:
                index = rng.randrange(len(pool))
                pool[index].kill()
                await asyncio.to_thread(pool[index].wait)
                killed.append(f"worker {pool[index].pid}")
                pool[index] = new_worker()
        await traffic
        return await until_jobs_done(db, len(load.tasks), timeout_s=60)

    with serve(db, port, logs[0], config=config, args=["--workers", "2"],
               extra_env={"RECEIVER_WORKER": "off"}) as web:
        started = wait_children(web.pid, 2)
        pool.extend(new_worker() for _ in range(workers))
        try:
            final = asyncio.run(drive(web))
            now = wait_children(web.pid, 2)
            for proc in pool:  # a worker killed during its start-up has no SIGTERM handler yet
                wait_logged(log_of[proc.pid], "worker_started", proc)
        finally:
            for proc in pool:
                proc.terminate()
            codes = [proc.wait(timeout=60) for proc in pool]

    context = f"killed: {killed}; logs in {tmp_path}"
    assert len(killed) == kills
    assert codes == [0] * workers, context  # the live workers stopped cleanly
    assert len(now) == 2, context
    if any(k.startswith("web") for k in killed):
        assert now != started, context  # the killed web processes were replaced
    every = {d for task in load.tasks for d, _ in deliveries(task)}
    assert every <= load.acked, f"not acknowledged in time: {sorted(every - load.acked)[:5]}"
    assert load.acked <= final.deliveries, sorted(load.acked - final.deliveries)[:5]
    assert final.tasks == dict.fromkeys(load.tasks, "succeeded"), context
    assert set(final.clips.values()) == {"succeeded"}
    assert len(final.clips) == 2 * len(load.tasks)
    assert sorted(task for task, *_ in final.jobs) == sorted(load.tasks), context
    assert {state for *_, state in final.jobs} == {"done"}, context
    assert done_twice(logs) == [], context
    check_effects(effects, load.tasks)


@pytest.mark.postgres
def test_two_web_and_two_worker_processes_on_postgresql_killed_at_random(
    pg_dsn: str, tmp_path: Path,
) -> None:
    _chaos(pg_dsn, tmp_path, workers=2, senders=6, tasks_each=8, kills=4, seed=9)


def test_two_web_and_one_worker_process_on_one_sqlite_file_killed_at_random(
    tmp_path: Path,
) -> None:
    _chaos(tmp_path / "r.db", tmp_path, workers=1, senders=4, tasks_each=5, kills=2, seed=12)


def test_a_metrics_scrape_of_serve_workers_sums_every_web_process(tmp_path: Path) -> None:
    """`serve --workers 2` gives its processes one folder for prometheus_client's multiprocess
    mode: whichever process answers /metrics counts the deliveries every process answered."""
    port = free_port()
    with serve(tmp_path / "r.db", port, tmp_path / "log", args=["--workers", "2"],
               extra_env={"RECEIVER_INSECURE_OPEN_ADMIN": "1"}):
        for n in range(30):  # a connection each: the two processes take turns accepting
            body = callback(f"m-{n}", [clip(f"m-{n}-a", "succeeded")])
            answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/sonic", content=body,
                                headers=signed_headers(body, delivery_id=f"m-{n}"))
            assert answer.status_code == 200
        counts = set()
        for _ in range(6):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            found = re.search(
                r'^receiver_ingest_seconds_count\{outcome="recorded",provider="sonic"\} (\S+)$',
                text, re.M)
            assert found, text[:2000]
            counts.add(float(found.group(1)))
    assert counts == {30.0}


def _start_up_error(tmp_path: Path, *args: str, config: str = "routes = []\n") -> str:
    """Run `serve --workers 2 ARGS` that must not start; its one line of stderr."""
    (tmp_path / "bad.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "SONIC_"))}
    env |= {"SONIC_WEBHOOK_SECRET": "s3cret-1", "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_CONFIG": str(tmp_path / "bad.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--port", str(free_port()), "--workers", "2",
         *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "web_processes_started" not in done.stderr  # stopped before any child started
    return done.stderr.strip().splitlines()[-1]


def test_serve_workers_with_a_database_that_cannot_be_reached_stops_with_one_line(
    tmp_path: Path,
) -> None:
    line = _start_up_error(tmp_path, "--db", f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    assert line.startswith("sonic-receiver: error: cannot open database postgresql://127.0.0.1:")


def test_serve_workers_with_an_unknown_handler_stops_with_one_line(tmp_path: Path) -> None:
    line = _start_up_error(tmp_path, "--db", str(tmp_path / "r.db"), config=(
        '[[routes]]\non = ["task.succeeded"]\nhandlers = ["no_such_handler"]\n'))
    assert line.startswith("sonic-receiver: error: ")
    assert "no_such_handler" in line


def test_serve_workers_on_a_port_in_use_stops_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _start_up_error(tmp_path, "--db", str(tmp_path / "r.db"), "--port", str(port))
    assert line.startswith(f"sonic-receiver: error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_worker_in_its_own_process_hears_jobs_written_just_after_it_first_looked(
    pg_dsn: str, tmp_path: Path,
) -> None:
    """The worker listens (LISTEN) before it first looks for jobs: a job committed by a web
    process after that look and before the worker's first wait still wakes it, not its next
    poll (an hour here). The commit is made to land in that gap by the store itself."""
    from receiver.clock import SystemClock
    from receiver.context import Event, HandlerContext
    from receiver.registry import Registry
    from receiver.routing import HandlerRef, Route, Router
    from receiver.runtime import open_runtime
    from receiver.storage.postgres import PostgresConnector
    from receiver.storage.queue import JobQueue
    from receiver.storage.roles import Storage
    from tests.support import delivery

    router = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                           handlers=(HandlerRef(name="h"),))])
    ran = asyncio.Event()

    async def handler(event: Event, ctx: HandlerContext) -> None:
        ran.set()

    registry = Registry()
    registry.register("h", handler, origin="test")
    body = callback("gap", [clip("gap-a", "succeeded")])

    async with Storage.over(PostgresConnector(pg_dsn)) as web:

        class CommitInTheGap(JobQueue):
            first = True

            async def next_due(self) -> float | None:
                due = await super().next_due()
                if self.first:  # a web process commits a job just after the worker looked
                    self.first = False
                    await web.ingest.record_delivery(delivery("gap-1", body), router=router)
                return due

        storage = Storage.over(PostgresConnector(pg_dsn))
        storage = dataclasses.replace(storage, jobs=CommitInTheGap(storage.db))
        async with storage, open_runtime(
            settings_for(tmp_path), clock=SystemClock(), router=router, registry=registry,
            storage=storage,
        ) as runtime:
            worker = runtime.make_worker(poll_s=3600.0, listen=True)
            running_worker = asyncio.create_task(worker.run())
            try:
                await asyncio.wait_for(ran.wait(), timeout=30)
            finally:
                await worker.stop(deadline_s=5)
                await running_worker


def test_web_processes_that_cannot_start_stop_serve_instead_of_restarting(
    tmp_path: Path,
) -> None:
    """A web process whose app fails to start (past the parent's own checks) says why in one
    line; serve stops the others and exits 3 rather than starting it again and again."""
    script = (
        "import os, sys\n"
        "from receiver.server import serve_processes\n"
        "from tests.support import settings_for\n"
        "from tests.plugins import app_that_cannot_start\n"
        "from pathlib import Path\n"
        "os.environ['PLANTED_START_FAILURE'] = 'child'\n"  # the children inherit it
        f"sys.exit(serve_processes(settings_for(Path({str(tmp_path)!r})), app_that_cannot_start,"
        f" host='127.0.0.1', port={free_port()}, processes=2))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 3, done.stderr[-3000:]
    planted = [line for line in done.stderr.splitlines()
               if line == "sonic-receiver: error: planted: the database went away"]
    assert 1 <= len(planted) <= 2, done.stderr[-3000:]  # once per child at most: no restarts


def _serve_marked(tmp_path: Path, port: int, marker: Path,
                  limit_s: float = 300.0) -> subprocess.Popen[str]:
    """``serve_processes`` of two web processes of :func:`app_that_fails_while_marked`."""
    script = (
        "import dataclasses, sys\n"
        "from pathlib import Path\n"
        "from receiver.server import serve_processes\n"
        "from tests.plugins import app_that_fails_while_marked\n"
        "from tests.support import settings_for\n"
        f"settings = dataclasses.replace(settings_for(Path({str(tmp_path)!r})),"
        f" web_restart_limit_s={limit_s})\n"
        "sys.exit(serve_processes(settings, app_that_fails_while_marked,"
        f" host='127.0.0.1', port={port}, processes=2))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
                        "PLANTED_FAILURE_FILE": str(marker), "RECEIVER_LOG_FORMAT": "json"})


def _pids_answering(port: int, tries: int = 40) -> set[int]:
    """The web processes that answer ``/pid``, over ``tries`` new connections."""
    found = set()
    for _ in range(tries):
        try:
            found.add(int(httpx.get(f"http://127.0.0.1:{port}/pid", timeout=2).text))
        except httpx.HTTPError:
            continue
    return found


def test_a_web_process_that_cannot_start_again_is_retried_while_its_sibling_serves(
    tmp_path: Path,
) -> None:
    """After the first start, a web process that dies while the database is away cannot
    start again: serve keeps the other one serving and starts it again, with backoff, until
    the database is back; then both serve."""
    port, marker = free_port(), tmp_path / "database-away"
    proc = _serve_marked(tmp_path, port, marker)
    try:
        first = wait_children(proc.pid, 2)
        wait_until_blocking(lambda: _pids_answering(port) == set(first), within=60,
                            what="both web processes to answer")
        marker.touch()  # the database goes away
        os.kill(first[0], signal.SIGKILL)
        wait_until_blocking(lambda: _pids_answering(port, tries=5) == {first[1]}, within=30,
                            what="the sibling alone to answer")
        still = _pids_answering(port, tries=20)
        assert proc.poll() is None  # serve did not give up on its healthy sibling
        assert still == {first[1]}
        marker.unlink()  # the database is back
        wait_until_blocking(lambda: len(_pids_answering(port)) == 2, within=60,
                            what="a new web process to answer beside the sibling")
        assert proc.poll() is None
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=90)
    retried = [line for line in stdout.splitlines()
               if "web_process_failed_to_start_again" in line]
    assert retried, stdout[-3000:] + stderr[-3000:]


def test_serve_gives_up_on_a_web_process_that_keeps_failing_past_its_limit(
    tmp_path: Path,
) -> None:
    port, marker = free_port(), tmp_path / "database-away"
    proc = _serve_marked(tmp_path, port, marker, limit_s=2.0)
    try:
        first = wait_children(proc.pid, 2)
        wait_until_blocking(lambda: bool(_pids_answering(port, tries=5)), within=60,
                            what="the web processes to answer")
        marker.touch()
        os.kill(first[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3
    assert "sonic-receiver: error: a web process failed to start again for" in stderr, \
        stderr[-3000:]
