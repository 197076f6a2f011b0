"""The database going away under load (issue 18): PostgreSQL stopped abruptly and started again,
a SQLite file's write lock held by another process, while ``serve --workers 2``
(``RECEIVER_WORKER=off``) and two ``worker`` processes take retrying senders' deliveries. While
it is away, the jobs that end fail (``tests.load:effect_or_planted_failure``), and a web process
and a worker are killed with SIGKILL (the worker is started again once the database is back, as
a platform would).

What must hold, each written down when it does not and all reported together: ``serve`` and
the workers never exit, and the killed web process is replaced and serves; ``/readyz`` answers
503 in every web process while the database is away and 200 within :data:`READY_WITHIN_S` after
it is back; every worker that lived through the outage claims again within
:data:`CLAIM_WITHIN_S`, and wrote no warning more than :data:`MAX_REPEATS_PER_S` times a second
meanwhile (no loop spins); every acknowledged delivery is stored, every task, clip and job ends
right, no job is done twice; the attempt log tells what happened: every attempt closed, one
``done`` per job (its last, by the worker that logged ``job_done``), the failed ones ``retry``
(or :data:`LOST` if taken over first) and logged with their job, the killed worker's
:data:`LOST`; and, on PostgreSQL, ``/metrics`` counts the outage and the reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psycopg
import pytest

from tests.load import (
    PLANTED,
    Senders,
    Stored,
    attempts,
    check_effects,
    deliveries,
    effect_config,
    planted_failures,
    until_jobs_done,
)
from tests.processes import (
    Answer,
    ask,
    children,
    done_twice,
    holds_open,
    log_events,
    log_lines,
    logged_at,
    serve,
    start_worker,
    wait_children,
    wait_logged,
)
from tests.services import PostgresCluster
from tests.support import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

# Named after what issue 18 asks for; the code that counts them may name them otherwise: align.
STORE_OUTAGES = "receiver_store_outages_total"  # the database became unreachable
STORE_RECONNECTS = "receiver_store_reconnects_total"  # a connection made again after that
LOST = "lost"  # the outcome of an attempt whose worker died or lost its lease
READY_WITHIN_S = 1.0  # /readyz is 200 in every web process this soon after the database is back
CLAIM_WITHIN_S = 2.0  # every worker starts a job this soon after the database is back
MAX_REPEATS_PER_S = 5  # times a worker writes one warning in any one second of an outage
ADMIN_TOKEN = "outage-admin-token-7c1e9a52b4d8"
START_FAILED = "cannot open database"  # a web process's one line when it could not start


class Fault(Protocol):
    """Takes the database away (:meth:`begin` returns once it is away) and gives it back
    (:meth:`end` returns once it is back)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


@dataclass
class PostgresRestart:
    """PostgreSQL stopped abruptly (``pg_ctl stop -m immediate``), started again after."""

    cluster: PostgresCluster

    def begin(self) -> None:
        self.cluster.stop("immediate")

    def end(self) -> None:
        self.cluster.restart()


@dataclass
class WriteLockHeld:
    """Another process (this one) holds the SQLite file's write lock: ``BEGIN EXCLUSIVE``."""

    path: Path
    conn: sqlite3.Connection | None = None

    def begin(self) -> None:
        # waits for the receiver's own short transactions to let go of the lock first
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        assert self.conn is not None
        self.conn.execute("ROLLBACK")
        self.conn.close()


# -- the processes under test --------------------------------------------------------------------


