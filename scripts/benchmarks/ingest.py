"""ingest: signed deliveries a second, their latency, and their CPU and disk cost, at fixed
concurrencies, on every backend, from one and from two web processes.

Servers, each in processes of their own under the same uvicorn settings
(:mod:`scripts.benchmarks.serve`), loaded in turn by the same generator processes
(:mod:`scripts.benchmarks.loadgen`):

``bare``
    a Starlette endpoint that reads the body and answers 200 (the baseline);
``sqlite``
    the real app on a fresh SQLite file, with a route that writes a job for every succeeded
    task (a no-op handler) and no worker (``RECEIVER_WORKER=off``, as beside a worker process);
``postgresql``
    the same on a fresh database of a throwaway PostgreSQL cluster
    (:func:`tests.services.running_postgres`), skipped with a note when none can be started;
``sqlite+worker``
    ``sqlite`` with the in-process worker on, running those no-op jobs as they come (one
    process only: several processes would each run a worker).

``webhook``
    adnanh/webhook (Go) running ``/bin/true`` for every delivery, beside ``bare`` when it is
    installed: the peer the receiver is compared with.

With ``--prefill N``, ``sqlite`` and ``postgresql`` are measured again on databases filled to
N deliveries first (:mod:`scripts.benchmarks.prefill`), with their ratios to the empty ones.

Each runs from 1 and from 2 processes sharing one listening socket (``--procs``); ratios are
to ``bare`` with as many processes, and to the same server with one. Every delivery is a
distinct, validly signed body, so each is committed. Afterwards the database must hold
every delivery that was answered 200.

Then a sustained run (``--sustain`` seconds of saturating load on ``sqlite`` x1) samples the
size of the WAL every few seconds: it must stay bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import socket
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.benchmarks.processes import (
    PYTHON,
    ROOT,
    Child,
    HostLoad,
    Meter,
    child_env,
    children_of,
    started,
)
from scripts.benchmarks.report import Report, percentile, ratio

NAME = "ingest"
SECRET = "bench-secret"  # noqa: S105 -- signs loopback test traffic only
BACKENDS = ("bare", "bare-h11", "sqlite", "postgresql", "sqlite+worker")
PEER = "webhook"  # adnanh/webhook, measured beside bare when it is installed
ROUTES = """\
[handlers.bench_noop]
path = "scripts.benchmarks.probes:noop"

