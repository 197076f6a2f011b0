"""The console's JSON API over httpx.ASGITransport on a real SQLite file: paging, filters,
deliveries with their raw body, jobs, and the audited actions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.clock import FakeClock
from receiver.conversion import TIME_FORMS
from receiver.jobs import JobState
from receiver.models import JobFilter
from receiver.storage.roles import sqlite_storage
from tests.console.support import dead_jobs, deliver
from tests.support import callback, clip, post_signed

pytestmark = pytest.mark.anyio


async def all_pages(client: httpx.AsyncClient, path: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(path, params=query)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_tasks_page_through_every_match_exactly_once(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    """GET /tasks?state=succeeded&limit=2 pages through every succeeded task once, even with
    several first seen in the same second, and a task arriving meanwhile changes nothing."""
    for i in range(7):
        if i % 3 == 0:
            clock.advance(1)
        await deliver(api, clock, f"t-{i}", "succeeded" if i != 4 else "running", f"d-{i}")
    first = (await api.get("/tasks", params={"state": "succeeded", "limit": 2})).json()
    assert len(first["items"]) == 2
    await deliver(api, clock, "t-new", "succeeded", "d-new")  # sorts first: not in later pages
    seen = [t["task_id"] for t in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (await api.get("/tasks", params={"state": "succeeded", "limit": 2,
                                                   "cursor": cursor})).json()
        seen += [t["task_id"] for t in page["items"]]
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(f"t-{i}" for i in range(7) if i != 4)
    assert len(seen) == len(set(seen))


async def test_task_filters(api: httpx.AsyncClient, clock: FakeClock) -> None:
    """Filters on state, title text, tag and creation time each narrow the list."""
    await deliver(api, clock, "t-a", "succeeded", "d-a", title="Starry Night", tags="pop")
    clock.advance(100)
    await deliver(api, clock, "t-b", "running", "d-b", title="Rainy Day", tags="jazz, slow")

    async def ids(**params: Any) -> list[str]:
        return [t["task_id"] for t in await all_pages(api, "/tasks", **params)]

    assert await ids() == ["t-b", "t-a"]
    assert await ids(state="running") == ["t-b"]
    assert await ids(q="starry") == ["t-a"]
    assert await ids(tag="jazz") == ["t-b"]
    assert await ids(since=str(clock.now() - 50)) == ["t-b"]
    assert await ids(until=str(clock.now() - 50)) == ["t-a"]
    # the times the command line takes, counted back from the app's clock (issue 23, item 8)
    assert await ids(since="50s") == ["t-b"]
    assert await ids(until="50 ago") == ["t-a"]
    assert await ids(since="1h ago") == ["t-b", "t-a"]
    iso = datetime.fromtimestamp(clock.now() - 50, UTC).replace(tzinfo=None).isoformat()
    assert await ids(since=iso) == ["t-b"]  # UTC when it names no offset
    refused = await api.get("/tasks", params={"since": "yesterday"})
    assert refused.status_code == 400
    assert TIME_FORMS in refused.json()["error"]
    listed = (await api.get("/tasks")).json()["items"][0]
    assert listed["title"] == "Rainy Day"
    assert listed["clips"] == 1
    assert (await api.get("/tasks", params={"state": "nope"})).status_code == 400
    assert (await api.get("/tasks", params={"cursor": "%%%"})).status_code == 400
    assert (await api.get("/tasks", params={"limit": "0"})).status_code == 400


async def test_needs_the_admin_token(api: httpx.AsyncClient) -> None:
    """Without the Bearer token every console route answers 401."""
    for path in ("/tasks", "/deliveries", "/jobs", "/metrics", "/audit", "/openapi.json"):
        answer = await api.get(path, headers={"Authorization": "Bearer wrong"})
        assert answer.status_code == 401, path
    assert (await api.post("/jobs/retry", headers={"Authorization": ""})).status_code == 401


async def test_delivery_detail_keeps_headers_body_and_transitions(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A delivery shows its kept headers (no signature), raw body, and what it moved."""
    await deliver(api, clock, "t-1", "succeeded", "d-1")
    bad = await post_signed(api, b'{"code": 200, "data": "nope"}', clock=clock,
                            delivery_id="d-bad")
    assert bad.status_code == 422
    listed = await all_pages(api, "/deliveries")
    assert [d["delivery_id"] for d in listed] == ["d-bad", "d-1"]
    quarantined = await all_pages(api, "/deliveries", outcome="quarantined")
    assert [d["delivery_id"] for d in quarantined] == ["d-bad"]
    detail = (await api.get("/deliveries/d-1")).json()
    assert detail["outcome"] == "recorded"
    assert detail["body_json"]["task_id"] == "t-1"
    assert "x-webhook-signature" not in detail["headers"]
    assert detail["headers"]["x-webhook-id"] == "d-1"
    assert {(t["entity"], t["to"]) for t in detail["transitions"]} == {
        ("task", "succeeded"), ("clip", "succeeded")}
    assert (await api.get("/deliveries/nope")).status_code == 404


