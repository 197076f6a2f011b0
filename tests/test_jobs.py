"""Jobs: written with the delivery, claimed with a lease, retried with backoff, and dead after
the last attempt; the leases on every backend, the rest on a real SQLite file."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.context import Event, HandlerContext
from receiver.errors import StoreError
from receiver.jobs import Job, JobState, PermanentError, Retry, RetryPolicy
from receiver.registry import Handler, Registry
from receiver.routing import HandlerRef, Route, Router
from receiver.runtime import Runtime
from receiver.signatures import Scheme, Verified
from receiver.storage.queue import JobQueue
from receiver.storage.roles import Storage, sqlite_storage
from receiver.testing import deliver, handler_runtime
from receiver.webhook import make_delivery
from receiver.worker import Worker
from tests.support import app_client, callback, clip, post_signed, settings_for
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

DONE = callback("t-1", [clip("a", "succeeded", tags="pop, dreamy"), clip("b", "succeeded")])
STREAMING = callback("t-1", [clip("a", "running"), clip("b", "running")])
FAILED = callback("t-1", [], message="policy")
ROUTES = [
    {"name": "on-done", "on": ["task.succeeded"], "handlers": ["record"]},
    {"name": "on-fail", "on": ["task.failed"], "handlers": ["record"]},
]


class Recorder:
    """A handler that records its calls and behaves as told for the next ones."""

    def __init__(self) -> None:
        self.calls: list[Event] = []
        self.plan: list[BaseException | None] = []

    async def __call__(self, event: Event, ctx: HandlerContext) -> None:
        self.calls.append(event)
        outcome = self.plan.pop(0) if self.plan else None
        if outcome is not None:
            raise outcome


def recorder_handler(recorder: Recorder) -> Handler:
    async def record(event: Event, ctx: HandlerContext) -> None:
        await recorder(event, ctx)

    return record


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def runtime(tmp_path: Path, recorder: Recorder) -> AsyncIterator[Runtime]:
    clock = FakeClock(1_000_000.0)
    async with handler_runtime(
        tmp_path, handlers={"record": recorder_handler(recorder)}, routes=ROUTES, clock=clock,
        retry=RetryPolicy(max_attempts=3, schedule=(10, 100), jitter=0.0),
    ) as rt:
        yield rt


def clock_of(rt: Runtime) -> FakeClock:
    assert isinstance(rt.clock, FakeClock)
    return rt.clock


def worker_of(rt: Runtime) -> Worker:
    assert rt.worker is not None
    return rt.worker


async def test_a_transition_matching_a_route_writes_one_job_in_the_same_transaction(
    runtime: Runtime,
) -> None:
    result = await deliver(runtime, DONE, event="song.completed", delivery_id="d1")
    assert result.jobs == 1
    [job] = await runtime.storage.admin.list_jobs()
    assert (job.key, job.state, job.trigger, job.delivery_id) == (
        "t-1/task.succeeded/on-done/record", JobState.QUEUED, "task.succeeded", "d1")


async def test_duplicates_and_late_events_create_no_second_job(
    runtime: Runtime, recorder: Recorder
) -> None:
    await deliver(runtime, DONE, event="song.completed", delivery_id="d1")
    await deliver(runtime, DONE, event="song.completed", delivery_id="d1")  # same id
    await deliver(runtime, DONE, event="song.completed", delivery_id="d2")  # resent, new id
    await deliver(runtime, STREAMING, event="song.streaming", delivery_id="d0")  # late
    assert len(await runtime.storage.admin.list_jobs()) == 1
    assert await worker_of(runtime).run_once() == 1
    assert await worker_of(runtime).run_once() == 0
    assert len(recorder.calls) == 1


async def test_a_successful_handler_finishes_the_job(runtime: Runtime, recorder: Recorder) -> None:
    await deliver(runtime, DONE, event="song.completed")
    await worker_of(runtime).run_once()
    [job] = await runtime.storage.admin.list_jobs()
    assert (job.state, job.attempts) == (JobState.DONE, 1)
    assert recorder.calls[0].attempt == 1
    assert recorder.calls[0].key == job.key


async def test_failures_back_off_on_the_schedule_then_the_job_dies(
    runtime: Runtime, recorder: Recorder
) -> None:
    recorder.plan = [RuntimeError("boom 1"), RuntimeError("boom 2"), RuntimeError("boom 3")]
    await deliver(runtime, DONE, event="song.completed")
    clock, worker = clock_of(runtime), worker_of(runtime)

    await worker.run_once()
    [job] = await runtime.storage.admin.list_jobs()
    assert (job.state, job.last_error) == (JobState.RETRYING, "RuntimeError: boom 1")
    assert job.run_after == clock.now() + 10
    clock.advance(9.9)
    assert await worker.run_once() == 0  # not due yet
    clock.advance(0.1)
    assert await worker.run_once() == 1
    [job] = await runtime.storage.admin.list_jobs()
    assert job.run_after == clock.now() + 100
    clock.advance(100)
    await worker.run_once()
    [job] = await runtime.storage.admin.list_jobs(state=JobState.DEAD)
    assert (job.attempts, job.last_error) == (3, "RuntimeError: boom 3")
    clock.advance(10_000)
    assert await worker.run_once() == 0  # dead stays dead, and visible
    assert len(recorder.calls) == 3


async def test_jitter_spreads_the_delay_within_its_bounds() -> None:
    policy = RetryPolicy(schedule=(10.0, 20.0), jitter=0.2)
    rng = random.Random(7)
    delays = {round(policy.delay(1, rng), 6) for _ in range(50)}
    assert len(delays) > 40
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert 16.0 <= policy.delay(9, rng) <= 24.0  # the last step repeats


async def test_retry_later_waits_as_asked_without_using_an_attempt(
    runtime: Runtime, recorder: Recorder
) -> None:
    recorder.plan = [Retry("rate limited", after=42, counted=False)]
    await deliver(runtime, DONE, event="song.completed")
    await worker_of(runtime).run_once()
    [job] = await runtime.storage.admin.list_jobs()
    assert (job.state, job.attempts, job.last_error) == (JobState.RETRYING, 0, "rate limited")
    assert job.run_after == clock_of(runtime).now() + 42


async def test_a_counted_retry_waits_as_asked_and_the_last_attempt_dies(
    runtime: Runtime, recorder: Recorder
) -> None:
    recorder.plan = [Retry("upstream busy", after=30)] * 10
    await deliver(runtime, DONE, event="song.completed")
    await worker_of(runtime).run_once()
    [job] = await runtime.storage.admin.list_jobs()
    assert (job.state, job.attempts, job.last_error) == (JobState.RETRYING, 1, "upstream busy")
    assert job.run_after == clock_of(runtime).now() + 30
    while job.state is JobState.RETRYING:
        clock_of(runtime).advance(30)
        await worker_of(runtime).run_once()
        [job] = await runtime.storage.admin.list_jobs()
    assert (job.state, job.attempts) == (JobState.DEAD, job.max_attempts)
    assert job.last_error == f"gave up after {job.max_attempts} attempts: upstream busy"


async def test_permanent_error_kills_the_job_at_once(runtime: Runtime, recorder: Recorder) -> None:
    recorder.plan = [PermanentError("no such clip")]
    await deliver(runtime, DONE, event="song.completed")
    await worker_of(runtime).run_once()
    [job] = await runtime.storage.admin.list_jobs()
    assert (job.state, job.attempts) == (JobState.DEAD, 1)
    assert job.last_error == "PermanentError: no such clip"


async def test_a_job_runs_after_the_unfinished_jobs_it_waits_for(tmp_path: Path) -> None:
    """A route's ``after``: the job is postponed, its attempt given back, while the job it
    waits for is unfinished, and runs once that one is done."""
    ran: list[str] = []

    async def first(event: Event, ctx: HandlerContext) -> None:
        ran.append("first")
        if ran.count("first") == 1:
            raise Retry("not yet", after=10)

    async def second(event: Event, ctx: HandlerContext) -> None:
        ran.append("second")

    routes = [{"on": "task.succeeded", "handlers": [
        "first", {"name": "second", "after": ["first"], "after_wait_s": 100}]}]
    async with handler_runtime(tmp_path, handlers={"first": first, "second": second},
                               routes=routes) as rt:
        await deliver(rt, DONE, event="song.completed")
        await worker_of(rt).run_once()
        jobs = {j.handler: j for j in await rt.storage.admin.list_jobs()}
        assert ran == ["first"]
        assert (jobs["second"].state, jobs["second"].attempts) == (JobState.RETRYING, 0)
        while any(j.state is not JobState.DONE for j in jobs.values()):
            clock_of(rt).set(min(j.run_after for j in jobs.values()
                                 if j.state is not JobState.DONE))
            await worker_of(rt).run_once()
            jobs = {j.handler: j for j in await rt.storage.admin.list_jobs()}
    assert ran == ["first", "first", "second"]
    assert jobs["second"].attempts == 1


async def test_a_job_stops_waiting_when_its_wait_runs_out(tmp_path: Path) -> None:
    ran: list[str] = []

    async def stuck(event: Event, ctx: HandlerContext) -> None:
        raise Retry("never ready", after=30, counted=False)

    async def second(event: Event, ctx: HandlerContext) -> None:
        ran.append("second")

    routes = [{"on": "task.succeeded", "handlers": [
        "stuck", {"name": "second", "after": ["stuck"], "after_wait_s": 20}]}]
    async with handler_runtime(tmp_path, handlers={"stuck": stuck, "second": second},
                               routes=routes) as rt:
        await deliver(rt, DONE, event="song.completed")
        start = clock_of(rt).now()
        while not ran:
            await worker_of(rt).run_once()
            clock_of(rt).advance(1)
        assert 20 <= clock_of(rt).now() - start <= 23  # its wait, and one step of looking


async def test_failed_tasks_route_to_their_own_handlers(runtime: Runtime) -> None:
    await deliver(runtime, STREAMING, event="song.streaming")
    await deliver(runtime, FAILED, event="song.failed")
    [job] = await runtime.storage.admin.list_jobs()
    assert job.trigger == "task.failed"


async def _one_job(store: Storage, tmp_path: Path) -> None:
    router = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                           handlers=(HandlerRef(name="h"),))])
    delivery = make_delivery(body=DONE, headers={}, task_id_hint=None, received_at=100.0,
                             verified=Verified(scheme=Scheme.NONE, timestamp=None,
                                               signed_content=DONE))
    assert (await store.ingest.record_delivery(delivery, router=router)).jobs == 1


async def test_an_expired_lease_makes_a_crashed_job_claimable_again(
    store: Storage, tmp_path: Path
) -> None:
    await _one_job(store, tmp_path)
    [taken] = await store.jobs.claim_jobs(owner="w1", limit=5, now=100.0, lease_s=60)
    # w1 "crashes": it never renews, finishes or releases. Before the lease ends, nobody
    # else may take the job; after, another worker does, and the attempt counts.
    assert await store.jobs.claim_jobs(owner="w2", limit=5, now=159.0, lease_s=60) == []
    assert await store.jobs.next_due() == 160.0
    [again] = await store.jobs.claim_jobs(owner="w2", limit=5, now=160.0, lease_s=60)
    assert (again.id, again.attempts, again.lease_owner) == (taken.id, 2, "w2")
    # the crashed worker's late writes are refused: it lost the lease
    assert not await store.jobs.finish_job(taken.id, owner="w1", now=161.0)
    assert await store.jobs.finish_job(taken.id, owner="w2", now=161.0)
    [done] = await store.admin.list_jobs(state=JobState.DONE)
    assert done.id == taken.id


async def test_renewing_a_lease_keeps_the_job(store: Storage, tmp_path: Path) -> None:
    await _one_job(store, tmp_path)
    [job] = await store.jobs.claim_jobs(owner="w1", limit=5, now=100.0, lease_s=60)
    assert await store.jobs.renew_lease(job.id, owner="w1", until=220.0, now=150.0)
    assert await store.jobs.claim_jobs(owner="w2", limit=5, now=200.0, lease_s=60) == []
    assert not await store.jobs.renew_lease(job.id, owner="w2", until=300.0, now=150.0)


async def test_release_hands_running_jobs_back_without_charging_the_attempt(
    store: Storage, tmp_path: Path
) -> None:
    await _one_job(store, tmp_path)
    await store.jobs.claim_jobs(owner="w1", limit=5, now=100.0, lease_s=60)
    assert await store.jobs.release_jobs(owner="w1", now=101.0) == 1
    [job] = await store.jobs.claim_jobs(owner="w2", limit=5, now=101.0, lease_s=60)
    assert job.attempts == 1


async def test_stop_waits_for_running_jobs_then_releases_what_is_left(tmp_path: Path) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(event: Event, ctx: HandlerContext) -> None:
        started.set()
        await release.wait()

    async def stuck(event: Event, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.Event().wait()  # never returns

    for handler, finishes in ((slow, True), (stuck, False)):
        async with handler_runtime(
            tmp_path / handler.__name__, handlers={"h": handler},
            routes=[{"on": ["task.succeeded"], "handlers": ["h"]}],
        ) as rt:
            worker = worker_of(rt)
            await deliver(rt, DONE, event="song.completed")
            running = asyncio.create_task(worker.run())
            await asyncio.wait_for(started.wait(), 5)
            if finishes:
                asyncio.get_running_loop().call_later(0.05, release.set)
            await worker.stop(deadline_s=2.0 if finishes else 0.1)
            await running
            [job] = await rt.storage.admin.list_jobs()
            if finishes:
                assert job.state is JobState.DONE
            else:  # handed back: queued, the attempt not charged
                assert (job.state, job.attempts, job.lease_owner) == (JobState.QUEUED, 0, None)
        started.clear()


async def test_a_running_worker_commits_its_successes_and_runs_every_job_once(
    tmp_path: Path,
) -> None:
    ran: list[str] = []
    every = asyncio.Event()

    async def h(event: Event, ctx: HandlerContext) -> None:
        ran.append(event.task_id)
        await asyncio.sleep(0)  # not a wait: it yields, so that the three slots interleave
        if len(ran) == 40:
            every.set()

    async with handler_runtime(
        tmp_path, handlers={"h": h}, routes=[{"on": ["task.succeeded"], "handlers": ["h"]}],
        worker_concurrency=3,
    ) as rt:
        for n in range(40):
            await deliver(rt, callback(f"t-{n}", [clip("a", "succeeded")]),
                          event="song.completed")
        worker = worker_of(rt)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(every.wait(), 30)
        await worker.stop(deadline_s=5.0)
        await running
        jobs = await rt.storage.admin.list_jobs()
        assert sorted(ran) == sorted(f"t-{n}" for n in range(40))
        assert {(j.state, j.attempts, j.lease_owner) for j in jobs} == {(JobState.DONE, 1, None)}

        rows = [await rt.storage.admin.job_attempts(j.id) for j in jobs]
        assert {(a.owner, a.outcome) for attempts in rows for a in attempts} == {
            (worker.owner, "done")}
        assert all(len(attempts) == 1 for attempts in rows)


class IdleWatch(JobQueue):
    """The job queue, telling when a worker has asked when its next job is due: the last thing
    a worker does before its idle wait, which nothing suspends in between."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage.db)
        self.asked = asyncio.Event()

    async def next_due(self) -> float | None:
        due = await super().next_due()
        self.asked.set()
        return due


