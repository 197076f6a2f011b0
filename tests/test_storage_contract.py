"""The storage contract, once per backend (the ``store`` fixture, tests/fixtures/storage.py):
group commit, leases and takeovers, attempts, child claims, files and results, the reconcile
selection, requeueing, retention and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from receiver.clock import FakeClock
from receiver.errors import StoreError
from receiver.jobs import JobState
from receiver.models import ChildState, ChildTask, Delivery, JobFilter, Outcome, Result, StoredFile
from receiver.routing import HandlerRef, Route, Router
from receiver.states import State
from receiver.storage import postgres
from receiver.storage.connector import Tx, Unit, Work
from receiver.storage.roles import Storage, sqlite_storage
from receiver.storage.sqlite import DIALECT, SQLiteConnector
from tests.backends import StoreOpener, storage_at
from tests.support import COMPLETED, STREAMING, callback, clip, delivery, free_port

pytestmark = pytest.mark.anyio

ROUTER = Router([Route(name="r", on=frozenset({"task.succeeded"}),
                       handlers=(HandlerRef(name="h"),))])


def done(task_id: str) -> bytes:
    return callback(task_id, [clip(f"{task_id}-c", "succeeded", audio_url="http://cdn/x.mp3")])


async def test_writes_that_arrive_together_commit_together_each_on_its_own(store: Storage) -> None:
    async def boom(tx: Tx) -> None:
        await tx.run("insert_audit", {"at": 1.0, "actor": "t", "action": "boom", "target": None,
                                      "detail": "{}"})
        raise ValueError("this unit fails alone")

    def recording(n: int) -> Awaitable[object]:
        return store.ingest.record_delivery(delivery(f"d{n}", done(f"t{n}")), router=ROUTER)

    # the failing unit in the middle of one batch: what it wrote is undone, and the units
    # before it (run once with it, then again without it) and after it are each kept once
    results = await asyncio.gather(
        *(recording(n) for n in range(10)), store.db.write(boom),
        *(recording(n) for n in range(10, 20)),
        return_exceptions=True,
    )
    failed = results.pop(10)
    assert isinstance(failed, ValueError)
    assert [getattr(r, "outcome", r) for r in results] == [Outcome.RECORDED] * 20
    assert [getattr(r, "jobs", None) for r in results] == [1] * 20
    counts = await store.admin.counts()
    assert (counts["deliveries"], counts["tasks"], counts["jobs"]) == (20, 20, 20)
    assert (await store.admin.list_audit(limit=10)).items == ()


async def test_read_only_work_cannot_write(store: Storage) -> None:
    probe = {"name": "p", "at": 1.0}
    for attempt in (lambda tx: tx.run("probe_write", probe),
                    lambda tx: tx.send("probe_write", probe),
                    lambda tx: tx.run_many("probe_write", [probe]),
                    lambda tx: tx.send_many("probe_write", [probe])):
        with pytest.raises(StoreError, match="a read cannot write"):
            await store.db.read(attempt)


async def test_a_route_narrowed_by_tags_and_platform_reads_them_from_the_task(
    store: Storage,
) -> None:
    """Facts come from the stored task and its clips (the platform from an earlier delivery,
    tags from any clip), and only tasks they match get the route's job."""
    pop = Router([Route(name="pop", on=frozenset({"task.succeeded"}),
                        handlers=(HandlerRef(name="h"),), tags=frozenset({"pop"}),
                        platforms=frozenset({"sonic"}))])
    for task, tags in (("t-pop", "Dreamy, POP"), ("t-rock", "rock")):
        streaming = callback(task, [clip(f"{task}-a", "streaming", tags=tags)],
                             event="song.streaming", platform="sonic")
        await store.ingest.record_delivery(delivery(f"{task}-1", streaming), router=pop)
        finished = callback(task, [clip(f"{task}-a", "succeeded", audio_url="http://cdn/a"),
                                   clip(f"{task}-b", "succeeded", audio_url="http://cdn/b")])
        result = await store.ingest.record_delivery(delivery(f"{task}-2", finished), router=pop)
        assert result.jobs == (1 if task == "t-pop" else 0)
    assert [j.task_id for j in await store.admin.list_jobs()] == ["t-pop"]


