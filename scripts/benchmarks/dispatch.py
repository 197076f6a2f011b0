"""dispatch: from a delivery's commit to its handler's start.

The receiver is served with :class:`scripts.benchmarks.stamping.StampingIngest` (the real
ingest role, noting when each ``record_delivery`` returned) and one route: every succeeded task runs
:func:`scripts.benchmarks.probes.probe`, which notes when it started. Deliveries come from the
ingest load generator, paced (open loop) or back to back (under load). Variants:

``in-process``
    ``RECEIVER_WORKER=inprocess``: the worker is woken by the delivery that wrote the job;
``in-process, saturated``
    the same while deliveries arrive back to back from 8 connections;
``in-process, 80% of saturated``
    paced at 80% of the arrival rate the saturated run reached;
``worker process``
    ``RECEIVER_WORKER=off`` and ``sonic-receiver worker`` on the same database (on SQLite it
    watches `data_version` every 50 ms; on PostgreSQL it is woken by LISTEN/NOTIFY).

Each runs on a fresh SQLite file and on a fresh database of a throwaway PostgreSQL cluster
(:func:`scripts.benchmarks.ingest.postgres_or_none`).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from scripts.benchmarks.ingest import SECRET, load, postgres_or_none
from scripts.benchmarks.probes import PROBE_FILE, read_stamps
from scripts.benchmarks.processes import PYTHON, Child, child_env, started
from scripts.benchmarks.report import Report, percentile, ratio

NAME = "dispatch"
GOAL_MS = 20.0  # paced
GOAL_AT80_MS = 50.0  # at 80% of the saturated rate
ROUTES = """\
[handlers.bench_probe]
path = "scripts.benchmarks.probes:probe"

[[routes]]
name = "bench"
on = ["task.succeeded"]
handlers = ["bench_probe"]
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dispatch")
    group.add_argument("--dispatch-count", type=int,
                       help="dispatch: paced deliveries a variant (default 1000, quick 200)")
    group.add_argument("--dispatch-rate", type=float, default=50.0,
                       help="dispatch: paced deliveries a second (default 50)")