async def test_the_in_process_worker_is_woken_by_the_delivery(tmp_path: Path) -> None:
    """A delivery that writes a job wakes the app's idle worker at once, not at its next poll."""
    ran = asyncio.Event()

    async def h(event: Event, ctx: HandlerContext) -> None:
        ran.set()

    registry = Registry()
    registry.register("h", h, origin="test")
    # The worker polls once an hour here: only the wake-up can make the handler run.
    settings = settings_for(tmp_path, worker_poll_s=3600.0,
                            config={"routes": [{"on": ["task.succeeded"], "handlers": ["h"]}]})
    async with sqlite_storage(settings.db_path) as opened:
        watch = IdleWatch(opened)
        app = create_app(settings, registry=registry, storage=replace(opened, jobs=watch))
        async with app_client(app) as client:
            worker = app.state.runtime.worker
            assert worker is not None
            assert worker.poll_s == 3600.0
            # idle: its first look found nothing, so the job below can only be found by waking
            await asyncio.wait_for(watch.asked.wait(), timeout=30)
            await post_signed(client, DONE)
            await asyncio.wait_for(ran.wait(), timeout=30)
            jobs = (await client.get("/tasks/t-1")).json()["jobs"]
            assert [j["handler"] for j in jobs] == ["h"]


# ---- the database away -----------------------------------------------------------------------


