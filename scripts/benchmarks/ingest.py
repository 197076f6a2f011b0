"""ingest: signed deliveries a second, and their latency, at fixed concurrencies.

Three servers, each in a process of its own under the same uvicorn settings
(:mod:`scripts.benchmarks.serve`), loaded in turn by the same generator processes
(:mod:`scripts.benchmarks.loadgen`):

``bare``
    a Starlette endpoint that reads the body and answers 200 (the baseline);
``receiver``
    the real app on a fresh SQLite file, with a route that writes a job for every succeeded
    task (a no-op handler) and no worker (``RECEIVER_WORKER=off``, as beside a worker process);
``receiver+worker``
    the same with the in-process worker on, running those no-op jobs as they come.

Every delivery is a distinct, validly signed body, so each is committed. Afterwards the
database must hold every delivery that was answered 200.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sqlite3
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from scripts.benchmarks.processes import (
    PYTHON,
    Child,
    HostLoad,
    child_env,
    cpu_seconds,
    started,
)
from scripts.benchmarks.report import Report, percentile, ratio

NAME = "ingest"
SECRET = "bench-secret"  # noqa: S105 -- signs loopback test traffic only
TARGETS = ("bare", "receiver", "receiver+worker")
ROUTES = """\
[handlers.bench_noop]
path = "scripts.benchmarks.probes:noop"

[[routes]]
name = "bench"
on = ["task.succeeded"]
handlers = ["bench_noop"]
"""


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
    group.add_argument("--targets", default=",".join(TARGETS),
                       help=f"ingest: which servers (default {','.join(TARGETS)})")


def server_env(work: Path, target: str) -> dict[str, str]:
    config = work / "routes.toml"
    config.write_text(ROUTES)
    return child_env({
        "SONIC_WEBHOOK_SECRET": SECRET,
        "RECEIVER_DB": str(work / "receiver.db"),
        "RECEIVER_MEDIA_DIR": str(work / "media"),
        "RECEIVER_CONFIG": str(config),
        "RECEIVER_LOG_FORMAT": "json",
        "RECEIVER_WORKER": "inprocess" if target == "receiver+worker" else "off",
    })


def load(url: str, *, concurrency: int, clients: int, client: str, warmup: float,
         duration: float, prefix: str, server_pid: int, work: Path,
         rate: float = 0.0) -> dict[str, Any]:
    """Run the generators against ``url``; merged results, with the server's CPU share and
    the machine's load in the measured window."""
    clients = max(1, min(clients, concurrency))
    start_at = time.time() + 1.5  # the generators' imports take well under that
    children = []
    for n in range(clients):
        share = concurrency // clients + (1 if n < concurrency % clients else 0)
        argv = [PYTHON, "-m", "scripts.benchmarks.loadgen", "--url", url, "--secret", SECRET,
                "--prefix", f"{prefix}-{n}", "--concurrency", str(share), "--client", client,
                "--start-at", repr(start_at), "--warmup", str(warmup),
                "--duration", str(duration), "--rate", str(rate / clients)]
        children.append(Child(argv, env=child_env(), log=work / "loadgen.log"))
    time.sleep(max(0.0, start_at + warmup - time.time()))
    cpu0 = cpu_seconds(server_pid)
    host = HostLoad()
    time.sleep(max(0.0, start_at + warmup + duration - time.time()))
    cpu1 = cpu_seconds(server_pid)
    host.stop(duration)
    results = [c.result(timeout_s=warmup + duration + 60) for c in children]
    latencies = [x for r in results for x in r["latencies_s"]]
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
        errors.update(r["errors"])
    return {
        "completed": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "server_cpu_pct": (cpu1 - cpu0) / duration * 100,
        "client_cpu_pct": sum(r["cpu_s"] or 0.0 for r in results) / duration * 100,
        "host_busy_cores": host.busy_cores,
        "host_steal_pct": host.steal_pct,
        "acked": [a for r in results for a in r["acked"]],
    }