@dataclass
class Rig:
    """``serve --workers 2`` and two worker processes on ``db``, their logs in ``folder``.
    What breaks is written down in :attr:`broken`; a ``serve`` that exited is started again
    (as a platform would), so that what else breaks is seen in the same run."""

    db: Path | str
    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    broken: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    web: subprocess.Popen[bytes] | None = None
    pool: list[subprocess.Popen[bytes]] = field(default_factory=list)  # the live workers
    log_of: dict[int, Path] = field(default_factory=dict)  # every worker's log, by pid
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _serve_lock: threading.Lock = field(default_factory=threading.Lock)
    _t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.web_log = self.folder / "web.log"
        self.effects = self.folder / "effects"
        # a short lease (the killed worker's jobs are taken over soon after the outage), a held
        # job (the outage lands while jobs run), few slots (a backlog is left for each worker),
        # and jobs that fail while the database is away (their outcome cannot be written)
        self.config = effect_config(self.folder / "receiver.toml", self.effects, lease_s=2,
                                    hold_s=0.2, concurrency=2,
                                    handler="tests.load:effect_or_planted_failure")
        self.effects.mkdir()
        metrics = self.folder / "metrics"  # one folder: a scrape sums every process
        metrics.mkdir()
        self.env = {"RECEIVER_WORKER": "off", "RECEIVER_ADMIN_TOKEN": ADMIN_TOKEN,
                    "PROMETHEUS_MULTIPROC_DIR": str(metrics), **self.env}

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self._t0:6.2f} s  {what}")

    @property
    def logs(self) -> list[Path]:
        return [self.web_log, *self.log_of.values()]

    @contextlib.contextmanager
    def running(self) -> Iterator[Rig]:
        with self._stack:
            self.start_web()
            wait_children(self.serve_pid, 2)
            self._stack.callback(self._stop_workers)
            for _ in range(2):
                self.start_worker()
            for proc in self.pool:
                wait_logged(self.log_of[proc.pid], "worker_started", proc)
            self.note("serve and workers started")
            yield self

    def start_web(self) -> None:
        self.web = self._stack.enter_context(serve(
            self.db, self.port, self.web_log, config=self.config, args=["--workers", "2"],
            extra_env=self.env))

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.folder / f"worker-{len(self.log_of)}.log"
        proc = start_worker(self.db, log, self.config, self.env)
        self.pool.append(proc)
        self.log_of[proc.pid] = log
        return proc

    @property
    def serve_pid(self) -> int:
        assert self.web is not None
        return self.web.pid

    def failed_starts(self) -> int:
        """How many times a web process said it could not start."""
        return _text(self.web_log).count(START_FAILED)

    def check_serve(self, when: str) -> None:
        """Write down a ``serve`` that exited, and start it again."""
        with self._serve_lock:  # (called from a watchdog's thread and from the test)
            self._check_serve(when)

    def _check_serve(self, when: str) -> None:
        assert self.web is not None
        code = self.web.poll()
        if code is None:
            return
        said = [line for line in _text(self.web_log).splitlines()
                if "web_process" in line or "sonic-receiver: error" in line]
        self.broken.append(f"serve exited with status {code} ({when}); it said:\n"
                           + "\n".join(said[-6:]))
        self.note(f"serve exited with status {code}; started again")
        self.start_web()

    def _stop_workers(self) -> None:
        for proc in self.pool:
            if proc.poll() is None:
                proc.terminate()
        codes = {proc.pid: proc.wait(timeout=60) for proc in self.pool}
        self.note(f"workers stopped: {codes}")
        if set(codes.values()) - {0}:
            self.broken.append(f"workers did not stop cleanly on SIGTERM: {codes}")


def _tail(path: Path, lines: int = 12) -> str:
    return "\n".join(_text(path).splitlines()[-lines:])


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# -- /readyz, asked of every web process -------------------------------------------------------


