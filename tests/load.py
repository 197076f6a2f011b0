"""Load for the reliability tests: senders that retry until answered (with duplicates and
reordering, as providers deliver), the effect handler's config (and a variant of it that fails
on demand), and what the database holds afterwards (its attempt log too), read straight from
the SQLite file or the PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from receiver.context import Event, HandlerContext
from tests.plugins import effect_once
from tests.support import callback, clip, http_client, signed_headers
from tests.waiting import wait_until

PLANTED = "FAIL-NOW"  # while a file of this name is in the effects folder, handlers fail
FAILED = "FAILED"  # where each planted failure is written down: "key attempt pid" a line


def effect_config(path: Path, effects: Path, *, lease_s: float = 2, hold_s: float = 0,
                  concurrency: int | None = None,
                  handler: str = "tests.plugins:effect_once") -> Path:
    """A receiver config: on ``task.succeeded``, ``tests.plugins:effect_once`` (or
    ``handler``, which takes the same options) writes one file per task into ``effects`` (after
    ``hold_s``, so that kills land mid-job). A short lease: the jobs of a killed process are
    taken over after ``lease_s``. ``concurrency``: the jobs a worker runs at once (fewer than
    the default leaves work for every worker)."""
    slots = "" if concurrency is None else f"concurrency = {concurrency}\n"
    path.write_text(
        f"[worker]\nlease_s = {lease_s}\n{slots}\n"
        f'[handlers.effect]\npath = "{handler}"\n\n'
        '[[routes]]\non = ["task.succeeded"]\n'
        f'handlers = [{{ name = "effect", '
        f'options = {{ dir = "{effects}", hold_s = {hold_s} }} }}]\n'
    )
    return path


async def effect_or_planted_failure(event: Event, ctx: HandlerContext) -> None:
    """``tests.plugins:effect_once``, then a failure while a file named :data:`PLANTED` is in
    its folder (the handler of a notification whose answer timed out, say): a job that fails
    at a chosen moment, such as while the database is away. Each failure is written down in
    :data:`FAILED`, with the job's key, its attempt and the worker's pid."""
    await effect_once(event, ctx)
    folder = Path(str(ctx.options["dir"]))
    if (folder / PLANTED).exists():
        with (folder / FAILED).open("a") as handle:
            handle.write(f"{event.key} {event.attempt} {os.getpid()}\n")
        raise RuntimeError("planted failure")


def planted_failures(effects: Path) -> list[tuple[str, int, int]]:
    """The failures :func:`effect_or_planted_failure` made: ``(job key, attempt, pid)``."""
    path = effects / FAILED
    lines = path.read_text().splitlines() if path.exists() else []
    return [(key, int(attempt), int(pid)) for key, attempt, pid in
            (line.split(" ") for line in lines)]


def deliveries(task: str) -> list[tuple[str, bytes]]:
    """A task's two deliveries: its clips streaming, then succeeded."""
    streaming = callback(task, [clip(f"{task}-a", "running"), clip(f"{task}-b", "running")])
    done = callback(task, [clip(f"{task}-a", "succeeded"), clip(f"{task}-b", "succeeded")])
    return [(f"{task}-s", streaming), (f"{task}-c", done)]


@dataclass
class Senders:
    """``count`` senders of ``tasks_each`` tasks each to ``url``, retrying every delivery until
    it is answered 200 (or ``deadline_s`` passes). With ``shuffle``, a task's deliveries come in
    either order; ``duplicates`` is the chance that a delivery is sent again once answered,
    under its own id (a duplicate) or a new one (a provider's redelivery); ``overlap`` is the
    chance that all of a task's deliveries are sent at once, as a provider's retries and next
    event overlap (on several web processes they are recorded side by side). Each sender pauses
    ``pace_s`` after each answer, so that the load lasts long enough for things to happen."""

    url: str
    count: int
    tasks_each: int
    shuffle: bool = False
    duplicates: float = 0.0
    overlap: float = 0.0
    deadline_s: float = 90.0
    pace_s: float = 0.0
    seed: int = 0
    acked: set[str] = field(default_factory=set)  # delivery ids answered 200
    half_way: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _finished: bool = False

    @property
    def tasks(self) -> list[str]:
        return [f"task-{s}-{n}" for s in range(self.count) for n in range(self.tasks_each)]

    @property
    def expected(self) -> int:
        """Distinct delivery ids that must all be acknowledged in the end."""
        return len(self.tasks) * 2

    async def run(self) -> None:
        deadline = time.monotonic() + self.deadline_s
        try:
            async with http_client(timeout=5) as client:
                await asyncio.gather(
                    *(self._sender(client, s, deadline) for s in range(self.count)))
        finally:
            self._finished = True
            self._changed.set()

    async def until_acked(self, count: int) -> None:
        """Until ``count`` deliveries are acknowledged, or the senders are finished."""
        while len(self.acked) < count and not self._finished:
            self._changed.clear()
            await self._changed.wait()

    async def _sender(self, client: httpx.AsyncClient, sender: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + sender)
        for n in range(self.tasks_each):
            batch = deliveries(f"task-{sender}-{n}")
            if self.shuffle:
                rng.shuffle(batch)
            for delivery_id, body in list(batch):
                if rng.random() < self.duplicates:
                    again = delivery_id if rng.random() < 0.5 else f"{delivery_id}-again"
                    batch.append((again, body))
            if rng.random() < self.overlap:
                await asyncio.gather(*(self._send(client, d, b, deadline) for d, b in batch))
            else:
                for delivery_id, body in batch:
                    await self._send(client, delivery_id, body, deadline)

    async def _send(self, client: httpx.AsyncClient, delivery_id: str, body: bytes,
                    deadline: float) -> None:
        if await self._deliver(client, delivery_id, body, deadline):
            self.acked.add(delivery_id)
            self._changed.set()
            if len(self.acked) >= self.expected // 2:
                self.half_way.set()
        if self.pace_s:
            await asyncio.sleep(self.pace_s)  # not a wait: the pace of the load

    async def _deliver(self, client: httpx.AsyncClient, delivery_id: str, body: bytes,
                       deadline: float) -> bool:
        while time.monotonic() < deadline:  # a sender that retries until answered
            try:
                answer = await client.post(self.url, content=body, headers=signed_headers(
                    body, delivery_id=delivery_id))
                if answer.status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)  # not a wait: a sender's pause before it tries again
        return False


