"""reconcile: tasks a second through ``receiver.recovery.reconcile``, vs polling alone.

The sandbox runs in a process of its own (``sonic-receiver sandbox --speed instant``) with
``--reconcile-tasks`` tasks seeded through ``POST /_sandbox/seed`` (already succeeded). In
this process, with one ``httpx.AsyncClient`` and one :class:`SonicClient`, at the same
concurrency and a rate limit far above what is reached:

``get-music only``
    every task polled by ``concurrency`` workers through the same rate limiter, nothing
    recorded: the baseline;
``reconcile``
    :func:`receiver.recovery.reconcile` into a fresh SQLite file with the default routes (one
    ``download_audio`` job written per succeeded task, no worker running).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from receiver.clock import SystemClock
from receiver.recovery import reconcile
from receiver.routing import Router, routes_from_config
from receiver.sonic.client import SonicClient
from receiver.storage.roles import sqlite_storage
from scripts.benchmarks.processes import PYTHON, Child, child_env, cpu_seconds
from scripts.benchmarks.report import Report, ratio

NAME = "reconcile"
API_KEY = "bench-key"
GOAL_PER_S = 200.0
RATE_PER_S = 1_000_000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reconcile")
    group.add_argument("--reconcile-tasks", type=int,
                       help="reconcile: tasks seeded (default 10000, quick 2000)")
    group.add_argument("--reconcile-concurrency", type=int, default=8,
                       help="reconcile: polls at once (default 8, as the replay command)")


def sandbox_url(child: Child, timeout_s: float = 30.0) -> str:
    """The URL from the sandbox's ``sandbox_listening`` log line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.log.exists():
            for line in child.log.read_text().splitlines():
                if '"sandbox_listening"' in line:
                    url: str = json.loads(line)["url"]
                    return url
        if child.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the sandbox did not start; see {child.log}")


async def poll_only(ids: list[str], sonic: SonicClient, concurrency: int) -> None:
    limiter = AsyncLimiter(max_rate=RATE_PER_S, time_period=1.0)
    queue = list(reversed(ids))

    async def worker() -> None:
        while queue:
            task_id = queue.pop()
            async with limiter:
                await sonic.get_music(task_id)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def phases(url: str, ids: list[str], concurrency: int, work: Path,
                 sandbox_pid: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as http:
        sonic = SonicClient(url, API_KEY, http=http)
        await sonic.get_music(ids[0])  # connect once before either clock starts
        for phase in ("get-music only", "reconcile"):
            began, cpu, sandbox_cpu = time.perf_counter(), time.process_time(), cpu_seconds(
                sandbox_pid)
            extra: dict[str, Any] = {}
            if phase == "reconcile":
                clock = SystemClock()
                async with sqlite_storage(work / "reconciled.db", clock=clock) as storage:
                    summary = await reconcile(
                        ids, store=storage.ingest, sonic=sonic,
                        router=Router(routes_from_config({})), clock=clock,
                        concurrency=concurrency, rate_per_s=RATE_PER_S)
                    seconds = time.perf_counter() - began
                    extra = {"summary": summary.counts, "failures": summary.failures,
                             "stored": dict(await storage.admin.counts())}
            else:
                await poll_only(ids, sonic, concurrency)
                seconds = time.perf_counter() - began
            results[phase] = {
                "seconds": seconds,
                "per_s": len(ids) / seconds,
                "cpu_pct": (time.process_time() - cpu) / seconds * 100,
                "sandbox_cpu_pct": (cpu_seconds(sandbox_pid) - sandbox_cpu) / seconds * 100,
                **extra,
            }
            print(f"  {phase:15} {results[phase]['per_s']:6.0f} tasks/s  "
                  f"({seconds:.1f} s, this process {results[phase]['cpu_pct']:.0f}% CPU, "
                  f"sandbox {results[phase]['sandbox_cpu_pct']:.0f}%)", flush=True)
    return results


def run(options: argparse.Namespace, work: Path) -> Report:
    count = options.reconcile_tasks or (2000 if options.quick else 10_000)
    concurrency = options.reconcile_concurrency
    argv = [PYTHON, "-m", "receiver", "sandbox", "--host", "127.0.0.1", "--port", "0",
            "--speed", "instant", "--api-key", API_KEY, "--credits", str(count * 20),
            "--log-format", "json"]
    child = Child(argv, env=child_env(), log=work / "sandbox.log")
    try:
        url = sandbox_url(child)
        seeded = httpx.post(f"{url}/_sandbox/seed", timeout=120,
                            json={"count": count, "api_key": API_KEY, "state": "succeeded"})
        seeded.raise_for_status()
        ids: list[str] = seeded.json()["task_ids"]
        results = asyncio.run(phases(url, ids, concurrency, work, child.pid))
    finally:
        child.stop()
    base, rec = results["get-music only"], results["reconcile"]
    stored = rec["stored"]
    complete = (stored.get("tasks") == count and stored.get("deliveries") == count
                and rec["summary"].get("recorded") == count)
    rows = [(phase, count, concurrency, r["per_s"], r["seconds"],
             ratio(r["per_s"], base["per_s"]), ratio(r["per_s"], GOAL_PER_S), r["cpu_pct"],
             r["sandbox_cpu_pct"]) for phase, r in results.items()]
    return Report(
        name=NAME,
        title=f"reconcile: {count:,} seeded tasks, polled and recorded",
        columns=("phase", "tasks", "conc", "tasks/s", "seconds", "÷ get-music only",
                 "÷ goal", "this process CPU %", "sandbox CPU %"),
        rows=rows,
        notes=[
            f"rate limit {RATE_PER_S:g}/s (never reached); goal > {GOAL_PER_S:g} tasks/s.",
            f"reconcile stored {stored.get('tasks')} tasks, {stored.get('deliveries')} "
            f"deliveries, {stored.get('clips')} clips, {stored.get('jobs')} jobs; summary "
            f"{rec['summary']} ({'OK' if complete else 'INCOMPLETE'}).",
        ],
        data={"phases": results, "tasks": count, "concurrency": concurrency},
    )
