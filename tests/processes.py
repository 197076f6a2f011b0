"""Real ``sonic-receiver`` processes for tests: ``serve`` (one web process or several) and
``worker``, started as a deployment would start them, on a SQLite file or a PostgreSQL URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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


def log_events(logs: Iterable[Path], event: str) -> list[dict[str, object]]:
    """The JSON log lines named ``event`` in ``logs`` (lines that are not JSON are skipped:
    a process killed mid-line leaves half of one)."""
    found = []
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("event") == event:
                found.append(item)
    return found


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