def measure(work: Path, *, mode: str, count: int, rate: float, loaded_s: float,
            db: str = "") -> dict[str, Any]:
    """One variant: serve, send, wait for the handlers, join commit and start stamps. ``db``:
    a PostgreSQL URL, or empty for a fresh SQLite file."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "routes.toml"
    config.write_text(ROUTES)
    commits, starts = work / "commits", work / "starts"
    env = child_env({
        "SONIC_WEBHOOK_SECRET": SECRET,
        "RECEIVER_DB": db or str(work / "receiver.db"),
        "RECEIVER_MEDIA_DIR": str(work / "media"),
        "RECEIVER_CONFIG": str(config),
        "RECEIVER_LOG_FORMAT": "json",
        "RECEIVER_WORKER": "off" if mode == "worker process" else "inprocess",
        PROBE_FILE: str(starts),
    })
    serve = [PYTHON, "-m", "scripts.benchmarks.serve", "receiver", "--stamps", str(commits)]
    with started(serve, env=env, log=work / "server.log") as server, \
            contextlib.ExitStack() as stack:
        url = server.announcement(timeout_s=90)["url"] + "/webhooks/sonic"
        worker: Child | None = None
        if mode == "worker process":  # stopped when the block ends, before the server
            worker = stack.enter_context(started([PYTHON, "-m", "receiver", "worker"], env=env,
                                                 log=work / "worker.log"))

        def pids() -> list[int]:  # whoever runs the jobs: the web process, the worker
            return [server.pid] + ([worker.pid] if worker is not None else [])

        if mode == "in-process, saturated":
            sent = load(url, concurrency=8, clients=1, client="raw", warmup=0.0,
                        duration=loaded_s, prefix="loaded", pids=pids, work=work)
        else:
            sent = load(url, concurrency=8 if rate > 100 else 4, clients=1, client="raw",
                        warmup=0.0, duration=max(1.0, count / rate), rate=rate,
                        prefix="paced", pids=pids, work=work)
        acked = set(sent["acked"])
        deadline = time.monotonic() + 30
        while len(read_stamps(starts)) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.1)
    began, committed = read_stamps(starts), read_stamps(commits)
    received = received_at(db, work / "receiver.db")
    delays = [began[d] - committed[d] for d in acked if d in began and d in committed]
    recording = [committed[d] - received[d] for d in acked if d in committed and d in received]
    return {
        "mode": mode,
        "deliveries": len(acked),
        "arrival_per_s": sent["rps"],
        "started": len(delays),
        "missing": len(acked) - len(delays),
        "p50_ms": percentile(delays, 50) * 1000,
        "p99_ms": percentile(delays, 99) * 1000,
        "max_ms": max(delays, default=float("nan")) * 1000,
        "record_p50_ms": percentile(recording, 50) * 1000,
        "cpu_ms": sent["cpu_ms"],
        "host_busy_cores": sent["host_busy_cores"],
        "delays_s": delays,
    }


def received_at(db: str, path: Path) -> dict[str, float]:
    if db:
        import psycopg

        with psycopg.connect(db) as conn:
            return {r[0]: r[1] for r in conn.execute(
                "SELECT delivery_id, received_at FROM deliveries")}
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT delivery_id, received_at FROM deliveries"))
    finally:
        conn.close()


def run(options: argparse.Namespace, work: Path) -> Report:
    count = options.dispatch_count or (100 if options.quick else 1000)
    rate = options.dispatch_rate
    loaded_s = 2.0 if options.quick else 6.0
    notes: list[str] = []
    results = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_or_none(notes))
        backends = [("sqlite", "")]
        if pg is not None:
            backends.append(("postgresql", ""))
        for n, (backend, _) in enumerate(backends):
            def db(name: str, backend: str = backend) -> str:
                return pg.create(name) if backend == "postgresql" and pg is not None else ""

            folder = work / backend
            paced = measure(folder / "paced", mode="in-process", count=count, rate=rate,
                            loaded_s=loaded_s, db=db(f"dispatch_paced_{n}"))
            saturated = measure(folder / "saturated", mode="in-process, saturated",
                                count=count, rate=rate, loaded_s=loaded_s,
                                db=db(f"dispatch_saturated_{n}"))
            eighty = 0.8 * saturated["arrival_per_s"]
            at80 = measure(folder / "at80", mode="in-process, 80% of saturated",
                           count=int(eighty * loaded_s), rate=eighty, loaded_s=loaded_s,
                           db=db(f"dispatch_at80_{n}"))
            process = measure(folder / "process", mode="worker process", count=count,
                              rate=rate, loaded_s=loaded_s, db=db(f"dispatch_process_{n}"))
            for r in (paced, saturated, at80, process):
                r["backend"] = backend
                results.append(r)
    rows = []
    for r in results:
        baseline = next(b for b in results
                        if b["backend"] == r["backend"] and b["mode"] == "worker process")
        goal = GOAL_AT80_MS if r["mode"] == "in-process, 80% of saturated" else GOAL_MS
        rows.append((r["backend"], r["mode"], r["deliveries"], r["arrival_per_s"], r["p50_ms"],
                     r["p99_ms"], r["max_ms"], ratio(r["p50_ms"], goal),
                     ratio(r["p50_ms"], baseline["p50_ms"]), r["record_p50_ms"], r["cpu_ms"],
                     r["host_busy_cores"], r["missing"]))
    notes[:0] = [
        f"paced: {count} deliveries at {rate:g}/s from 4 connections (open loop); saturated: "
        f"back to back from 8 connections for {loaded_s:g} s; 80%: paced from 8 connections "
        "at 80% of the saturated arrival rate. One job a delivery.",
        "dispatch = handler start - the moment record_delivery returned (committed), both "
        "time.time() on one machine; record = commit - received_at (the delivery's "
        "verification-to-commit time, for scale).",
        f"goals: in-process p50 < {GOAL_MS:g} ms paced, < {GOAL_AT80_MS:g} ms at 80% of the "
        "maximum ingest rate (p50 ÷ goal is against the one of its row). The worker process "
        "watches SQLite's data_version every 50 ms; on PostgreSQL it is woken by NOTIFY from "
        "the web process's commit.",
        "CPU ms: the receiver's processes (web, and the worker process where there is one) "
        "while deliveries arrived, per delivery, jobs included; host busy = cores busy "
        "machine-wide meanwhile.",
    ]
    for r in results:
        r.pop("delays_s")
    return Report(
        name=NAME,
        title="dispatch: commit → handler start",
        columns=("backend", "worker", "deliveries", "arrivals/s", "p50 ms", "p99 ms", "max ms",
                 "p50 ÷ goal", "p50 ÷ worker process", "record p50 ms", "CPU ms", "host busy",
                 "not started"),
        rows=rows,
        notes=notes,
        data={"variants": results, "goal_ms": GOAL_MS, "goal_at80_ms": GOAL_AT80_MS},
    )