class FlakyQueue(JobQueue):
    """The real queue whose writes of an outcome, claims or waits fail while ``away`` (a
    database that went away), counting the tries."""

    away = False
    outcome_tries = 0
    claim_tries = 0
    wait_tries = 0

    async def retry_job(self, job_id: int, **kwargs: Any) -> bool:
        self.outcome_tries += 1
        if self.away:
            raise StoreError("transaction failed: the database is away (planted)")
        return await super().retry_job(job_id, **kwargs)

    async def finish_and_claim(self, **kwargs: Any) -> tuple[frozenset[int], list[Job]]:
        self.claim_tries += 1
        if self.away:
            raise StoreError("transaction failed: the database is away (planted)")
        return await super().finish_and_claim(**kwargs)

    async def wait_for_jobs(self, wait_s: float) -> None:
        self.wait_tries += 1
        if self.away:
            raise StoreError("cannot listen for jobs: the database is away (planted)")
        await super().wait_for_jobs(wait_s)


async def test_an_outcome_that_cannot_be_written_is_written_once_the_database_is_back(
    tmp_path: Path,
) -> None:
    """A job fails while the database is away: its outcome is tried again (backing off, each
    try logged) until it is written, never dropped in a task nobody awaits."""

    async def failing(event: Event, ctx: HandlerContext) -> None:
        raise RuntimeError("the handler failed")

    async with handler_runtime(tmp_path, handlers={"failing": failing},
                               routes=[{"on": "task.succeeded", "handlers": ["failing"]}]) as rt:
        flaky = FlakyQueue(rt.storage.db)
        worker = Worker(queue=flaky, registry=rt.registry, contexts=rt.context_for,
                        clock=rt.clock, poll_s=0.05)
        await deliver(rt, DONE, event="song.completed")
        [job] = await flaky.claim_jobs(owner=worker.owner, limit=1, now=rt.clock.now(),
                                       lease_s=60)
        flaky.away = True
        with capture_logs() as logs:
            running = asyncio.create_task(worker._run(job))
            await wait_until(lambda: flaky.outcome_tries >= 3, within=10,
                             what="the outcome to be tried three times")
            flaky.away = False
            await asyncio.wait_for(running, timeout=10)
        [after] = await rt.storage.admin.list_jobs()
    assert (after.state, after.last_error) == (JobState.RETRYING,
                                               "RuntimeError: the handler failed")
    not_written = [e for e in logs if e["event"] == "job_outcome_not_written"]
    assert [e["outcome"] for e in not_written] == ["retry"] * (flaky.outcome_tries - 1)
    # a warning once, the other tries at debug level: an outage does not flood the log
    assert [e["log_level"] for e in not_written] == ["warning"] + ["debug"] * (
        flaky.outcome_tries - 2)
    assert [e["tries"] for e in logs if e["event"] == "job_outcome_written"] == [
        flaky.outcome_tries]
    assert any(e["event"] == "job_retrying" for e in logs)


