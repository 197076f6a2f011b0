"""Real ``sonic-receiver`` processes for tests: ``serve`` (one web process or several) and
``worker``, started as a deployment would start them, on a SQLite file or a PostgreSQL URL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from tests.support import SECRET
from tests.waiting import wait_until_blocking

ROOT = Path(__file__).resolve().parent.parent


def receiver_env(config: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a receiver process: the test secret, JSON logs, ``config``, and
    ``tests.plugins`` importable."""
    return {**os.environ, "SONIC_WEBHOOK_SECRET": SECRET, "RECEIVER_LOG_FORMAT": "json",
            "RECEIVER_CONFIG": str(config), "PYTHONPATH": str(ROOT), **(extra_env or {})}


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path,
                 timeout_s: float = 60) -> None:
    """Until ``/healthz`` answers on ``port``; fails with the log when the process exits first."""

    def healthy() -> bool:
        assert proc.poll() is None, f"server exited at start:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until_blocking(healthy, within=timeout_s, what=f"the server on port {port} to start",
                        detail=lambda: log.read_text()[-3000:])


@contextmanager
def serve(
    db: Path | str, port: int, log: Path, *, extra_env: dict[str, str] | None = None,
    args: Sequence[str] = (), config: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``sonic-receiver serve`` on ``port`` (``args`` appended, e.g. ``--workers 2``), up and
    answering when the block starts; stopped with SIGTERM after it. ``config`` defaults to
    ``receiver.toml`` beside the log, made with no routes when missing."""
    config = config or log.parent / "receiver.toml"
    if not config.exists():
        config.write_text("routes = []\n")  # ingest only: these tests run no handler
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port), "--db", str(db),
             *args],
            env=receiver_env(config, extra_env), stdout=out, stderr=out,
        )
    try:
        wait_healthy(port, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


def start_worker(db: Path | str, log: Path, config: Path,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``sonic-receiver worker`` on ``db``, logging to ``log`` (appended)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker", "--db", str(db)],
            env=receiver_env(config, extra_env), stdout=out, stderr=out,
        )


def children(pid: int) -> list[int]:
    """The web processes ``serve --workers N`` (process ``pid``) has started: its children
    that run ``multiprocessing.spawn`` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def wait_children(pid: int, count: int, timeout_s: float = 60) -> list[int]:
    """The web processes of ``serve --workers`` (process ``pid``) once there are ``count`` of
    them: one killed a moment ago is started again, and a child shows as one once it runs
    ``spawn_main``."""
    found: list[int] = []

    def counted() -> bool:
        found[:] = children(pid)
        return len(found) == count

    wait_until_blocking(counted, within=timeout_s, what=f"{count} web processes of {pid}",
                        detail=lambda: f"it has {found}")
    return found


def log_lines(logs: Iterable[Path]) -> list[dict[str, object]]:
    """The JSON log lines in ``logs`` (lines that are not JSON are skipped: a process killed
    mid-line leaves half of one)."""
    found = []
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                found.append(item)
    return found


def log_events(logs: Iterable[Path], event: str) -> list[dict[str, object]]:
    """The JSON log lines named ``event`` in ``logs``."""
    return [item for item in log_lines(logs) if item.get("event") == event]


def done_twice(logs: Iterable[Path]) -> list[str]:
    """Job keys logged ``job_done`` more than once across ``logs``: jobs run twice to done."""
    counts = Counter(str(e.get("job_key")) for e in log_events(logs, "job_done"))
    return sorted(key for key, n in counts.items() if n > 1)


def wait_logged(log: Path, event: str, proc: subprocess.Popen[bytes],
                timeout_s: float = 60) -> None:
    """Until ``log`` holds a line of ``event`` (a worker's ``worker_started``: its signal
    handlers are in place); fails with the log when the process exits first."""

    def logged() -> bool:
        if log_events([log], event):
            return True
        assert proc.poll() is None, f"exited before {event}:\n{log.read_text()[-3000:]}"
        return False

    wait_until_blocking(logged, within=timeout_s, what=f"{event} in {log}",
                        detail=lambda: log.read_text()[-3000:])


def logged_at(event: dict[str, object]) -> float:
    """When a JSON log line was written, in Unix seconds (its ISO ``timestamp``, UTC)."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def connection_owner(pids: Iterable[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server's end of the TCP connection ``client_port`` →
    ``server_port`` (read from ``/proc`` while the connection is open); None if none does."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port and int(fields[9])):
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            links = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for link in links:
            try:
                if os.readlink(link) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@dataclass(frozen=True)
class Answer:
    """One request's answer: its status (None when the connection failed or was cut) and the
    process that answered it (None when not known)."""

    status: int | None
    pid: int | None


def ask(port: int, path: str, pids: Iterable[int], *, timeout_s: float = 10) -> Answer:
    """``GET path`` on a new connection to ``port``, and which of ``pids`` (the web processes
    sharing the port) answered it: the one holding the connection while it is kept open."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return Answer(None, None)
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    return Answer(None, None)
                body += chunk
            status = int(head.split(b" ", 2)[1])
            return Answer(status, connection_owner(pids, port, sock.getsockname()[1]))
    except OSError:
        return Answer(None, None)


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has the file ``path`` open."""
    try:
        links = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for link in links:
        try:
            if os.readlink(link) == str(path):
                return True
        except OSError:
            continue
    return False