@dataclass
class Probes:
    """``/readyz`` asked over and over by a few clients at once, each time on a new connection
    (so that both web processes are reached), every answer kept with when it came."""

    rig: Rig
    clients: int = 3
    answers: list[tuple[float, Answer]] = field(default_factory=list)

    async def until(self, done: Callable[[], bool], *, within: float, what: str) -> None:
        """Ask until ``done()`` holds (it reads :attr:`answers`); at most ``within`` seconds."""
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                answer = await asyncio.to_thread(ask, self.rig.port, "/readyz",
                                                 children(self.rig.serve_pid))
                self.answers.append((time.time(), answer))
                if answer.status is None:
                    await asyncio.sleep(0.05)  # not a wait: a client's pause before asking again

        tasks = [asyncio.create_task(client()) for _ in range(self.clients)]
        try:
            await wait_until(done, within=within, every=0.02, what=what,
                             detail=lambda: f"answers (pid, status): {self.summary(0)}")
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    def since(self, at: float) -> list[tuple[float, Answer]]:
        return [(t, a) for t, a in self.answers if t >= at]

    def summary(self, at: float, until: float = float("inf")) -> str:
        return str(Counter((a.pid, a.status) for t, a in self.since(at) if t < until))


# -- the scenario --------------------------------------------------------------------------------


@dataclass
class Outage:
    """What the scenario did and saw (times in Unix seconds)."""

    began: float = 0.0
    back: float = 0.0
    killed_web: int = 0
    killed_worker: int = 0
    replacement_worker: int = 0
    stored: Stored | None = None