@pytest.mark.parametrize("listen", [False, True])
async def test_a_worker_waits_between_tries_while_the_database_is_away(
    tmp_path: Path, listen: bool
) -> None:
    """Claims (and a listening worker's waits) fail at once while the database is away: the
    worker backs off between tries instead of spinning, and claims again once it is back."""
    async with handler_runtime(tmp_path, handlers={}, routes=[]) as rt:
        flaky = FlakyQueue(rt.storage.db)
        flaky.away = True
        worker = Worker(queue=flaky, registry=rt.registry, contexts=rt.context_for,
                        clock=rt.clock, poll_s=0.25, listen=listen)
        running = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: flaky.claim_tries >= 4, within=10,
                             what="four tries to claim")
            tries = flaky.claim_tries + flaky.wait_tries
            flaky.away = False
            back = flaky.claim_tries
            await wait_until(lambda: flaky.claim_tries > back, within=5,
                             what="a claim once the database is back")
        finally:
            await worker.stop(deadline_s=1)
            await running
    # four claims are at least 0.25 + 0.5 + 1 s of backing off apart: a spinning worker
    # would have tried thousands of times meanwhile
    assert tries <= 12, tries


async def test_a_handler_error_with_what_no_store_keeps_is_written_storable(
    tmp_path: Path, backend_database: Path | str,
) -> None:
    """A handler's error may carry anything a peer sent (a service's non-JSON answer, a file
    name): a NUL, which PostgreSQL refuses in text, or a lone surrogate, which UTF-8 cannot
    encode. The retry is written all the same, each replaced by U+FFFD, on both backends:
    never an outcome retried for ever against a database that will refuse it again."""
    recorder = Recorder()
    recorder.plan = [RuntimeError("bad\x00answer \ud800 from the peer")]
    database = ({"db_url": backend_database} if isinstance(backend_database, str)
                else {"db_path": backend_database})
    async with handler_runtime(
        tmp_path, handlers={"record": recorder_handler(recorder)}, routes=ROUTES,
        clock=FakeClock(1_000_000.0),
        retry=RetryPolicy(max_attempts=3, schedule=(10, 100), jitter=0.0), **database,
    ) as rt:
        await deliver(rt, DONE, event="song.completed")
        with anyio.fail_after(30):
            assert await worker_of(rt).run_once() == 1
        [job] = await rt.storage.admin.list_jobs()
        assert rt.storage.db.available
    assert job.state == JobState.RETRYING
    assert job.last_error == "RuntimeError: bad\ufffdanswer \ufffd from the peer"