def verify(db: Path, acked: list[str]) -> dict[str, int]:
    """Count what the database holds of the deliveries that were answered 200."""
    conn = sqlite3.connect(db)
    try:
        stored = {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        done = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
    finally:
        conn.close()
    return {"acked": len(acked), "stored": len(stored),
            "acked_missing": sum(1 for a in acked if a not in stored),
            "jobs": jobs, "jobs_done": done}


def median_point(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from several rounds: the median of each measure, the sum of the counts."""
    point: dict[str, Any] = {key: statistics.median(r[key] for r in rounds) for key in (
        "rps", "p50_ms", "p99_ms", "server_cpu_pct", "client_cpu_pct", "host_busy_cores",
        "host_steal_pct")}
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in rounds:
        statuses.update(r["statuses"])
        errors.update(r["errors"])
    point.update(statuses=dict(statuses), errors=dict(errors), rounds=rounds)
    return point


def run(options: argparse.Namespace, work: Path) -> Report:
    concurrencies = [int(c) for c in options.concurrency.split(",") if c.strip()]
    duration = options.ingest_duration or (2.0 if options.quick else 5.0)
    warmup = options.ingest_warmup if options.ingest_warmup is not None else (
        0.5 if options.quick else 1.0)
    rounds = options.rounds or (1 if options.quick else 3)
    targets = [t for t in options.targets.split(",") if t]
    measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
    acked: dict[str, list[str]] = {t: [] for t in targets}
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[Child, str, Path]] = {}
        for target in targets:  # all up at once: an idle server costs nothing
            folder = work / target.replace("+", "-")
            folder.mkdir(parents=True, exist_ok=True)
            kind = "bare" if target == "bare" else "receiver"
            argv = [PYTHON, "-m", "scripts.benchmarks.serve", kind]
            server = stack.enter_context(
                started(argv, env=server_env(folder, target), log=folder / "server.log"))
            servers[target] = (server, server.announcement()["url"] + "/webhooks/sonic", folder)
        # Rounds interleave the servers, so that a slow spell of the machine falls on all.
        for n in range(rounds):
            for concurrency in concurrencies:
                for target in targets:
                    server, url, folder = servers[target]
                    point = load(url, concurrency=concurrency, clients=options.clients,
                                 client=options.client, warmup=warmup, duration=duration,
                                 prefix=f"{target}-r{n}-c{concurrency}", server_pid=server.pid,
                                 work=folder)
                    acked[target] += point.pop("acked")
                    measured.setdefault((target, concurrency), []).append(point)
                    print(f"  round {n + 1}/{rounds} {target:16} c={concurrency:<3} "
                          f"{point['rps']:7.0f} req/s  p50 {point['p50_ms']:7.2f} ms  "
                          f"p99 {point['p99_ms']:7.2f} ms  server CPU "
                          f"{point['server_cpu_pct']:3.0f}%  client CPU "
                          f"{point['client_cpu_pct']:3.0f}%  host busy "
                          f"{point['host_busy_cores']:.2f} cores", flush=True)
        time.sleep(1.0)  # the in-process worker finishes the last jobs before the drain
    checks = {t: verify(servers[t][2] / "receiver.db", acked[t]) for t in targets if t != "bare"}
    points = {key: median_point(rs) for key, rs in measured.items()}

    rows: list[tuple[Any, ...]] = []
    for target in targets:
        for concurrency in concurrencies:
            p = points[(target, concurrency)]
            base = points.get(("bare", concurrency))
            others = sum(n for s, n in p["statuses"].items() if s != "200") + sum(
                p["errors"].values())
            rows.append((
                target, concurrency, p["rps"], p["p50_ms"], p["p99_ms"],
                ratio(p["rps"], base["rps"]) if base else math.nan,
                ratio(p["p50_ms"], base["p50_ms"]) if base else math.nan,
                ratio(p["p99_ms"], base["p99_ms"]) if base else math.nan,
                p["server_cpu_pct"], p["client_cpu_pct"], p["host_busy_cores"], others,
            ))
    notes = [
        f"median of {rounds} round(s) of {duration:g} s measured after {warmup:g} s of warm-up "
        f"per point, servers interleaved; {options.clients} generator process(es), client "
        f"{options.client}. CPU % is of one core (server: all its threads); host busy = cores "
        "busy machine-wide (server + generator + anything else).",
        "receiver = the real app on a fresh SQLite file (WAL, synchronous=normal), JSON logs to "
        "a file, one job written per delivery (a no-op handler's route), worker off; "
        "receiver+worker = the same with the in-process worker running those jobs.",
    ]
    for target, check in checks.items():
        ok = "OK" if check["acked_missing"] == 0 else "MISSING DELIVERIES"
        notes.append(f"{target}: {check['acked']} deliveries answered 200, {check['stored']} "
                     f"stored, {check['acked_missing']} missing ({ok}); jobs {check['jobs']}, "
                     f"done {check['jobs_done']}.")
    return Report(
        name=NAME,
        title="ingest: signed deliveries/s and latency, receiver vs bare Starlette endpoint",
        columns=("server", "conc", "req/s", "p50 ms", "p99 ms", "req/s ÷ bare",
                 "p50 ÷ bare", "p99 ÷ bare", "server CPU %", "client CPU %", "host busy",
                 "non-200"),
        rows=rows,
        notes=notes,
        data={"points": {f"{t}@{c}": p for (t, c), p in points.items()}, "checks": checks},
    )