@dataclass(frozen=True)
class Stored:
    """What the database holds: delivery ids, task and clip states, and jobs as
    ``(task_id, key, state)``."""

    deliveries: set[str]
    tasks: dict[str, str]
    clips: dict[str, str]
    jobs: list[tuple[str, str, str]]

    def unfinished_jobs(self) -> int:
        return sum(1 for *_, state in self.jobs if state != "done")


_QUERIES = ("SELECT delivery_id FROM deliveries", "SELECT task_id, state FROM tasks",
            "SELECT clip_id, state FROM clips", "SELECT task_id, key, state FROM jobs")


def stored(db: Path | str) -> Stored:
    """Read ``db``: a SQLite file, or a ``postgresql://`` URL."""
    if isinstance(db, str) and db.startswith("postgres"):
        with psycopg.connect(db) as conn:
            rows = [conn.execute(q).fetchall() for q in _QUERIES]
    else:
        with sqlite3.connect(db) as conn:
            rows = [conn.execute(q).fetchall() for q in _QUERIES]
    return Stored(deliveries={r[0] for r in rows[0]}, tasks=dict(rows[1]),
                  clips=dict(rows[2]),
                  jobs=[(r[0], r[1], r[2]) for r in rows[3]])


async def until_jobs_done(db: Path | str, jobs: int, *, timeout_s: float = 60) -> Stored:
    """Read ``db`` until it holds ``jobs`` jobs, all done; what it holds then, or after
    ``timeout_s`` (the caller's assertions say what is missing)."""
    last: list[Stored] = []

    async def done() -> bool:
        last[:] = [await asyncio.to_thread(stored, db)]
        return len(last[0].jobs) >= jobs and not last[0].unfinished_jobs()

    with contextlib.suppress(AssertionError):
        await wait_until(done, within=timeout_s, every=0.1, what=f"{jobs} jobs done")
    return last[0]


def check_effects(effects: Path, tasks: list[str]) -> None:
    """One effect per task, none doubled (see ``tests.plugins.effect_once``)."""
    doubled = effects / "DOUBLED"
    assert not doubled.exists(), doubled.read_text()
    # (a process killed mid-write may leave its staged .tmp file: not an effect)
    made = [p.name for p in effects.iterdir()
            if not p.name.startswith(".") and p.name not in (PLANTED, FAILED)]
    assert sorted(made) == sorted(tasks)


@dataclass(frozen=True)
class Attempt:
    """One row of the job attempt log, with its job's key and state."""

    job_id: int
    key: str
    job_state: str
    run: int
    attempt: int  # the job's counted attempt at this claim
    owner: str
    started_at: float
    finished_at: float | None
    outcome: str | None

    @property
    def pid(self) -> int:
        """The process of the worker that made it (owners read ``host:pid:nonce``)."""
        return int(self.owner.split(":")[1])


_ATTEMPTS = ("SELECT a.job_id, j.key, j.state, a.run, a.attempt, a.owner, a.started_at, "
             "a.finished_at, "
             "a.outcome FROM job_attempts a JOIN jobs j ON j.id = a.job_id "
             "ORDER BY a.job_id, a.run")


def attempts(db: Path | str) -> list[Attempt]:
    """Every attempt of every job in ``db`` (a SQLite file, or a ``postgresql://`` URL)."""
    if isinstance(db, str) and db.startswith("postgres"):
        with psycopg.connect(db) as conn:
            rows = conn.execute(_ATTEMPTS).fetchall()
    else:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(_ATTEMPTS).fetchall()
    return [Attempt(*row) for row in rows]