[[routes]]
name = "bench"
on = ["task.succeeded"]
handlers = ["bench_noop"]
"""
WAL_GOAL_MIB = 64.0
HALF_P99_GOAL_MS = 25.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ingest")
    group.add_argument("--concurrency", default="1,8,32",
                       help="ingest: comma-separated concurrencies (default 1,8,32)")
    group.add_argument("--ingest-duration", type=float, help="ingest: measured seconds a point")
    group.add_argument("--ingest-warmup", type=float, help="ingest: unmeasured seconds first")
    group.add_argument("--clients", type=int, default=1,
                       help="ingest: load generator processes (default 1)")
    group.add_argument("--client", choices=("raw", "httpx"), default="raw",
                       help="ingest: load generator HTTP client (default raw; see loadgen.py)")
    group.add_argument("--rounds", type=int,
                       help="ingest: rounds over every point, medians reported (default 3, "
                       "quick 1)")
    group.add_argument("--targets", default=",".join(BACKENDS),
                       help=f"ingest: which servers (default {','.join(BACKENDS)}; quick "
                       "leaves out sqlite+worker)")
    group.add_argument("--procs", default="1,2",
                       help="ingest: web processes per server, comma-separated (default 1,2)")
    group.add_argument("--before", type=Path, metavar="CHECKOUT",
                       help="ingest: also serve the receiver of another checkout (e.g. `git "
                       "worktree add /tmp/before main`) as sqlite-before, in the same rounds")
    group.add_argument("--prefill", type=int, default=0, metavar="N",
                       help="ingest: also measure sqlite and postgresql on a database filled "
                            "to N deliveries first (scripts/benchmarks/prefill.py)")
    group.add_argument("--sustain", type=float,
                       help="ingest: seconds of saturating load on sqlite x1 sampling the WAL "
                       "(default 120, quick 3; 0 skips it)")


@dataclass
class Server:
    """One measured server: its backend, its process count, and where its data is."""

    backend: str
    procs: int
    folder: Path
    db: str = ""  # a file path or a PostgreSQL URL
    root: Path = ROOT  # where the server runs: its `receiver` and `scripts` come from here
    path: str = ""  # PYTHONPATH, if not root
    child: Child | None = None
    url: str = ""
    pids: list[int] = field(default_factory=list)
    prefill: int = 0  # deliveries in its database before it is measured

    @property
    def label(self) -> str:
        return f"{self.backend}{'@' + stored(self.prefill) if self.prefill else ''} x{self.procs}"


def stored(count: int) -> str:
    """1000000 -> 1M, 200000 -> 200k."""
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


@dataclass
class Postgres:
    """The throwaway cluster, and how to find its processes (whose CPU and writes count)."""

    admin_dsn: str
    dsn: Callable[[str], str]
    data: Path

    def pids(self) -> list[int]:
        try:
            master = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return []
        return [master, *children_of(master)]

    def create(self, name: str, *, template: str = "") -> str:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
            # The cluster runs as deployed (fsync on): a commit waits until its WAL is on
            # disk, so it survives a power loss, which SQLite's synchronous=NORMAL does not.
            conn.execute(f"ALTER DATABASE {name} SET synchronous_commit = on")
        return self.dsn(name)

    def drop(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")

    def size(self, dsn: str) -> int:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


@contextlib.contextmanager
def postgres_or_none(notes: list[str]) -> Iterator[Postgres | None]:
    try:
        from tests.services import ServiceUnavailable, running_postgres_cluster
    except ImportError as exc:  # psycopg missing
        notes.append(f"postgresql: skipped ({exc})")
        yield None
        return
    try:
        # as deployed: fsync and full-page writes on, each commit flushed to disk
        with running_postgres_cluster(crash_safe=True, durable=True) as cluster:
            server = cluster.server
            yield Postgres(admin_dsn=server.admin_dsn, dsn=server.dsn,
                           data=server.socket_dir / "data")
    except ServiceUnavailable as exc:
        notes.append(f"postgresql: skipped, no server could be started ({exc})")
        yield None


def server_env(server: Server) -> dict[str, str]:
    config = server.folder / "routes.toml"
    config.write_text(ROUTES)
    return child_env({
        "PYTHONPATH": server.path or str(server.root),
        "SONIC_WEBHOOK_SECRET": SECRET,
        "RECEIVER_DB": server.db or str(server.folder / "receiver.db"),
        "RECEIVER_MEDIA_DIR": str(server.folder / "media"),
        "RECEIVER_CONFIG": str(config),
        "RECEIVER_LOG_FORMAT": "json",
        "RECEIVER_WORKER": "inprocess" if server.backend == "sqlite+worker" else "off",
        # bare-h11: the bare endpoint on uvicorn's pure-Python parser, the default until issue
        # 12's second pass (the receiver's rate against the stack it was first measured on)
        "RECEIVER_HTTP_PARSER": "h11" if server.backend == "bare-h11" else "httptools",
        # every point opens up to 32 connections; the default cap is far above that
    })


def load(url: str, *, concurrency: int, clients: int, client: str, warmup: float,
         duration: float, prefix: str, work: Path, server_pid: int | None = None,
         pids: Callable[[], list[int]] | None = None,
         db_pids: Callable[[], list[int]] | None = None,
         rate: float = 0.0, during: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the generators against ``url``; merged results, with the CPU time and the bytes
    written of the server's processes (``pids``) and of the database's (``db_pids``) in the
    measured window, and the machine's load. ``during`` is called about every second while
    the load runs (samples)."""
    clients = max(1, min(clients, concurrency))
    start_at = time.time() + 1.0  # the generators' imports take well under that
    children = []
    for n in range(clients):
        share = concurrency // clients + (1 if n < concurrency % clients else 0)
        argv = [PYTHON, "-m", "scripts.benchmarks.loadgen", "--url", url, "--secret", SECRET,
                "--prefix", f"{prefix}-{n}", "--concurrency", str(share), "--client", client,
                "--start-at", repr(start_at), "--warmup", str(warmup),
                "--duration", str(duration), "--rate", str(rate / clients)]
        children.append(Child(argv, env=child_env(), log=work / "loadgen.log"))
    server = Meter(pids or (lambda: [server_pid] if server_pid else []))
    database = Meter(db_pids or list)
    time.sleep(max(0.0, start_at + warmup - time.time()))
    server.start()
    database.start()
    host = HostLoad()
    end = start_at + warmup + duration
    while (left := end - time.time()) > 0:
        time.sleep(min(1.0, left))
        if during is not None and time.time() < end - 0.2:
            during()
    cpu, written = server.stop()
    db_cpu, db_written = database.stop()
    host.stop(duration)
    results = [c.result(timeout_s=warmup + duration + 60) for c in children]
    latencies = [x for r in results for x in r["latencies_s"]]
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
        errors.update(r["errors"])
    done = max(1, len(latencies))
    return {
        "completed": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "server_cpu_pct": cpu / duration * 100,
        "cpu_ms": cpu / done * 1000,
        "db_cpu_ms": db_cpu / done * 1000,
        "disk_kb": (written + db_written) / done / 1000,
        "client_cpu_pct": sum(r["cpu_s"] or 0.0 for r in results) / duration * 100,
        "host_busy_cores": host.busy_cores,
        "host_steal_pct": host.steal_pct,
        "acked": [a for r in results for a in r["acked"]],
    }


