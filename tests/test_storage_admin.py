"""The console's queries (receiver.storage.admin), once per backend: keyset pages that never
repeat or skip, filters, duplicates, a delivery's transitions, requeueing every match, attempts,
the audit log and the overview's and /metrics' numbers."""

from __future__ import annotations

import pytest

from receiver.jobs import JobSpec, JobState
from receiver.models import JobFilter, Outcome
from receiver.recording import insert_jobs
from receiver.states import State
from receiver.storage.admin import BadCursor, DeliveryFilter, TaskFilter
from receiver.storage.roles import Storage
from tests.support import callback, clip, delivery

pytestmark = pytest.mark.anyio


def song(task_id: str, state: str = "succeeded", title: str = "Song", tags: str = "pop") -> bytes:
    return callback(task_id, [clip(f"{task_id}-c", state, title=title, tags=tags)])


async def test_task_pages_list_every_match_once_despite_ties_and_arrivals(store: Storage) -> None:
    for n in range(9):  # three tasks per second: ties on first_seen_at
        await store.ingest.record_delivery(delivery(f"d{n}", song(f"t{n}", "succeeded" if n != 4
                                                           else "running"), at=1000.0 + n // 3))
    where = TaskFilter(state=State.SUCCEEDED)
    first = await store.admin.list_tasks(where, limit=2)
    seen = [r.task.task_id for r in first.items]
    await store.ingest.record_delivery(delivery("late", song("t-late"), at=5000.0))
    cursor = first.next_cursor
    while cursor is not None:
        page = await store.admin.list_tasks(where, limit=2, cursor=cursor)
        seen += [r.task.task_id for r in page.items]
        cursor = page.next_cursor
    assert sorted(seen) == sorted(f"t{n}" for n in range(9) if n != 4)
    assert len(seen) == len(set(seen))
    times = [(r.task.first_seen_at, r.task.task_id) for r in first.items]
    assert times == sorted(times, reverse=True)


async def test_task_filters_title_tag_parent_and_time(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", song("t1", title="Starry Night", tags="pop"),
                                         at=1000.0))
    await store.ingest.record_delivery(delivery("d2", song("t2", title="Rain", tags="Jazz, slow"),
                                         at=2000.0))

    async def ids(**kw: object) -> list[str]:
        page = await store.admin.list_tasks(TaskFilter(**kw), limit=10)  # type: ignore[arg-type]
        return [r.task.task_id for r in page.items]

    assert await ids() == ["t2", "t1"]
    assert await ids(text="STARRY") == ["t1"]
    assert await ids(tag="jazz") == ["t2"]
    assert await ids(since=1500.0) == ["t2"]
    assert await ids(until=1500.0) == ["t1"]
    assert await ids(parent="t1") == []
    row = (await store.admin.list_tasks(TaskFilter(), limit=1)).items[0]
    assert (row.title, row.clips) == ("Rain", 1)
    with pytest.raises(BadCursor):
        await store.admin.list_tasks(TaskFilter(), limit=1, cursor="bm90IGEgY3Vyc29y")


async def test_deliveries_by_outcome_duplicates_and_their_transitions(store: Storage) -> None:
    await store.ingest.record_delivery(delivery("d1", song("t1"), event="song.completed"))
    await store.ingest.record_delivery(delivery("d1", song("t1"), event="song.completed"))
    await store.ingest.record_delivery(delivery("q1", b'{"data": 3}'))
    await store.ingest.record_delivery(delivery("d2", song("t2", "running"), event="song.started"))

    async def ids(**kw: object) -> list[str]:
        page = await store.admin.list_deliveries(DeliveryFilter(**kw), limit=10)  # type: ignore[arg-type]
        return [d.delivery_id for d in page.items]

    assert await ids() == ["d2", "q1", "d1"]
    assert await ids(outcome=Outcome.DUPLICATE) == ["d1"]
    assert await ids(outcome=Outcome.QUARANTINED) == ["q1"]
    assert await ids(event="song.started") == ["d2"]
    assert await ids(task_id="t1") == ["d1"]
    one = await store.admin.list_deliveries(DeliveryFilter(), limit=1)
    two = await store.admin.list_deliveries(DeliveryFilter(), limit=2, cursor=one.next_cursor)
    assert [d.delivery_id for d in (*one.items, *two.items)] == ["d2", "q1", "d1"]
    assert two.next_cursor is None
    detail = await store.admin.get_delivery("d1")
    assert detail is not None
    assert (detail.row.duplicates, detail.raw.body) == (1, song("t1"))
    assert {(t.entity.value, t.to_state) for t in detail.transitions} == {
        ("task", State.SUCCEEDED), ("clip", State.SUCCEEDED)}
    assert await store.admin.get_delivery("nope") is None


async def dead(
    store: Storage, handler: str, n: int, at: float, prefix: str, task_id: str = "t"
) -> None:
    specs = [JobSpec(key=f"{prefix}/{i}", handler=handler, route="r", options={},
                     task_id=task_id, trigger="task.succeeded", delivery_id=None, max_attempts=1)
             for i in range(n)]
    await store.ingest.register_task(task_id, task_type="create", now=at)  # a job belongs to a task
    await store.db.write(lambda tx: insert_jobs(tx, specs, at=at))
    for job in await store.jobs.claim_jobs(owner="w", limit=n, now=at, lease_s=60):
        await store.jobs.kill_job(job.id, owner="w", error=f"boom {job.id}", now=at)


async def test_requeue_matching_takes_every_match_once(store: Storage) -> None:
    await dead(store, "download_audio", 4, 1000.0, "old")
    await dead(store, "download_audio", 30, 2000.0, "new")
    await dead(store, "notify", 3, 2000.0, "other")
    where = JobFilter(state=JobState.DEAD, handler="download_audio", since=1500.0)
    assert await store.admin.count_jobs(where) == 30
    assert await store.admin.requeue_matching(where, now=3000.0) == 30
    assert await store.admin.requeue_matching(where, now=3001.0) == 0
    assert await store.admin.count_jobs(JobFilter(state=JobState.QUEUED)) == 30
    assert await store.admin.count_jobs(JobFilter(state=JobState.DEAD)) == 7
    page = await store.admin.list_jobs_page(JobFilter(state=JobState.DEAD), limit=5)
    rest = await store.admin.list_jobs_page(JobFilter(state=JobState.DEAD), limit=5,
                                      cursor=page.next_cursor)
    ids = [j.id for j in (*page.items, *rest.items)]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 7
    job = await store.admin.get_job(ids[0])
    assert job is not None
    attempts = await store.admin.job_attempts(job.id)
    assert [(a.attempt, a.outcome, a.error) for a in attempts] == [(1, "dead", f"boom {job.id}")]


async def test_audit_pages_newest_first(store: Storage) -> None:
    for n in range(3):
        await store.admin.audit(actor="token@127.0.0.1", action="retry_job", target=f"job:{n}",
                          detail={"n": n})
    first = await store.admin.list_audit(limit=2)
    rest = await store.admin.list_audit(limit=2, cursor=first.next_cursor)
    assert [a.target for a in (*first.items, *rest.items)] == ["job:2", "job:1", "job:0"]
    assert first.items[0].detail == {"n": 2}


async def test_overview_and_totals(store: Storage) -> None:
    """The overview counts the last hour's deliveries per minute, outcomes, duplicates, dead
    jobs and task states, and the oldest queued job by when it became due; totals by outcome."""
    now = 100_000.0
    await store.ingest.record_delivery(delivery("d1", song("t1"), at=now - 30))
    await store.ingest.record_delivery(delivery("d1", song("t1"), at=now - 20))
    await store.ingest.record_delivery(delivery("d2", song("t2", "running"), at=now - 90))
    await store.ingest.record_delivery(delivery("q1", b"[]", at=now - 5000))
    await dead(store, "download_audio", 2, now - 10, "x", task_id="t1")
    overview = await store.admin.overview(now=now, expiry_warn_s=3600,
                                          download_handler="download_audio")
    per_minute = dict(overview.deliveries_per_minute)
    assert len(per_minute) == 60
    assert sum(per_minute.values()) == 2  # q1 is more than an hour old
    assert per_minute[(now - 30) // 60 * 60] == 1
    assert overview.outcomes == {"recorded": 2, "quarantined": 1}
    assert (overview.duplicates, overview.quarantined, overview.dead_jobs) == (1, 1, 2)
    assert overview.tasks_by_state == {"succeeded": 1, "running": 1}
    assert overview.oldest_queued_at is None  # the dead jobs wait for nothing
    await store.admin.requeue_matching(JobFilter(state=JobState.DEAD), now=now - 5)
    later = await store.admin.overview(now=now, expiry_warn_s=3600,
                                          download_handler="download_audio")
    assert later.oldest_queued_at == now - 5  # due since the requeue, not since made
    totals = await store.admin.totals(now=now)
    assert totals.deliveries == {("recorded", "musicapi", "sonic"): 2,
                                 ("quarantined", "musicapi", "sonic"): 1}
    assert totals.duplicates == {("musicapi", "sonic"): 1}
    assert totals.jobs == {("queued", "download_audio"): 2}
    assert totals.oldest_queued_at == now - 5
    assert totals.transitions[("task", "succeeded")] == 1
