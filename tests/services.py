"""Real peer services for the tests, started and stopped by the tests themselves: a throwaway
PostgreSQL cluster, moto's S3-compatible server, and Debian's Chromium driven by Playwright.

``scripts/test`` installs what is missing (Debian's ``postgresql`` and ``chromium``; moto and
Playwright come with the dev dependencies). A service that cannot be had makes the tests that
need it skip on a developer's machine, with the reason, and fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.support import free_port
from tests.waiting import wait_until_blocking

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# headless in a container as root: no sandbox (needs user namespaces), /dev/shm is often tiny
CHROMIUM_ARGS = ("--no-sandbox", "--disable-dev-shm-usage")


class ServiceUnavailable(Exception):
    """A peer service could not be started; the message says why."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test on a developer's machine; fail it under ``CI=true``, where every service
    must be there (``scripts/test`` installs them)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- PostgreSQL ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PostgresServer:
    """A running throwaway cluster: trust authentication on loopback TCP and on a Unix socket
    in ``socket_dir``, superuser ``user``."""

    host: str
    port: int
    socket_dir: Path
    user: str = "postgres"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, or Debian's newest
    ``/usr/lib/postgresql/<version>/bin``."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)],
    )
    if versions:
        return versions[-1]
    raise ServiceUnavailable(
        "PostgreSQL is not installed (no pg_ctl/initdb on PATH or under /usr/lib/postgresql; "
        "scripts/test installs Debian's postgresql)"
    )


@dataclass(frozen=True)
class _Account:
    uid: int | None
    gid: int | None
    name: str


def _unprivileged_account() -> _Account:
    """``initdb`` refuses to run as root: as root, run the cluster as Debian's ``postgres``
    user (or ``nobody``); otherwise as ourselves."""
    if os.geteuid() != 0:
        return _Account(None, None, pwd.getpwuid(os.geteuid()).pw_name)
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _Account(entry.pw_uid, entry.pw_gid, name)
    raise ServiceUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass(kw_only=True)