def verify(server: Server, acked: list[str]) -> dict[str, int]:
    """Count what the database holds of the deliveries that were answered 200."""
    if server.backend == "postgresql":
        import psycopg

        with psycopg.connect(server.db) as pg:
            stored = {r[0] for r in pg.execute("SELECT delivery_id FROM deliveries")}
            jobs = pg.execute("SELECT COUNT(*) FROM jobs").fetchone()
            done = pg.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()
    else:
        conn = sqlite3.connect(server.folder / "receiver.db")
        try:
            stored = {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}
            jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            done = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()
        finally:
            conn.close()
    return {"acked": len(acked), "stored": len(stored),
            "acked_missing": sum(1 for a in acked if a not in stored),
            "jobs": jobs[0] if jobs else 0, "jobs_done": done[0] if done else 0}


MEASURES = ("rps", "p50_ms", "p99_ms", "server_cpu_pct", "cpu_ms", "db_cpu_ms", "disk_kb",
            "client_cpu_pct", "host_busy_cores", "host_steal_pct")


def median_point(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from several rounds: the median of each measure, the sum of the counts."""
    point: dict[str, Any] = {key: statistics.median(r[key] for r in rounds) for key in MEASURES}
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in rounds:
        statuses.update(r["statuses"])
        errors.update(r["errors"])
    point.update(statuses=dict(statuses), errors=dict(errors), rounds=rounds)
    return point


def wal_mib(server: Server) -> float:
    try:
        return os.stat(server.folder / "receiver.db-wal").st_size / 2**20
    except OSError:
        return 0.0


def start(server: Server, stack: contextlib.ExitStack) -> None:
    server.folder.mkdir(parents=True, exist_ok=True)
    env = server_env(server)
    bare = server.backend.startswith("bare")
    if bare or server.procs == 1 or server.backend == "sqlite-before":
        kind = "bare" if bare else "receiver"
        argv = [PYTHON, "-m", "scripts.benchmarks.serve", kind, "--procs", str(server.procs)]
        server.child = stack.enter_context(
            started(argv, env=env, log=server.folder / "server.log", cwd=server.root))
        announced = server.child.announcement(timeout_s=90)
        server.url = announced["url"] + "/webhooks/sonic"
        server.pids = announced["pids"]
        return
    # Several receiver processes: the real `sonic-receiver serve --workers N`.
    port = free_port()
    argv = [PYTHON, "-m", "receiver", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(server.procs)]
    server.child = stack.enter_context(
        started(argv, env=env, log=server.folder / "server.log", cwd=server.root))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if server.child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"serve --workers {server.procs} did not start; see "
                               f"{server.folder / 'server.log'}")
        workers = [p for p in children_of(server.child.pid) if _is_serving(p)]
        if len(workers) >= server.procs and _healthy(base):
            break
        time.sleep(0.2)
    server.url = base + "/webhooks/sonic"
    server.pids = [server.child.pid, *children_of(server.child.pid)]


def _is_serving(pid: int) -> bool:
    """A child of `serve` that is a web process (not multiprocessing's resource tracker)."""
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _healthy(base: str) -> bool:
    import httpx

    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def all_cpu(point: dict[str, Any]) -> float:
    """The CPU a delivery cost the server and its database's processes."""
    return float(point["cpu_ms"]) + float(point["db_cpu_ms"])


def prefilled(count: int, backends: list[str], procs: list[int], pg: Postgres | None,
              work: Path, notes: list[str]) -> list[Server]:
    """``sqlite`` and ``postgresql`` servers again, on databases filled to ``count``
    deliveries (:mod:`scripts.benchmarks.prefill`): filled once a backend, copied for each
    process count."""
    from scripts.benchmarks.prefill import prefill

    servers: list[Server] = []
    if count <= 0:
        return servers
    if "sqlite" in backends:
        master = work / "prefill-sqlite" / "receiver.db"
        master.parent.mkdir(parents=True, exist_ok=True)
        took = prefill(master, count)
        notes.append(f"sqlite@{stored(count)}: filled in {took:.0f} s, "
                     f"{master.stat().st_size / count:,.0f} bytes a delivery in the file.")
        for n in procs:
            server = Server(backend="sqlite", procs=n, prefill=count,
                            folder=work / f"sqlite-{stored(count)}-{n}")
            server.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(master, server.folder / "receiver.db")
            servers.append(server)
        master.unlink()
    if "postgresql" in backends and pg is not None:
        dsn = pg.create("bench_prefill")
        took = prefill(dsn, count)
        notes.append(f"postgresql@{stored(count)}: filled in {took:.0f} s, "
                     f"{pg.size(dsn) / count:,.0f} bytes a delivery in the database.")
        for n in procs:
            server = Server(backend="postgresql", procs=n, prefill=count,
                            folder=work / f"postgresql-{stored(count)}-{n}")
            server.db = pg.create(f"bench_prefill_{n}", template="bench_prefill")
            servers.append(server)
        pg.drop("bench_prefill")  # the copies are what is measured
    return servers


def start_peer(work: Path, stack: contextlib.ExitStack, notes: list[str]) -> Server | None:
    """adnanh/webhook (Go), when installed: a hook that runs ``/bin/true`` for every request,
    answered when it exits (its default)."""
    binary = shutil.which("webhook")
    if binary is None:
        notes.append("webhook (adnanh/webhook, the Go peer): not installed, not measured.")
        return None
    server = Server(backend=PEER, procs=1, folder=work / "peer")
    server.folder.mkdir(parents=True, exist_ok=True)
    hooks = server.folder / "hooks.json"
    hooks.write_text('[{"id": "sonic", "execute-command": "/bin/true"}]')
    port = free_port()
    server.child = stack.enter_context(started(
        [binary, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
        env=child_env(), log=server.folder / "server.log"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _answers(base + "/hooks/sonic"):
        if server.child.proc.poll() is not None or time.monotonic() > deadline:
            notes.append("webhook (the Go peer): did not start; see "
                         f"{server.folder / 'server.log'}")
            return None
        time.sleep(0.2)
    server.url = base + "/hooks/sonic"
    server.pids = [server.child.pid]
    notes.append(f"webhook = adnanh/webhook ({binary}), one process, a hook that runs "
                 "/bin/true for every delivery (stores nothing); its CPU counts its own "
                 "process only, not the forked /bin/true.")
    return server


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.post(url, content=b"{}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run(options: argparse.Namespace, work: Path) -> list[Report]:
    concurrencies = [int(c) for c in options.concurrency.split(",") if c.strip()]
    duration = options.ingest_duration or (1.0 if options.quick else 4.0)
    warmup = options.ingest_warmup if options.ingest_warmup is not None else (
        0.2 if options.quick else 1.0)
    rounds = options.rounds or (1 if options.quick else 2)
    sustain = options.sustain if options.sustain is not None else (3.0 if options.quick
                                                                   else 120.0)
    backends = [t for t in options.targets.split(",") if t]
    if options.quick and options.targets == ",".join(BACKENDS):
        backends.remove("sqlite+worker")
    if options.before is not None:
        backends.insert(backends.index("sqlite") + 1 if "sqlite" in backends else 0,
                        "sqlite-before")
    procs = [int(p) for p in options.procs.split(",") if p.strip()]
    notes: list[str] = []
    measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
    acked: dict[str, list[str]] = {}
    checks: dict[str, dict[str, int]] = {}
    wal_samples: list[tuple[float, float]] = []
    sustained: dict[str, Any] = {}
    half: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_or_none(notes)) if "postgresql" in backends else None
        servers: list[Server] = []
        for backend in backends:
            if backend == "postgresql" and pg is None:
                continue
            for n in procs:
                if backend == "sqlite+worker" and n > 1:
                    continue
                server = Server(backend=backend, procs=n,
                                folder=work / f"{backend.replace('+', '-')}-{n}")
                if backend == "sqlite-before":
                    # this benchmark's serve and probes modules, with that checkout's receiver
                    shim = work / "before-shim"
                    if not shim.exists():
                        shim.mkdir()
                        (shim / "scripts").symlink_to(ROOT / "scripts")
                    server.root = shim
                    server.path = f"{shim}{os.pathsep}{options.before.resolve()}"
                if pg is not None and backend == "postgresql":
                    server.db = pg.create(f"bench_{n}")
                start(server, stack)  # all up at once: an idle server costs nothing
                servers.append(server)
                acked[server.label] = []
        for server in prefilled(options.prefill, backends, procs, pg, work, notes):
            start(server, stack)
            servers.append(server)
            acked[server.label] = []
        peer = start_peer(work, stack, notes) if "bare" in backends else None
        if peer is not None:
            servers.append(peer)
            acked[peer.label] = []
        # Rounds interleave the servers, so that a slow spell of the machine falls on all.
        for r in range(rounds):
            for concurrency in concurrencies:
                for server in servers:
                    db_pids = pg.pids if pg is not None and server.backend == "postgresql" \
                        else None
                    point = load(server.url, concurrency=concurrency, clients=options.clients,
                                 client=options.client, warmup=warmup, duration=duration,
                                 prefix=f"{server.label}-r{r}-c{concurrency}".replace(" ", "")
                                 .replace("@", "-"),
                                 pids=lambda s=server: s.pids, db_pids=db_pids,
                                 work=server.folder)
                    acked[server.label] += point.pop("acked")
                    point["wal_mib"] = wal_mib(server)
                    measured.setdefault((server.label, concurrency), []).append(point)
                    print(f"  round {r + 1}/{rounds} {server.label:18} c={concurrency:<3} "
                          f"{point['rps']:7.0f} req/s  p50 {point['p50_ms']:7.2f} ms  "
                          f"p99 {point['p99_ms']:7.2f} ms  CPU {point['cpu_ms']:.3f}"
                          f"+{point['db_cpu_ms']:.3f} ms  disk {point['disk_kb']:6.1f} KB  "
                          f"host busy {point['host_busy_cores']:.2f}", flush=True)
        # Half load: each receiver paced (open loop, 32 connections) at half its best rate.
        for server in servers:
            if server.backend.startswith("bare") or server.backend == PEER or server.prefill:
                continue
            best = max(statistics.median(r["rps"] for r in measured[(server.label, c)])
                       for c in concurrencies)
            point = load(server.url, concurrency=32, clients=options.clients,
                         client=options.client, warmup=warmup, duration=duration,
                         rate=best / 2,
                         prefix=f"{server.label}-half".replace(" ", "").replace("@", "-"),
                         pids=lambda s=server: s.pids, work=server.folder)
            acked[server.label] += point.pop("acked")
            half[server.label] = point
            print(f"  half load {server.label:18} {point['rps']:7.0f} req/s  p50 "
                  f"{point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms", flush=True)
        sqlite1 = next((s for s in servers if s.backend == "sqlite" and s.procs == 1), None)
        if sustain > 0 and sqlite1 is not None:
            began = time.monotonic()

            def sample(server: Server = sqlite1) -> None:
                wal_samples.append((time.monotonic() - began, wal_mib(server)))

            sustained = load(sqlite1.url, concurrency=32, clients=options.clients,
                             client=options.client, warmup=0.0, duration=sustain,
                             prefix="sustain", pids=lambda: sqlite1.pids, work=sqlite1.folder,
                             during=sample)
            acked[sqlite1.label] += sustained.pop("acked")
            print(f"  sustained {sustain:g} s: {sustained['rps']:.0f} req/s, WAL max "
                  f"{max((w for _, w in wal_samples), default=0):.1f} MiB, disk "
                  f"{sustained['disk_kb']:.1f} KB/delivery", flush=True)
        time.sleep(1.0)  # the in-process worker finishes the last jobs before the drain
        for server in servers:
            if not server.backend.startswith("bare") and server.backend != PEER:
                checks[server.label] = verify(server, acked[server.label])
    points = {key: median_point(rs) for key, rs in measured.items()}
    for point in points.values():
        point["wal_mib"] = max(r["wal_mib"] for r in point["rounds"])

    rows: list[tuple[Any, ...]] = []
    for server in servers:
        for concurrency in concurrencies:
            p = points[(server.label, concurrency)]
            base = points.get((f"bare x{server.procs}", concurrency))
            one = points.get((f"{server.label.rsplit(' x', 1)[0]} x1", concurrency))
            empty = points.get((f"{server.backend} x{server.procs}", concurrency))
            others = sum(n for s, n in p["statuses"].items() if s != "200") + sum(
                p["errors"].values())
            rows.append((
                server.backend, stored(server.prefill) if server.prefill else "-",
                server.procs, concurrency, p["rps"], p["p50_ms"], p["p99_ms"],
                ratio(p["rps"], base["rps"]) if base else math.nan,
                ratio(p["rps"], one["rps"]) if one and server.procs > 1 else math.nan,
                ratio(p["rps"], empty["rps"]) if empty and server.prefill else math.nan,
                ratio(p["p99_ms"], base["p99_ms"]) if base else math.nan,
                p["cpu_ms"], p["db_cpu_ms"] if server.backend == "postgresql" else math.nan,
                ratio(all_cpu(p), all_cpu(empty)) if empty and server.prefill else math.nan,
                p["disk_kb"], p["host_busy_cores"], others,
            ))
    notes[:0] = [
        f"median of {rounds} round(s) of {duration:g} s measured after {warmup:g} s of warm-up "
        f"per point, servers interleaved; {options.clients} generator process(es), client "
        f"{options.client}. CPU ms = CPU time of the server's processes (all threads) per "
        "delivery answered; db CPU ms = the PostgreSQL server's processes; disk KB = bytes "
        "they caused to be written (/proc/PID/io write_bytes: WAL, pages, checkpoints, the "
        "JSON log) per delivery; host busy = cores busy machine-wide.",
        "sqlite = the real app on a fresh SQLite file (WAL, synchronous=normal); postgresql = "
        "the same on a fresh database of a cluster as deployed (fsync, full-page writes and "
        "synchronous_commit on: every commit flushed to disk); JSON logs to a file; one "
        "job written per delivery (a no-op handler's route), worker off; sqlite+worker = "
        "with the in-process worker running those jobs. x2 = two processes accepting on one "
        "socket: `sonic-receiver serve --workers 2` for the receiver, the serve module's "
        "--procs 2 for bare and sqlite-before; ratios are to bare with as many processes. "
        "Every server runs uvicorn with httptools (the default) but bare-h11: the same bare "
        "endpoint on h11, uvicorn's pure-Python parser.",
    ]
    for label, check in checks.items():
        ok = "OK" if check["acked_missing"] == 0 else "MISSING DELIVERIES"
        notes.append(f"{label}: {check['acked']} deliveries answered 200, {check['stored']} "
                     f"stored, {check['acked_missing']} missing ({ok}); jobs {check['jobs']}, "
                     f"done {check['jobs_done']}.")
    reports = [Report(
        name=NAME,
        title="ingest: signed deliveries/s, latency and cost, receiver vs bare Starlette "
              "endpoint",
        columns=("server", "stored", "procs", "conc", "req/s", "p50 ms", "p99 ms",
                 "req/s ÷ bare", "req/s ÷ x1", "req/s ÷ empty", "p99 ÷ bare", "CPU ms",
                 "db CPU ms", "CPU ÷ empty", "disk KB", "host busy", "non-200"),
        rows=rows,
        notes=notes,
        data={"points": {f"{t}@{c}": p for (t, c), p in points.items()}, "checks": checks},
    )]
    if half:
        reports.append(Report(
            name="ingest-half",
            title="ingest at half load: each receiver paced at half its best rate, 32 "
                  "connections",
            columns=("server", "procs", "req/s", "p50 ms", "p99 ms", "p99 ÷ goal", "CPU ms",
                     "non-200"),
            rows=[(s.backend, s.procs, half[s.label]["rps"], half[s.label]["p50_ms"],
                   half[s.label]["p99_ms"], ratio(half[s.label]["p99_ms"], HALF_P99_GOAL_MS),
                   half[s.label]["cpu_ms"],
                   sum(n for k, n in half[s.label]["statuses"].items() if k != "200")
                   + sum(half[s.label]["errors"].values()))
                  for s in servers if s.label in half],
            notes=[f"open loop: requests are sent at the rate whatever the answers; goal: p99 "
                   f"under {HALF_P99_GOAL_MS:g} ms."],
            data={"points": half},
        ))
    if wal_samples:
        peak = max(w for _, w in wal_samples)
        every = max(1, len(wal_samples) // 12)
        shown = ", ".join(f"{t:.0f} s: {w:.1f}" for t, w in wal_samples[::every])
        reports.append(Report(
            name="ingest-wal",
            title=f"sustained ingest: sqlite x1, c=32, {sustain:g} s",
            columns=("req/s", "p50 ms", "p99 ms", "CPU ms", "disk KB", "WAL max MiB",
                     "WAL max ÷ goal", "non-200"),
            rows=[(sustained["rps"], sustained["p50_ms"], sustained["p99_ms"],
                   sustained["cpu_ms"], sustained["disk_kb"], peak, ratio(peak, WAL_GOAL_MIB),
                   sum(n for s, n in sustained["statuses"].items() if s != "200")
                   + sum(sustained["errors"].values()))],
            notes=[f"WAL size (MiB) sampled about every second, every {every}th shown: "
                   f"{shown}.", f"goal: WAL under {WAL_GOAL_MIB:g} MiB at saturation."],
            data={"samples": wal_samples, "sustained": sustained},
        ))
    return reports