async def test_a_preview_changes_nothing_even_beside_real_writes(store: Storage) -> None:
    preview, real = await asyncio.gather(
        store.ingest.preview_delivery(delivery("p1", done("tp")), router=ROUTER),
        store.ingest.record_delivery(delivery("r1", done("tr")), router=ROUTER),
    )
    assert (preview.outcome, preview.jobs) == (Outcome.RECORDED, 1)
    assert real.outcome is Outcome.RECORDED
    assert await store.admin.get_task("tp") is None
    assert await store.admin.get_task("tr") is not None


async def test_duplicates_are_counted_on_the_first_delivery(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", STREAMING, event="song.streaming"))
    for _ in range(3):
        again = await store.ingest.record_delivery(
            delivery("d1", STREAMING, event="song.streaming")
        )
        assert again.outcome is Outcome.DUPLICATE
    detail = await store.admin.get_delivery("d1")
    assert detail is not None
    assert detail.row.duplicates == 3


async def test_two_workers_never_claim_the_same_job(store: Storage) -> None:
    for n in range(30):
        await store.ingest.record_delivery(delivery(f"d{n}", done(f"t{n}")), router=ROUTER)
    claims = await asyncio.gather(*(
        store.jobs.claim_jobs(owner=f"w{n}", limit=4, now=2000.0, lease_s=60) for n in range(10)))
    ids = [job.id for jobs in claims for job in jobs]
    assert len(ids) == len(set(ids)) == 30


async def test_claims_take_the_oldest_due_first_across_queued_retried_and_expired_jobs(
    store: Storage,
) -> None:
    # due times in another order than the ids, more queued jobs than one claim reads of a kind
    for n in range(90):
        await store.ingest.record_delivery(
            delivery(f"d{n}", done(f"t{n}"), at=1000.0 + n * 37 % 90), router=ROUTER
        )
    first, second = await store.jobs.claim_jobs(owner="w1", limit=2, now=1100.0, lease_s=60)
    assert (first.run_after, second.run_after) == (1000.0, 1001.0)
    assert await store.jobs.retry_job(first.id, owner="w1", error="x", run_after=1000.5, now=1100.0)
    # w1 dies holding `second`: its lease runs out at 1160
    everything = await store.admin.list_jobs()
    expected = [j.id for j in sorted(everything, key=lambda j: (j.run_after, j.id))]
    taken: list[int] = []
    while batch := await store.jobs.claim_jobs(owner="w2", limit=7, now=1200.0, lease_s=60):
        taken += [job.id for job in batch]
    assert taken == expected
    assert taken[:2] == [first.id, second.id]  # due 1000.5 (its retry), 1001 (lease expired)


async def test_successes_committed_with_the_next_claim_change_only_jobs_still_held(
    store: Storage,
) -> None:
    for n in range(3):
        await store.ingest.record_delivery(delivery(f"d{n}", done(f"t{n}"), at=1000.0 + n),
                                    router=ROUTER)
    a, b = await store.jobs.claim_jobs(owner="w1", limit=2, now=2000.0, lease_s=60)
    assert await store.jobs.renew_lease(a.id, owner="w1", until=3000.0, now=2050.0)
    # w1 was too slow with b: its lease ran out and w2 took it over (with the third job)
    taken = await store.jobs.claim_jobs(owner="w2", limit=5, now=2070.0, lease_s=60)
    c = next(job for job in taken if job.id != b.id)
    assert sorted(job.id for job in taken) == sorted([b.id, c.id])
    kept, claimed = await store.jobs.finish_and_claim(owner="w1", finished=[a.id, b.id], limit=4,
                                                 now=2071.0, lease_s=60)
    assert (kept, claimed) == (frozenset({a.id}), [])  # nothing else is due
    jobs = {job.id: job for job in await store.admin.list_jobs()}
    assert (jobs[a.id].state, jobs[a.id].lease_owner) == (JobState.DONE, None)
    assert (jobs[b.id].state, jobs[b.id].lease_owner) == (JobState.RUNNING, "w2")

    async def attempts(job_id: int) -> list[tuple[str, str | None]]:
        return [(a.owner, a.outcome) for a in await store.admin.job_attempts(job_id)]

    assert await attempts(a.id) == [("w1", "done")]
    assert await attempts(b.id) == [("w1", "lost"), ("w2", None)]  # w2 took it over
    kept, claimed = await store.jobs.finish_and_claim(owner="w2", finished=[b.id, c.id], limit=0,
                                                 now=2072.0, lease_s=60)
    assert (kept, claimed) == (frozenset({b.id, c.id}), [])
    assert await attempts(b.id) == [("w1", "lost"), ("w2", "done")]


async def test_every_attempt_is_kept_with_its_outcome(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", done("t1")), router=ROUTER)
    [job] = await store.jobs.claim_jobs(owner="w1", limit=1, now=2000.0, lease_s=60)
    assert await store.jobs.retry_job(
        job.id, owner="w1", error="boom", run_after=2010.0, now=2001.0
    )
    [again] = await store.jobs.claim_jobs(owner="w2", limit=1, now=2010.0, lease_s=60)
    assert await store.jobs.kill_job(again.id, owner="w2", error="still boom", now=2011.0)
    attempts = await store.admin.job_attempts(job.id)
    assert [(a.attempt, a.owner, a.outcome, a.error) for a in attempts] == [
        (1, "w1", "retry", "boom"), (2, "w2", "dead", "still boom")]
    [dead] = await store.admin.list_jobs(state=JobState.DEAD)
    assert (dead.attempts, dead.last_error) == (2, "still boom")
    # requeued, it starts counting again, and its history stays
    assert await store.admin.requeue_jobs([job.id], now=2020.0) == 1
    [third] = await store.jobs.claim_jobs(owner="w3", limit=1, now=2020.0, lease_s=60)
    assert third.attempts == 1
    assert await store.jobs.finish_job(third.id, owner="w3", now=2021.0)
    attempts = await store.admin.job_attempts(job.id)
    assert [(a.attempt, a.owner, a.outcome) for a in attempts] == [
        (1, "w1", "retry"), (2, "w2", "dead"), (1, "w3", "done")]


async def test_each_run_is_closed_alone_even_when_one_owner_claims_a_job_twice(
    store: Storage,
) -> None:
    """A worker whose outcome could not be written (the database away) claims the job again
    once its lease ran out: the first run is closed as lost when the second starts, and the
    second's end closes only the second, at its own time."""
    await store.ingest.record_delivery(delivery("d1", done("t1")), router=ROUTER)
    [first] = await store.jobs.claim_jobs(owner="w", limit=1, now=2000.0, lease_s=60)
    [again] = await store.jobs.claim_jobs(owner="w", limit=1, now=2061.0, lease_s=60)
    assert (first.id, first.runs, again.runs) == (again.id, 1, 2)
    assert await store.jobs.finish_job(again.id, owner="w", now=2070.0)
    attempts = await store.admin.job_attempts(first.id)
    assert [(a.attempt, a.outcome, a.finished_at) for a in attempts] == [
        (1, "lost", 2061.0), (2, "done", 2070.0)]


async def test_requeue_takes_only_finished_jobs_and_resets_attempts(store: Storage) -> None:
    for n in range(3):
        await store.ingest.record_delivery(delivery(f"d{n}", done(f"t{n}")), router=ROUTER)
    jobs = await store.jobs.claim_jobs(owner="w", limit=3, now=2000.0, lease_s=60)
    await store.jobs.kill_job(jobs[0].id, owner="w", error="x", now=2001.0)
    await store.jobs.finish_job(jobs[1].id, owner="w", now=2001.0)
    assert await store.admin.requeue_jobs([j.id for j in jobs], now=2002.0) == 2  # not the running
    queued = await store.admin.find_jobs(JobFilter(state=JobState.QUEUED))
    assert sorted(j.id for j in queued) == sorted([jobs[0].id, jobs[1].id])
    assert all(j.attempts == 0 and j.last_error is None for j in queued)
    by_delivery = await store.admin.find_jobs(JobFilter(delivery_ids=frozenset({"d2"})))
    assert [j.id for j in by_delivery] == [jobs[2].id]


async def test_a_child_is_claimed_once_and_registers_its_task(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", done("parent")), router=ROUTER)
    child = ChildTask(
        trigger_key="job/extend",
        parent_task_id="parent",
        root_task_id="parent",
        rule="extend",
        depth=1,
        task_type="extend_music",
        credits=15,
        request={"b": 1, "a": 2},
        child_task_id=None,
        state=ChildState.REQUESTED,
        error=None,
        created_at=1.0,
        updated_at=1.0,
    )
    first, second = await asyncio.gather(
        store.outputs.claim_child(child), store.outputs.claim_child(child)
    )
    assert sorted([first[1], second[1]]) == [False, True]
    # the child's webhook came before the create call returned
    await store.ingest.record_delivery(delivery("d2", done("kid")), router=ROUTER)
    moved = await store.outputs.update_child("job/extend", state=ChildState.CREATED,
                                     child_task_id="kid", now=5.0, router=ROUTER)
    assert (moved.state, moved.child_task_id) == (ChildState.CREATED, "kid")
    view = await store.admin.get_task("kid")
    assert view is not None
    assert (view.task.task_type, view.task.parent_task_id) == ("extend_music", "parent")
    assert await store.admin.child_of("kid") == moved
    assert [c.trigger_key for c in await store.admin.list_children("parent")] == ["job/extend"]
    assert await store.admin.credits_under("parent") == 15
    await store.outputs.update_child("job/extend", state=ChildState.FAILED, error="no", now=6.0)
    assert await store.admin.credits_under("parent") == 0
    with pytest.raises(StoreError, match="no child task"):
        await store.outputs.update_child("nope", state=ChildState.FAILED, now=7.0)


async def test_files_and_results_are_upserted(store: Storage) -> None:
    for size in (1, 2):
        await store.outputs.record_file(
            StoredFile(
                task_id="t",
                clip_id="c",
                kind="audio",
                path="/m/t/c.mp3",
                size=size,
                sha256=f"{size:064x}",
                url="file:///m/t/c.mp3",
                content_type="audio/mpeg",
                job_key="k",
                created_at=1.0,
            )
        )
        await store.outputs.record_result(Result(task_id="t", clip_id="c", kind="bpm",
                                         data={"bpm": size}, job_key="k", created_at=1.0))
    [f] = await store.admin.list_files("t")
    assert (f.size, f.url) == (2, "file:///m/t/c.mp3")
    [r] = await store.admin.list_results("t")
    assert r.data == {"bpm": 2}


async def test_reconcile_selects_stale_unfinished_tasks_and_recent_ones(store: Storage) -> None:
    await store.ingest.record_delivery(
        delivery("a", callback("old", [clip("o", "running")]), at=100.0)
    )
    await store.ingest.record_delivery(
        delivery("b", callback("new", [clip("n", "running")]), at=900.0)
    )
    await store.ingest.record_delivery(delivery("c", done("fin"), at=50.0))
    assert await store.admin.tasks_to_reconcile(stale_before=500.0) == ["old"]
    assert await store.admin.tasks_to_reconcile(since=800.0) == ["new"]
    assert await store.admin.tasks_to_reconcile(stale_before=1000.0, since=0.0, limit=2) == [
        "old", "new"]


async def test_prune_dry_run_counts_and_keeps_everything(
    backend_store: StoreOpener,
) -> None:
    clock = FakeClock(10_000.0)
    async with backend_store(clock=clock) as store:
        await _prune_scenario(store, clock)


async def _prune_scenario(store: Storage, clock: FakeClock) -> None:
    day = 86400.0
    await store.ingest.record_delivery(
        delivery("old", done("t-old"), at=clock.now()), router=ROUTER
    )
    await store.ingest.record_delivery(delivery("open", callback("t-open", [clip("x", "running")]),
                                         at=clock.now()))
    await store.ingest.record_delivery(delivery("q", b"[]", at=clock.now()))
    [job] = await store.jobs.claim_jobs(owner="w", limit=1, now=clock.now(), lease_s=60)
    await store.jobs.finish_job(job.id, owner="w", now=clock.now())
    clock.advance(100 * day)
    before = await store.admin.counts()
    report = await store.admin.prune(older_than_s=90 * day, keep_ids_s=400 * day, dry_run=True)
    assert (report.bodies, report.jobs, report.delivery_ids) == (1, 1, 0)
    assert await store.admin.counts() == before
    report = await store.admin.prune(older_than_s=90 * day, keep_ids_s=400 * day)
    assert (report.bodies, report.jobs, report.delivery_ids) == (1, 1, 0)
    after = await store.admin.counts()
    assert (after["jobs"], after["deliveries"], after["tasks"]) == (0, 3, 2)
    # the pruned delivery's id still deduplicates; its body is gone from replay
    again = await store.ingest.record_delivery(delivery("old", done("t-old"), at=clock.now()))
    assert again.outcome is Outcome.DUPLICATE
    kept = {r.stored.delivery_id for r in await store.admin.raw_deliveries()}
    assert kept == {"open", "q"}
    clock.advance(400 * day)
    report = await store.admin.prune(older_than_s=90 * day, keep_ids_s=400 * day)
    # "open"'s task never ended and "q" is quarantined: both kept; "old"'s id goes now
    assert (report.bodies, report.delivery_ids) == (0, 1)
    assert {r.stored.delivery_id for r in await store.admin.raw_deliveries()} == {"open", "q"}
    view = await store.admin.get_task("t-old")
    assert view is not None
    assert view.task.state is State.SUCCEEDED


async def test_an_old_sqlite_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a database as the previous release left it
        for number, script in enumerate(DIALECT.migrations()[:2], start=1):
            conn.executescript(script)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute(
            "INSERT INTO deliveries (delivery_id, source, scheme, event, task_id, outcome, "
            "reason, headers, body, received_at) VALUES "
            "('d1', 'webhook', 'musicapi', NULL, 't-1', 'recorded', NULL, '{}', x'00', 1.0)")
    async with sqlite_storage(path) as store:
        again = await store.ingest.record_delivery(delivery("d1", COMPLETED))
        assert again.outcome is Outcome.DUPLICATE
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(DIALECT.migrations())
        assert conn.execute("SELECT duplicates FROM deliveries").fetchone()[0] == 1


async def test_opening_waits_for_another_process_migrating_the_file(tmp_path: Path) -> None:
    """A migration can take a while on a big file (one that rebuilds tables), and a process
    started beside the one migrating waits for it, not just its lock timeout."""
    path = tmp_path / "r.db"
    async with sqlite_storage(path):
        pass
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # as a migration holds the file
    release = asyncio.get_running_loop().call_later(0.8, other.execute, "COMMIT")
    try:
        began = asyncio.get_running_loop().time()
        async with Storage.over(SQLiteConnector(path, lock_timeout_s=0.1)) as store:
            waited = asyncio.get_running_loop().time() - began
            assert (await store.admin.counts())["deliveries"] == 0
    finally:
        release.cancel()
        other.close()
    assert waited >= 0.7  # it waited for the lock, well past its 0.1 s lock timeout


async def test_recording_names_the_task_it_will_lock(tmp_path: Path) -> None:
    """What the batch's task locks are taken from: a delivery whose body names its task says
    so; one named only by its clips' ids is found (and locked) inside its unit."""
    async with sqlite_storage(tmp_path / "r.db") as store:
        seen: list[tuple[str, ...]] = []
        write = store.db.connector.write

        async def spy(units: Sequence[Unit]) -> None:
            seen.extend(unit.locks for unit in units)
            await write(units)

        store.db.connector.write = spy  # type: ignore[method-assign]
        await store.ingest.record_delivery(delivery("d1", COMPLETED))
        await store.ingest.record_delivery(delivery("d2", callback(None, [clip("a", "succeeded")])))
    assert seen == [("t-1",), ()]


@pytest.mark.postgres
async def test_two_postgresql_batches_locking_the_same_tasks_in_opposite_orders_do_not_deadlock(
    pg_dsn: str,
) -> None:
    """Two processes' batches each record two tasks, in opposite orders, and each unit holds
    its task a while before the next unit locks the other. Taken unit by unit, the locks
    deadlock: PostgreSQL aborts one batch after deadlock_timeout and its units run again one
    by one (a delivery whose unit fails then gets a 503). A batch takes all its task locks
    first, in one order: the second batch waits for the first, and every unit runs once."""
    runs: list[str] = []

    def unit(name: str, task: str) -> Work[None]:
        async def work(tx: Tx) -> None:
            runs.append(name)
            await tx.one("lock_task", {"task_id": task})
            # Not a wait: the unit holds its task's lock a while, which is the scenario. A unit
            # runs on the writer's own thread and must not suspend (see drive()): it blocks,
            # and meanwhile the other process's batch takes its first lock.
            time.sleep(0.3)  # noqa: ASYNC251

        return work

    async with storage_at(pg_dsn) as one, storage_at(pg_dsn) as two:
        await asyncio.gather(
            one.db.write(unit("1a", "t-a"), locks=("t-a",)),
            one.db.write(unit("1b", "t-b"), locks=("t-b",)),
            two.db.write(unit("2b", "t-b"), locks=("t-b",)),
            two.db.write(unit("2a", "t-a"), locks=("t-a",)),
        )
    assert sorted(runs) == ["1a", "1b", "2a", "2b"]


@pytest.mark.postgres
async def test_a_postgresql_writer_whose_connection_was_cut_connects_again(pg_dsn: str) -> None:
    """The server ends the writer's connection (a restart, an administrator): the batch that
    meets the cut fails as a StoreError (a 503, retried by the sender), the next one runs on a
    new connection, and nothing half-written is kept."""
    import psycopg

    async with storage_at(pg_dsn) as store:
        assert (await store.ingest.record_delivery(delivery("before", done("t1")))).outcome \
            is Outcome.RECORDED
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
            cut = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = 'sonic-receiver writer'"
            )
            assert [row[0] for row in await cut.fetchall()] == [True]
        outcomes = []
        for n in range(3):
            try:
                outcomes.append((await store.ingest.record_delivery(
                    delivery(f"after-{n}", done(f"t-after-{n}")))).outcome.value)
            except StoreError:
                outcomes.append("503")
        counts = await store.admin.counts()
    assert outcomes in (["503", "recorded", "recorded"], ["recorded"] * 3)
    assert counts["deliveries"] == 1 + outcomes.count("recorded")


@pytest.mark.postgres
async def test_a_postgresql_database_newer_than_the_code_is_refused(pg_dsn: str) -> None:
    import psycopg

    async with storage_at(pg_dsn):
        pass  # migrated to this code's version
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE schema_version SET version = %s", (len(DIALECT.migrations()) + 1,)
        )
    with pytest.raises(StoreError, match="newer than this code"):
        async with storage_at(pg_dsn):
            pass


async def test_a_database_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    from receiver.storage.postgres import PostgresConnector

    store = Storage.over(PostgresConnector(f"postgresql://u:secret@127.0.0.1:{free_port()}/db"))
    with pytest.raises(StoreError) as caught:
        await store.db.open()
    assert "cannot open database postgresql://127.0.0.1:" in caught.value.message
    assert "secret" not in caught.value.message
    assert "\n" not in caught.value.message


async def test_two_processes_recording_one_task_at_once_never_move_it_back(
    backend_store: StoreOpener,
) -> None:
    """Two stores on one database (two web processes): a task's streaming and completed
    deliveries recorded side by side end with the task and its clips succeeded, one job."""
    tasks = [f"race-{n}" for n in range(40)]

    def streaming(task: str) -> bytes:
        return callback(task, [clip(f"{task}-a", "running"), clip(f"{task}-b", "running")])

    def completed(task: str) -> bytes:
        return callback(task, [clip(f"{task}-a", "succeeded"), clip(f"{task}-b", "succeeded")])

    async with backend_store() as one, backend_store() as two:
        for task in tasks:
            results = await asyncio.gather(
                one.ingest.record_delivery(delivery(f"{task}-s", streaming(task)), router=ROUTER),
                two.ingest.record_delivery(delivery(f"{task}-c", completed(task)), router=ROUTER),
                return_exceptions=True)
            for failed in (r for r in results if isinstance(r, BaseException)):
                assert isinstance(failed, StoreError), failed  # a conflict: the sender retries
        for task in tasks:  # what a retrying sender would resend after a conflict
            await one.ingest.record_delivery(delivery(f"{task}-s", streaming(task)), router=ROUTER)
            await two.ingest.record_delivery(delivery(f"{task}-c", completed(task)), router=ROUTER)
        views = [await one.admin.get_task(task) for task in tasks]
        jobs = await one.admin.list_jobs()
    backwards = [(v.task.task_id, v.task.state) for v in views
                 if v is not None and v.task.state is not State.SUCCEEDED]
    assert backwards == []
    clips = {c.state for v in views if v is not None for c in v.clips}
    assert clips == {State.SUCCEEDED}
    assert sorted(j.task_id for j in jobs) == sorted(tasks)


async def test_a_task_registered_while_its_webhook_is_recorded_elsewhere_gets_its_job(
    backend_store: StoreOpener,
) -> None:
    """POST /tasks in one web process registers the task's type while its webhook is recorded
    in another: a route on that type plans the job either way, once."""
    typed = Router(
        [
            Route(
                name="r",
                on=frozenset({"task.succeeded"}),
                handlers=(HandlerRef(name="h"),),
                task_types=frozenset({"create_music"}),
            )
        ]
    )
    tasks = [f"reg-{n}" for n in range(40)]
    async with backend_store() as one, backend_store() as two:
        for task in tasks:
            await asyncio.gather(
                one.ingest.register_task(task, task_type="create_music", now=1000.0, router=typed),
                two.ingest.record_delivery(delivery(f"{task}-c", done(task)), router=typed))
        jobs = await one.admin.list_jobs()
    assert sorted(j.task_id for j in jobs) == sorted(tasks)


async def test_a_worker_elsewhere_is_woken_by_jobs_written_not_by_its_poll(
    backend_store: StoreOpener,
) -> None:
    """wait_for_jobs in one process returns when another commits jobs (PostgreSQL's NOTIFY,
    SQLite's data_version), long before the wait it was given runs out."""
    async with backend_store() as worker, backend_store() as web:
        await worker.jobs.wait_for_jobs(0)  # listening from here on
        waiting = asyncio.create_task(worker.jobs.wait_for_jobs(600))
        for n in range(100):  # a write each 0.1 s until it wakes: none can be missed for long
            await web.ingest.record_delivery(
                delivery(f"wake-{n}", done(f"wake-{n}")), router=ROUTER
            )
            done_now, _ = await asyncio.wait([waiting], timeout=0.1)
            if done_now:
                break
        woken = waiting.done()
        waiting.cancel()
    assert woken, "still waiting after 100 commits of new jobs"


async def test_one_delivery_recorded_by_two_processes_at_once_is_a_duplicate_not_an_error(
    backend_store: StoreOpener,
) -> None:
    """A provider's retry overlapping its first attempt, the two at two web processes: one is
    recorded and the other answered as a duplicate (not a 503 for the conflict)."""
    async with backend_store() as one, backend_store() as two:
        outcomes = []
        for n in range(30):
            same = delivery(f"twice-{n}", done(f"twice-{n}"))
            results = await asyncio.gather(one.ingest.record_delivery(same, router=ROUTER),
                                           two.ingest.record_delivery(same, router=ROUTER))
            outcomes.append(sorted(r.outcome.value for r in results))
        counts = await one.admin.counts()
    assert outcomes == [["duplicate", "recorded"]] * 30
    assert (counts["deliveries"], counts["jobs"]) == (30, 30)


async def test_one_process_at_a_time_has_a_scheduled_turn(
    backend_store: StoreOpener,
) -> None:
    clock = FakeClock(1000.0)
    async with backend_store(clock=clock) as store:
        assert await store.admin.take_turn("reconcile", owner="a", hold_s=60)
        assert not await store.admin.take_turn("reconcile", owner="b", hold_s=60)
        assert await store.admin.take_turn("prune", owner="b", hold_s=60)  # another schedule
        assert await store.admin.take_turn("reconcile", owner="a", hold_s=60)  # its own again
        clock.advance(61)
        assert await store.admin.take_turn("reconcile", owner="b", hold_s=60)  # a ran out
        assert not await store.admin.take_turn("reconcile", owner="a", hold_s=60)


def _variety() -> list[Delivery]:
    """Deliveries that take every branch of recording, in an order whose outcome one at a
    time and in one batch must agree: tasks seen twice (streaming, then done), one delivery
    id under two tasks, a repeat, a task found by its clips only, a clip reported twice, an
    unusable body, and text that JSON and SQL both have to carry as it is."""
    out = [delivery("shared", done("x-1")), delivery("shared", done("x-2"))]
    for n in range(6):
        task = f"t{n}"
        out.append(delivery(f"{task}-s", callback(task, [
            clip(f"{task}-a", "streaming", tags="Dreamy, pop", title="a\u2028\"'\\ü\U0001f3b5"),
            clip(f"{task}-b", "running")], event="song.streaming", platform="sonic"),
            at=1000.0 + n / 7))
        out.append(delivery(f"{task}-d", callback(task, [
            clip(f"{task}-a", "succeeded", audio_url="http://cdn/a.mp3", duration=12.345678901),
            clip(f"{task}-b", "succeeded", audio_url="http://cdn/b.mp3")]), at=1001.0 + n / 3))
    out += [delivery("t0-d", done("t0")),  # a repeat of an id kept above
            delivery("by-clips", callback(None, [clip("t1-a", "succeeded", title="again")])),
            delivery("twice", callback("tw", [clip("z", "running"), clip("z", "succeeded")])),
            delivery("bad", b"{not json \xff", task_id_hint="t-hint"),
            delivery("quote'); --", done("t'); DROP TABLE tasks; --"))]
    return out


def _dump(database: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """What recording keeps, with no row numbers (they follow the order of the inserts)."""
    dumped: dict[str, list[tuple[Any, ...]]] = {}
    with (contextlib.closing(sqlite3.connect(database)) if isinstance(database, Path)
          else psycopg.connect(database)) as conn:
        for table in ("deliveries", "tasks", "clips", "transitions", "jobs"):
            cursor = conn.execute(f"SELECT * FROM {table}")  # noqa: S608 (names above)
            names = [d[0] for d in cursor.description or ()]
            rows = [tuple((n, bytes(v) if isinstance(v, bytes | memoryview) else v)
                          for n, v in zip(names, row, strict=True)
                          if n not in ("id", "seq", "task_seq"))
                    for row in cursor.fetchall()]
            dumped[table] = sorted(rows, key=repr)
    return dumped


@pytest.mark.postgres
async def test_a_postgresql_batch_records_what_sqlite_records_one_at_a_time(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL runs a batch's units of distinct tasks together, one statement per step for
    all of them (``[postgresql_batch]`` statements): the answers and the rows must be those of
    the same deliveries recorded one at a time, here on SQLite, the reference."""
    router = Router([
        Route(name="done", on=frozenset({"task.succeeded"}), handlers=(HandlerRef(name="h"),)),
        Route(name="pop", on=frozenset({"task.succeeded"}), handlers=(HandlerRef(name="p"),),
              tags=frozenset({"pop"}), platforms=frozenset({"sonic"}))])
    together: list[int] = []
    real_run = postgres._Together.run

    def counted(self: postgres._Together) -> None:  # a spy: the real step runs
        real_run(self)
        together.append(len(self.units))

    monkeypatch.setattr(postgres._Together, "run", counted)
    reference = tmp_path / "one-at-a-time.db"
    async with storage_at(reference) as one:
        alone = [await one.ingest.record_delivery(d, router=router) for d in _variety()]
    async with storage_at(pg_dsn) as store:
        batch = await asyncio.gather(*(store.ingest.record_delivery(d, router=router)
                                       for d in _variety()))
    assert together, "no batch ran its units together"
    assert max(together) >= 6, together  # the first wave: a unit per task
    assert [r.outcome for r in alone].count(Outcome.DUPLICATE) == 2
    assert batch == alone
    expected, found = _dump(reference), _dump(pg_dsn)
    for table, rows in expected.items():
        assert found[table] == rows, table