async def _outage_under_load(rig: Rig, fault: Fault, load: Senders, *, down_s: float) -> Outage:
    """Once a quarter of the deliveries are acknowledged, the database goes away: every web
    process must answer /readyz 503; one web process and one worker are killed (SIGKILL); the
    database comes back after ``down_s``, and not before the killed web process's replacement
    has run into the outage (it said it could not start, or it waits for the SQLite file).
    Then the killed worker is started again, and /readyz and the load are followed to the end."""
    out = Outage()
    probes = Probes(rig)
    traffic = asyncio.create_task(load.run())
    watchdog = asyncio.create_task(_restart_serve_when_it_exits(rig, out))
    await load.until_acked(load.expected // 4)
    before = await asyncio.to_thread(wait_children, rig.serve_pid, 2)

    out.began = time.time()  # (the processes may see it go while begin() waits for it to go)
    (rig.effects / PLANTED).touch()  # the jobs that end while the database is away fail
    await asyncio.to_thread(fault.begin)
    rig.note(f"database away; {len(load.acked)} of {load.expected} deliveries acknowledged")
    try:
        await probes.until(lambda: {a.pid for _, a in probes.since(out.began)
                                    if a.status == 503} >= set(before),
                           within=10, what="503 from /readyz in both web processes")
    except AssertionError as exc:
        rig.broken.append(f"/readyz while the database is away: {exc}")

    failed_starts = rig.failed_starts()
    out.killed_web = before[0]
    os.kill(out.killed_web, signal.SIGKILL)
    victim = rig.pool.pop(0)
    victim.kill()
    await asyncio.to_thread(victim.wait)
    out.killed_worker = victim.pid
    rig.note(f"/readyz so far {probes.summary(out.began)}; killed web process "
             f"{out.killed_web} and worker {out.killed_worker}")

    def replacement_ran_into_it() -> bool:
        if rig.failed_starts() > failed_starts:
            return True  # it could not open the database, and said so
        if isinstance(rig.db, Path):  # or it waits for the SQLite file's lock
            return any(holds_open(pid, rig.db) for pid in children(rig.serve_pid)
                       if pid not in before)
        return False

    def long_enough() -> bool:
        if time.time() - out.began < down_s:
            return False
        return replacement_ran_into_it() or rig.web is None or rig.web.poll() is not None

    try:
        # the outage lasts; every answer meanwhile is kept
        await probes.until(long_enough, within=down_s + 10, what="the outage to last")
    except AssertionError:
        rig.note("the killed web process's replacement did not run into the outage")

    (rig.effects / PLANTED).unlink()
    await asyncio.to_thread(fault.end)
    out.back = time.time()
    out.replacement_worker = rig.start_worker().pid
    rig.note(f"database back after {out.back - out.began:.2f} s (worker "
             f"{out.replacement_worker} started); /readyz meanwhile "
             f"{probes.summary(out.began, out.back)}")
    during = [a for t, a in probes.answers if out.began <= t < out.back]
    if any(a.status == 200 for a in during):
        rig.broken.append(f"/readyz answered 200 while the database was away: "
                          f"{Counter((a.pid, a.status) for a in during)}")
    await _follow_readiness(rig, probes, out, before)

    await traffic
    rig.note(f"senders done: {len(load.acked)} delivery ids acknowledged ({load.expected} "
             "distinct ones required)")
    out.stored = await until_jobs_done(rig.db, len(load.tasks), timeout_s=30)
    rig.note(f"jobs: {Counter(state for *_, state in out.stored.jobs)}")
    watchdog.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watchdog
    await asyncio.to_thread(rig.check_serve, "at the end")
    replacement = next(p for p in rig.pool if p.pid == out.replacement_worker)
    await asyncio.to_thread(wait_logged, rig.log_of[replacement.pid], "worker_started",
                            replacement)
    return out


async def _restart_serve_when_it_exits(rig: Rig, out: Outage) -> None:
    """Until cancelled: a ``serve`` that exited is written down and started again, once the
    database is back (before, it could not start)."""
    while True:
        await wait_until(lambda: rig.web is not None and rig.web.poll() is not None,
                         within=24 * 3600, every=0.05, what="serve to exit")
        exited = time.time()
        await wait_until(lambda: bool(out.back), within=24 * 3600, every=0.05,
                         what="the database to be back")
        when = ("while the database was away" if exited < out.back else
                f"{exited - out.back:.1f} s after the database was back")
        await asyncio.to_thread(rig.check_serve, when)


async def _follow_readiness(rig: Rig, probes: Probes, out: Outage, before: list[int]) -> None:
    """/readyz after the database is back: 200 from every web process that lived through the
    outage within READY_WITHIN_S, never anything else after that, and the killed one replaced
    by one that answers 200."""

    def every_process_ready() -> bool:
        now = children(rig.serve_pid)
        ready = {a.pid for _, a in probes.since(out.back) if a.status == 200}
        return len(now) == 2 and out.killed_web not in now and set(now) <= ready

    try:
        await probes.until(every_process_ready, within=30,
                           what="200 from /readyz in both web processes, the killed one replaced")
    except AssertionError as exc:
        rig.broken.append(f"after the database came back: {exc}")
    first: dict[int, float] = {}
    for t, a in probes.since(out.back):
        if a.status == 200 and a.pid is not None:
            first.setdefault(a.pid, t - out.back)
    rig.note(f"/readyz after: {probes.summary(out.back)}; first 200 by pid, seconds after the "
             f"database was back: { {pid: round(s, 3) for pid, s in first.items()} }")
    lived = set(before) - {out.killed_web}
    for pid in lived & set(children(rig.serve_pid)):  # (a serve that exited is written down)
        if first.get(pid, float("inf")) > READY_WITHIN_S:
            rig.broken.append(f"web process {pid} answered /readyz 200 only "
                              f"{first.get(pid, float('inf')):.2f} s after the database was "
                              f"back (> {READY_WITHIN_S} s)")
    late = Counter((a.pid, a.status) for _, a in probes.since(out.back + READY_WITHIN_S)
                   if a.status != 200)
    if late:
        rig.broken.append(f"/readyz not 200 more than {READY_WITHIN_S} s after the database was "
                          f"back, (pid, status): {late}")


def _check_workers(rig: Rig, out: Outage) -> None:
    """Every worker that lived through the outage is alive and started a job within
    CLAIM_WITHIN_S of the database coming back; no worker's loop spun meanwhile (one line
    written again and again: each time, it tried at once again)."""
    for proc in rig.pool:
        if proc.poll() is not None:
            rig.broken.append(f"worker {proc.pid} exited with status {proc.returncode}:\n"
                              + _tail(rig.log_of[proc.pid]))
    for pid, log in rig.log_of.items():
        started = [logged_at(e) for e in log_events([log], "job_started")
                   if logged_at(e) >= out.back]
        first = min(started, default=float("inf")) - out.back
        rig.note(f"worker {pid}: first job_started {first:.3f} s after the database was back")
        if pid not in (out.killed_worker, out.replacement_worker) and first > CLAIM_WITHIN_S:
            rig.broken.append(f"worker {pid} started no job within {CLAIM_WITHIN_S} s of the "
                              f"database coming back (the first after {first:.2f} s)")
        said = Counter((str(e.get("event"))[:60], int(logged_at(e))) for e in log_lines([log])
                       if e.get("level") in ("warning", "error") and "timestamp" in e
                       and out.began <= logged_at(e) < out.back)
        spun: dict[str, int] = {}
        for (event, _), n in said.items():
            if n > MAX_REPEATS_PER_S:
                spun[event] = max(n, spun.get(event, 0))
        if spun:
            rig.broken.append(f"worker {pid} wrote one warning more than {MAX_REPEATS_PER_S} "
                              f"times in one second while the database was away: {spun}")


def _check_stored(rig: Rig, load: Senders, final: Stored) -> None:
    every = {d for task in load.tasks for d, _ in deliveries(task)}
    if not every <= load.acked:
        rig.broken.append(f"not acknowledged in time: {sorted(every - load.acked)[:5]}")
    if not load.acked <= final.deliveries:
        lost = sorted(load.acked - final.deliveries)
        rig.broken.append(f"acknowledged but not stored: {len(lost)}, e.g. {lost[:5]}")
    wrong = {t: s for t, s in final.tasks.items() if s != "succeeded"}
    if wrong or len(final.tasks) != len(load.tasks):
        rig.broken.append(f"tasks: {len(final.tasks)} stored, not succeeded: {wrong}")
    if set(final.clips.values()) != {"succeeded"} or len(final.clips) != 2 * len(load.tasks):
        rig.broken.append(f"clips: {Counter(final.clips.values())}")
    if sorted(task for task, *_ in final.jobs) != sorted(load.tasks):
        rig.broken.append(f"not one job per task: {len(final.jobs)} jobs")
    if {state for *_, state in final.jobs} != {"done"}:
        rig.broken.append(f"jobs not done: {Counter(state for *_, state in final.jobs)}")
    if twice := done_twice(rig.logs):
        rig.broken.append(f"jobs done twice: {twice[:5]}")
    try:
        check_effects(rig.effects, load.tasks)
    except AssertionError as exc:
        rig.broken.append(f"effects: {exc}")


def _check_attempts(rig: Rig, out: Outage) -> None:
    """Every attempt closed with its true outcome: one ``done`` per job, its last, made by the
    worker that logged ``job_done`` for it; the killed worker's unfinished ones LOST (or the
    outcome it was writing when the database went away, if that write reached the server)."""
    rows = attempts(rig.db)
    rig.note(f"attempts: {len(rows)}, by outcome: {Counter(a.outcome for a in rows)}")
    unclosed = [a for a in rows if a.finished_at is None]
    if unclosed:
        rig.broken.append(f"{len(unclosed)} attempts never closed (finished_at IS NULL), by "
                          f"worker: {Counter(a.pid for a in unclosed)}, e.g. {unclosed[:2]}")
    done_by = {str(e.get("job_key")): pid for pid, log in rig.log_of.items()
               for e in log_events([log], "job_done")}
    runs: dict[int, list[int]] = {}
    for index, a in enumerate(rows):
        runs.setdefault(a.job_id, []).append(index)
    untrue = []
    for indexes in runs.values():
        log = [rows[i] for i in indexes]
        done = [a for a in log if a.outcome == "done"]
        last = max(log, key=lambda a: a.run)
        if len(done) != 1 or done[0] is not last or done_by.get(last.key) != last.pid:
            untrue.append([(a.run, a.pid, a.outcome) for a in log]
                          + [f"job_done logged by {done_by.get(last.key)}"])
    if untrue:
        rig.broken.append(f"{len(untrue)} jobs whose attempt log is not what happened (one "
                          f"'done', the last, by the worker that logged job_done), e.g. "
                          f"(run, worker, outcome): {untrue[:3]}")
    killed_log = rig.log_of[out.killed_worker]
    # Cut off: started and not ended by the worker itself. An end is logged only once its
    # outcome is written, so a job that failed just before the database went away (its 'retry'
    # written) and was logged 'job_retrying' was not cut off.
    ended = {e["job_id"] for event in ("job_done", "job_retrying", "job_retry_later", "job_dead")
             for e in log_events([killed_log], event)}
    cut = {e["job_id"] for e in log_events([killed_log], "job_started")} - ended
    cut_off = [a for a in rows if a.pid == out.killed_worker and a.job_id in cut]
    # A write the worker saw fail as the database went away may still have committed (the
    # server had it; its answer was lost with the connection): such an attempt is closed with
    # the outcome the worker was writing, which is as true as LOST.
    unanswered = {(e["job_id"], e["outcome"])
                  for e in log_events([killed_log], "job_outcome_not_written")}
    rig.note(f"the killed worker's jobs cut off: {len(cut)}, their attempts' outcomes: "
             f"{Counter(a.outcome for a in cut_off)}; outcomes it could not write: "
             f"{sorted(unanswered)}")
    if not cut:
        rig.broken.append("the killed worker had no job running: its attempts show nothing")
    wrong = [a for a in cut_off
             if a.outcome != LOST and (a.job_id, a.outcome) not in unanswered]
    if wrong:
        rig.broken.append(f"the killed worker's cut-off attempts are not closed as {LOST!r} "
                          f"(nor as an outcome it was writing when the database went away): "
                          f"{Counter(a.outcome for a in cut_off)}")


def _check_failures(rig: Rig, out: Outage) -> None:
    """A job that failed while the database was away left a trace: its worker logged it with
    the job (``job_retrying``, or that the outcome could not be written yet), and its attempt
    is closed as ``retry`` (or LOST, when its lease ran out in the outage and another worker
    took the job over before the outcome could be written); no task's exception went
    unretrieved."""
    failures = planted_failures(rig.effects)
    rig.note(f"jobs failed while the database was away (key, attempt, pid): {failures}")
    lived = [f for f in failures if f[2] != out.killed_worker]
    if not lived:
        rig.broken.append("no job of a worker that lived through the outage failed while the "
                          "database was away: what follows a failure was not tried")
    rows = attempts(rig.db)
    untraced, untrue = [], []
    for key, attempt, pid in lived:
        said = [e.get("event") for e in log_lines([rig.log_of[pid]])
                if e.get("job_key") == key and e.get("level") in ("warning", "error")]
        if not said:
            untraced.append(key)
        closed = [a.outcome for a in rows if a.key == key and a.pid == pid
                  and a.attempt == attempt]
        if closed not in (["retry"], [LOST]):
            untrue.append((key, attempt, closed))
    if untraced:
        rig.broken.append(f"{len(untraced)} jobs failed while the database was away and their "
                          f"worker logged nothing about them (no job_retrying): {untraced[:3]}")
    if untrue:
        rig.broken.append(f"{len(untrue)} attempts that failed while the database was away are "
                          f"not closed as 'retry' (or {LOST!r}), (key, attempt, outcomes): "
                          f"{untrue[:3]}")
    unretrieved = [log.name for log in rig.logs
                   if "Task exception was never retrieved" in _text(log)]
    if unretrieved:
        rig.broken.append(f"'Task exception was never retrieved' in {unretrieved}")


def _check_metrics(rig: Rig) -> None:
    """/metrics counts the outage and the reconnects (summed over labels and processes)."""
    text = httpx.get(f"http://127.0.0.1:{rig.port}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    for name in (STORE_OUTAGES, STORE_RECONNECTS):
        values = [float(found.group(1)) for found in
                  re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
        rig.note(f"/metrics {name}: {sum(values) if values else 'absent'}")
        if sum(values) <= 0:
            rig.broken.append(f"/metrics: {name} is {sum(values) if values else 'absent'} "
                              "after an outage and reconnects")


def _verdict(rig: Rig) -> None:
    timeline = "\n".join(rig.timeline)
    print(f"\n{timeline}")  # shown with -s, and by pytest for a failed test
    assert not rig.broken, ("\n\n".join(rig.broken) + f"\n\ntimeline:\n{timeline}"
                            f"\nlogs in {rig.folder}")


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_restartable_cluster_keeps_its_data_and_port_across_an_abrupt_stop(
    pg_restartable: PostgresCluster,
) -> None:
    """The fault itself: pg_ctl stop -m immediate takes the server away, start brings it back
    on the same port with every acknowledged commit."""
    dsn = pg_restartable.server.admin_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    pg_restartable.stop("immediate")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    pg_restartable.restart()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]


@pytest.mark.postgres
def test_postgresql_restarted_under_load_with_a_web_process_and_a_worker_killed_meanwhile(
    pg_restartable: PostgresCluster, tmp_path: Path,
) -> None:
    """PostgreSQL stopped abruptly for ~3.5 s under load, a web process and a worker killed while
    it is down: nothing else exits, nothing acknowledged is lost, /readyz and the workers are
    back at once, the attempt log is true, /metrics counts the outage and the reconnects."""
    rig = Rig(pg_restartable.server.admin_dsn, tmp_path, env={})
    with rig.running():
        load = Senders(f"http://127.0.0.1:{rig.port}/webhooks/sonic", 8, 25, shuffle=True,
                       duplicates=0.5, overlap=0.5, seed=18, pace_s=0.03, deadline_s=45)
        # 3.5 s: past the second of psycopg_pool's reconnection attempts (1 s, then 2 s more,
        # ±10%), so that a pool left to its backoff tries next ~3 s after the server is back
        out = asyncio.run(_outage_under_load(rig, PostgresRestart(pg_restartable), load,
                                             down_s=3.5))
        _check_workers(rig, out)
        _check_metrics(rig)
    assert out.stored is not None
    _check_stored(rig, load, out.stored)
    _check_attempts(rig, out)
    _check_failures(rig, out)
    _verdict(rig)


def test_a_sqlite_file_taken_away_under_load_with_a_web_process_and_a_worker_killed_meanwhile(
    tmp_path: Path,
) -> None:
    """A SQLite file unwritable for ~4 s under load (its write lock held by another process), a
    web process and a worker killed meanwhile: the same promises as on PostgreSQL but /metrics.
    A write waits RECEIVER_DB_LOCK_TIMEOUT_S for the lock (1 s here, so that /readyz answers
    within the outage), then fails: 503. (A folder made unwritable is no outage to play: in WAL
    mode, with the -wal and -shm files in place, writes need no new file, and root's writes
    ignore permissions anyway.)"""
    db = tmp_path / "data" / "r.db"
    db.parent.mkdir()
    rig = Rig(db, tmp_path, env={"RECEIVER_DB_LOCK_TIMEOUT_S": "1"})
    with rig.running():
        load = Senders(f"http://127.0.0.1:{rig.port}/webhooks/sonic", 6, 20, shuffle=True,
                       duplicates=0.5, overlap=0.5, seed=19, pace_s=0.03, deadline_s=45)
        out = asyncio.run(_outage_under_load(rig, WriteLockHeld(db), load, down_s=4))
        _check_workers(rig, out)
    assert out.stored is not None
    _check_stored(rig, load, out.stored)
    _check_attempts(rig, out)
    _check_failures(rig, out)
    _verdict(rig)