class PostgresCluster:
    """A running throwaway cluster that its owner may stop abruptly and start again, on the
    same port and data folder (a database server restarted under load): :attr:`server` says
    where it answers while it runs."""

    server: PostgresServer
    data: Path
    log: Path
    bindir: Path
    options: str
    account: _Account
    env: dict[str, str]

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``pg_ctl ARGS -D data`` as the cluster's owner; its output captured, never raised."""
        return subprocess.run(
            [str(self.bindir / "pg_ctl"), *args, "-D", str(self.data)],
            cwd=self.data.parent, env=self.env, user=self.account.uid, group=self.account.gid,
            capture_output=True, text=True, timeout=120, check=False,
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        """``pg_ctl start``, waiting until the server accepts connections (``-w``)."""
        return self.pg_ctl("start", "-l", str(self.log), "-w", "-t", "60", "-o", self.options)

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m MODE`` (``immediate``: every server process quits at once, without
        a checkpoint, as in a crash; the next start recovers from the WAL). Raises when the
        server did not stop."""
        done = self.pg_ctl("stop", "-m", mode, "-w", "-t", "30")
        if done.returncode != 0:
            raise ServiceUnavailable(f"pg_ctl stop failed: {done.stderr.strip()}\n"
                                     f"{_tail(self.log)}")

    def restart(self) -> None:
        """Start it again after :meth:`stop`; raises with the server's log when it did not."""
        done = self.start()
        if done.returncode != 0:
            raise ServiceUnavailable(f"pg_ctl start failed: {done.stderr.strip()}\n"
                                     f"{_tail(self.log)}")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway cluster in a temporary folder, tuned for tests (no fsync), on a free
    loopback port; stop it (immediate) and remove the folder at the end."""
    with running_postgres_cluster() as cluster:
        yield cluster.server


@contextlib.contextmanager
def running_postgres_cluster(*, crash_safe: bool = False,
                             durable: bool = False) -> Iterator[PostgresCluster]:
    """:func:`running_postgres`, yielding the cluster itself, which the caller may stop and
    start again (:class:`PostgresCluster`); it is stopped and removed at the end, whether it
    runs then or not.

    ``crash_safe``: a commit is in the WAL on disk before it is acknowledged
    (``synchronous_commit`` on), so that it survives ``pg_ctl stop -m immediate``; otherwise
    the last commits before such a stop may be lost. (Without fsync all the same: the server's
    processes are killed, not the machine; what they wrote stays in the OS's page cache.)

    ``durable``: as deployed, not tuned for tests: ``fsync`` and full-page writes on, every
    commit flushed to disk (the benchmarks measure this)."""
    bindir = postgres_bindir()
    account = _unprivileged_account()
    root = Path(tempfile.mkdtemp(prefix="sonic-pg-"))
    try:
        if account.uid is not None and account.gid is not None:
            os.chown(root, account.uid, account.gid)
        data, log = root / "data", root / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        done = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=root, env=env, user=account.uid, group=account.gid,
            capture_output=True, text=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            raise ServiceUnavailable(
                f"initdb failed as {account.name}: {(done.stderr or done.stdout).strip()}")

        cluster: PostgresCluster | None = None
        for _ in range(3):  # a free port can be taken between free_port() and the bind
            port = free_port()
            tuning = "" if durable else (
                f"-c fsync=off -c synchronous_commit={'on' if crash_safe else 'off'} "
                "-c full_page_writes=off ")
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} {tuning}"
                       "-c max_connections=200 -c log_min_messages=warning")
            candidate = PostgresCluster(
                server=PostgresServer(host="127.0.0.1", port=port, socket_dir=root),
                data=data, log=log, bindir=bindir, options=options, account=account, env=env)
            done = candidate.start()
            if done.returncode == 0:
                cluster = candidate
                break
        if cluster is None:
            raise ServiceUnavailable(
                f"pg_ctl start failed: {done.stderr.strip()}\n{_tail(log)}")
        try:
            yield cluster
        finally:
            stopped = cluster.pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
            if stopped.returncode != 0:  # (or its owner left it stopped: nothing to kill)
                _kill_postmaster(data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """Create an empty database ``test_<random>`` on ``server``, yield its DSN, drop it after
    (with FORCE: connections a test left open do not keep it)."""
    name = f"test_{secrets.token_hex(8)}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.dsn(name)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 9)


# --- S3 (moto) ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class S3Server:
    """moto's standalone S3-compatible server on loopback. It accepts any credentials; these
    are the ones the tests use, also as the standard ``AWS_*`` variables (``env``)."""

    endpoint_url: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (moto takes the unsigned ``PUT /{bucket}``)."""
        httpx.put(f"{self.endpoint_url}/{name}", timeout=30).raise_for_status()


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    """Run ``python -m moto.server`` on loopback until the block exits. It binds port 0 and
    the port it got is read from its log, so no other server can take it first."""
    folder = Path(tempfile.mkdtemp(prefix="sonic-moto-"))
    log = folder / "server.log"
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            yield S3Server(endpoint_url=_moto_endpoint(process, log, timeout=60))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _moto_endpoint(process: subprocess.Popen[bytes], log: Path, *, timeout: float) -> str:
    """The URL moto's server says it runs on (werkzeug logs `Running on http://HOST:PORT`),
    once it answers."""
    endpoint: list[str] = []

    def answering() -> bool:
        if process.poll() is not None:
            raise ServiceUnavailable(f"moto server exited at start:\n{_tail(log)}")
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{found[1]}/moto-api/", timeout=2).status_code == 200:
                    endpoint.append(found[1])
        return bool(endpoint)

    try:
        wait_until_blocking(answering, within=timeout, what="moto's server to answer")
    except AssertionError as exc:
        raise ServiceUnavailable(
            f"moto server not ready after {timeout:.0f} s:\n{_tail(log)}") from exc
    return endpoint[0]


# --- Chromium -----------------------------------------------------------------------------


def promtool_executable() -> Path:
    """Prometheus's ``promtool`` (Debian's ``prometheus`` package; ``$PROMTOOL`` for another)."""
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found or not os.access(found, os.X_OK):
        raise ServiceUnavailable("no promtool on PATH (scripts/test installs Debian's prometheus)")
    return Path(found)


def chromium_executable() -> Path:
    """Debian's Chromium (``$CHROMIUM`` to use another); Playwright never downloads one here."""
    if not os.access(CHROMIUM, os.X_OK):
        raise ServiceUnavailable(
            f"no Chromium at {CHROMIUM} (scripts/test installs Debian's chromium)")
    return CHROMIUM