async def test_record_again_is_idempotent_and_audited(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A quarantined delivery whose task becomes known is recorded on the first call; the
    second changes nothing; both are in the audit log."""
    body = callback(None, [clip("orphan-c", "succeeded", title="Lost")], event="song.completed")
    answer = await post_signed(api, body, clock=clock, delivery_id="d-orphan")
    assert answer.status_code == 422
    # the task becomes known through another delivery naming the same clip
    await post_signed(api, callback("t-known", [clip("orphan-c", "running")]), clock=clock,
                      delivery_id="d-known")
    first = (await api.post("/deliveries/d-orphan/record-again")).json()
    assert first["changed"] is True
    assert first["outcome"] == "recorded"
    assert first["task_id"] == "t-known"
    again = (await api.post("/deliveries/d-orphan/record-again")).json()
    assert again == {"delivery_id": "d-orphan", "changed": False, "outcome": "recorded"}
    audit = (await api.get("/audit")).json()["items"]
    assert [a["action"] for a in audit] == ["record_again", "record_again"]
    assert audit[0]["actor"] == "admin via token from 127.0.0.1"
    task = (await api.get("/tasks/t-known")).json()
    assert task["task"]["state"] == "succeeded"


async def test_bulk_retry_retries_every_match_not_a_page(
    api: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    """'Every dead download_audio job since T': counted first, then all of them requeued (more
    than a page), other handlers' and older jobs untouched; a second call requeues none."""
    await dead_jobs(tmp_path, clock, 3, "download_audio")
    clock.advance(60)
    since = clock.now()
    await dead_jobs(tmp_path, clock, 60, "download_audio", prefix="new")
    await dead_jobs(tmp_path, clock, 5, "notify", prefix="new")
    where = {"state": "dead", "handler": "download_audio", "since": since}
    counted = (await api.post("/jobs/retry", json={**where, "dry_run": True})).json()
    assert counted["matched"] == 60
    assert "requeued" not in counted
    page = (await api.get("/jobs", params={"state": "dead", "handler": "download_audio",
                                              "limit": 10})).json()
    assert len(page["items"]) == 10
    done = (await api.post("/jobs/retry", json=where)).json()
    assert done["requeued"] == 60
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        left = await store.admin.find_jobs(JobFilter(state=JobState.DEAD))
        queued = await store.admin.find_jobs(JobFilter(state=JobState.QUEUED))
    assert sorted(j.handler for j in left) == ["download_audio"] * 3 + ["notify"] * 5
    assert len(queued) == 60
    again = (await api.post("/jobs/retry", json=where)).json()
    assert again["matched"] == 0
    assert again["requeued"] == 0
    assert (await api.post("/jobs/retry", json={"state": "queued"})).status_code == 400


async def test_job_detail_and_single_retry(
    api: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    """A dead job shows its error; retrying it queues it once, the second retry does nothing."""
    [job_id] = await dead_jobs(tmp_path, clock, 1, "download_audio")
    detail = (await api.get(f"/jobs/{job_id}")).json()
    assert detail["state"] == "dead"
    assert [(a["attempt"], a["outcome"], a["error"]) for a in detail["attempt_log"]] == [
        (1, "dead", f"boom {job_id}")]
    first = (await api.post(f"/jobs/{job_id}/retry")).json()
    assert first == {"job_id": job_id, "was": "dead", "requeued": True}
    second = (await api.post(f"/jobs/{job_id}/retry")).json()
    assert second == {"job_id": job_id, "was": "queued", "requeued": False}
    assert (await api.get("/jobs/999999")).status_code == 404
    assert (await api.post("/jobs/abc/retry")).status_code == 404


async def test_task_shows_its_chain_both_ways(
    api: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    """create → extend → concat: the root lists its follow-ups with their level, the last one
    lists its parents up to the root, what created it, and the credits spent under the root."""
    from receiver.models import ChildState, ChildTask

    await deliver(api, clock, "root", "succeeded", "d-root")
    async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
        for parent, child, rule, kind, credits in (("root", "ext", "extend", "extend_music", 15),
                                                  ("ext", "cat", "concat", "concat_music", 2)):
            await store.outputs.claim_child(ChildTask(
                trigger_key=f"{parent}/{rule}", parent_task_id=parent, root_task_id="root",
                rule=rule, depth=1, task_type=kind, credits=credits, request={},
                child_task_id=None, state=ChildState.REQUESTED, error=None,
                created_at=clock.now(), updated_at=clock.now()))
            await store.outputs.update_child(f"{parent}/{rule}", state=ChildState.CREATED,
                                     child_task_id=child, now=clock.now())
    root = (await api.get("/tasks/root")).json()
    assert [(d["child_task_id"], d["level"]) for d in root["descendants"]] == [
        ("ext", 1), ("cat", 2)]
    leaf = (await api.get("/tasks/cat")).json()
    assert [(p["task_id"], p["rule"]) for p in leaf["parents"]] == [("root", None),
                                                                    ("ext", "extend")]
    assert leaf["created_by"]["rule"] == "concat"
    assert (leaf["root_task_id"], leaf["credits_under_root"]) == ("root", 17)
