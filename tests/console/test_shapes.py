"""The JSON shapes over httpx.ASGITransport on a real SQLite file holding every kind of row: each
read answers exactly the keys it always has, and each answer is valid against the schema that
/openapi.json gives for it (made from the same definition)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.jobs import JobSpec
from receiver.models import AlertChange, ChildState, ChildTask, Result, StoredFile
from receiver.recording import insert_jobs
from receiver.storage.roles import sqlite_storage
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio
TOKEN = "shapes-token"

TASK = ["task_id", "state", "platform", "error", "first_seen_at", "updated_at", "last_event_at",
        "last_delivery_id", "task_type", "parent_task_id", "failure_category", "overdue_at"]
CLIP = ["clip_id", "state", "title", "tags", "lyrics", "audio_url", "image_url", "video_url",
        "duration", "mv", "created_at", "updated_at", "data"]
TRANSITION = ["entity", "entity_id", "from", "to", "delivery_id", "source", "at"]
JOB = ["id", "key", "handler", "route", "trigger", "task_id", "state", "attempts",
       "max_attempts", "run_after", "last_error", "created_at", "updated_at"]
ATTEMPT = ["attempt", "owner", "started_at", "finished_at", "outcome", "error"]
FILE = ["clip_id", "kind", "path", "size", "sha256", "url", "content_type"]
CHILD = ["child_task_id", "rule", "task_type", "depth", "credits", "state", "error",
         "root_task_id"]
RESULT = ["clip_id", "kind", "data"]
CHAIN_LINK = ["task_id", "task_type", "state", "rule", "credits"]
DELIVERY = ["delivery_id", "source", "scheme", "event", "task_id", "outcome", "reason",
            "received_at", "duplicates", "last_duplicate_at"]
AUDIT = ["id", "at", "actor", "action", "target", "detail"]
ALERT = ["id", "rule", "subject", "text", "advice", "link", "fired_at", "seen_at", "notified_at",
         "repeats", "resolved_at"]
TASK_DETAIL = ["task", "clips", "transitions", "jobs", "files", "children", "results", "parents",
               "descendants", "created_by", "root_task_id", "credits_under_root"]
PAGE = ["items", "next_cursor"]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app over a database with a task chain (root → ext → cat), clips, transitions, a
    duplicate, a quarantined delivery, jobs (one dead, then retried), a file, a result and an
    audit entry."""
    clock = FakeClock(1_800_000_000.25)
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    async with app_client(create_app(settings, clock=clock)) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        running = callback("root", [clip("c1", "running", title="Café", tags="pop",
                                         duration=12.5)], event="song.streaming")
        await post_signed(c, running, clock=clock, delivery_id="d-1")
        clock.advance(1.5)
        done = callback("root", [clip("c1", "succeeded", title="Café", nested=[1, {"a": None}])],
                        event="song.completed")
        for _ in range(2):  # the second is a duplicate
            await post_signed(c, done, clock=clock, delivery_id="d-2")
        await post_signed(c, b'{"code": 200, "data": "nope"}', clock=clock, delivery_id="d-bad")
        async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
            specs = [JobSpec(key=f"root/done/r/h/{i}", handler="h", route="r", options={},
                             task_id="root", trigger="task.succeeded", delivery_id="d-2",
                             max_attempts=2) for i in range(2)]
            await store.db.write(lambda tx: insert_jobs(tx, specs, at=clock.now()))
            [claimed] = await store.jobs.claim_jobs(owner="w", limit=1, now=clock.now(), lease_s=60)
            await store.jobs.kill_job(claimed.id, owner="w", error="boom", now=clock.now())
            await store.outputs.record_file(StoredFile(
                task_id="root", clip_id="c1", kind="audio", path="root/c1.mp3", size=3,
                sha256="abc", url=None, content_type="audio/mpeg", job_key="k",
                created_at=clock.now()))
            await store.outputs.record_result(Result(task_id="root", clip_id="c1", kind="bpm",
                                             data={"bpm": 120.5}, job_key="k2",
                                             created_at=clock.now()))
            for parent, child, rule in (("root", "ext", "extend"), ("ext", "cat", "concat")):
                await store.outputs.claim_child(ChildTask(
                    trigger_key=f"{parent}/{rule}", parent_task_id=parent, root_task_id="root",
                    rule=rule, depth=1, task_type=f"{rule}_music", credits=2, request={},
                    child_task_id=None, state=ChildState.REQUESTED, error=None,
                    created_at=clock.now(), updated_at=clock.now()))
                await store.outputs.update_child(f"{parent}/{rule}", state=ChildState.CREATED,
                                         child_task_id=child, now=clock.now())
        await post_signed(c, callback("cat", [clip("c9", "failed")], event="song.failed"),
                          clock=clock, delivery_id="d-3")
        assert (await c.post(f"/jobs/{claimed.id}/retry")).status_code == 200
        yield c


async def test_every_read_answers_the_keys_it_always_has(
    client: httpx.AsyncClient, tmp_path: Path,
) -> None:
    """Tasks, the task detail, jobs with their attempts, deliveries with their body, the audit
    log and the alerts answer these keys in this order, nulls included."""
    tasks = (await client.get("/tasks")).json()
    assert list(tasks) == PAGE
    assert {tuple(t) for t in tasks["items"]} == {(*TASK, "title", "titles", "clips")}

    root = (await client.get("/tasks/root")).json()
    assert list(root) == TASK_DETAIL
    assert list(root["task"]) == TASK
    assert [list(c) for c in root["clips"]] == [CLIP]
    assert root["clips"][0]["data"]["nested"] == [1, {"a": None}]
    assert {tuple(t) for t in root["transitions"]} == {tuple(TRANSITION)}
    assert [(t["from"], t["to"]) for t in root["transitions"] if t["entity"] == "task"] == [
        (None, "running"), ("running", "succeeded")]
    assert [list(j) for j in root["jobs"]] == [JOB, JOB]
    assert [list(f) for f in root["files"]] == [FILE]
    assert [list(c) for c in root["children"]] == [CHILD]
    assert [list(r) for r in root["results"]] == [RESULT]
    assert [list(d) for d in root["descendants"]] == [[*CHILD, "level", "task_state"]] * 2
    assert (root["parents"], root["created_by"], root["root_task_id"]) == ([], None, "root")

    leaf = (await client.get("/tasks/cat")).json()
    assert [list(p) for p in leaf["parents"]] == [CHAIN_LINK, CHAIN_LINK]
    assert list(leaf["created_by"]) == CHILD

    jobs = (await client.get("/jobs")).json()
    assert list(jobs) == PAGE
    details = [(await client.get(f"/jobs/{j['id']}")).json() for j in jobs["items"]]
    assert [list(d) for d in details] == [[*JOB, "attempt_log"]] * 2
    assert [list(a) for d in details for a in d["attempt_log"]] == [ATTEMPT]

    deliveries = (await client.get("/deliveries")).json()
    assert list(deliveries) == PAGE
    assert {tuple(d) for d in deliveries["items"]} == {tuple(DELIVERY)}
    detail = (await client.get("/deliveries/d-2")).json()
    assert list(detail) == [*DELIVERY, "headers", "body", "body_json", "pruned_at",
                            "transitions"]
    assert detail["duplicates"] == 1
    quarantined = (await client.get("/deliveries/d-bad")).json()
    assert (quarantined["body_json"], quarantined["transitions"]) == (
        {"code": 200, "data": "nope"}, [])

    audit = (await client.get("/audit")).json()
    assert list(audit) == PAGE
    assert [list(a) for a in audit["items"]] == [AUDIT]

    failed = (await client.get("/tasks/cat")).json()["task"]
    assert (failed["error"], failed["failure_category"]) == ("failed", "unknown")
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        await store.watch.settle(lambda opened: [AlertChange(
            kind="fire", rule="jobs_dead", subject="h", text="1 job of h gave up.",
            advice="Retry it.", link="/ui/jobs?state=dead")], now=1_800_000_100.0)
    alerts = (await client.get("/alerts", params={"active": "1"})).json()
    assert list(alerts) == PAGE
    assert [list(a) for a in alerts["items"]] == [ALERT]
    assert (await client.get("/alerts", params={"active": "yes"})).status_code == 400

    assert (await client.get("/tasks/nope")).json() == {"error": "task_not_found"}
    assert (await client.get("/nope")).json() == {"error": "not_found"}


async def test_every_answer_is_valid_against_its_schema(client: httpx.AsyncClient) -> None:
    """Each read, on rows of every kind, is valid against the component /openapi.json names
    for its 200 (or its error) answer."""
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    registry: Registry[Any] = Registry().with_resource(
        "urn:receiver", Resource.from_contents(document, default_specification=DRAFT202012))

    def check(path: str, template: str, status: int = 200) -> None:
        schema = (document["paths"][template]["get"]["responses"][str(status)]["content"]
                  ["application/json"]["schema"])
        validator = Draft202012Validator({"$ref": f"urn:receiver{schema['$ref']}"},
                                         registry=registry)
        answers.append((path, template, status, validator))

    answers: list[tuple[str, str, int, Draft202012Validator]] = []
    jobs = (await client.get("/jobs")).json()["items"]
    check("/tasks", "/tasks")
    for task_id in ("root", "ext", "cat"):
        check(f"/tasks/{task_id}", "/tasks/{task_id}")
    check("/tasks/nope", "/tasks/{task_id}", 404)
    check("/jobs", "/jobs")
    for job in jobs:
        check(f"/jobs/{job['id']}", "/jobs/{job_id}")
    check("/deliveries", "/deliveries")
    for delivery_id in ("d-1", "d-2", "d-bad", "d-3"):
        check(f"/deliveries/{delivery_id}", "/deliveries/{delivery_id}")
    check("/audit", "/audit")
    check("/tasks?state=nope", "/tasks", 400)
    for path, template, status, validator in answers:
        answer = await client.get(path)
        assert answer.status_code == status, path
        errors = [f"{list(e.absolute_path)}: {e.message}"
                  for e in validator.iter_errors(answer.json())]
        assert errors == [], (path, template)


async def test_every_reference_names_a_shape(client: httpx.AsyncClient) -> None:
    """Every ``$ref`` in /openapi.json names a component schema that the document holds."""
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    prefix = "#/components/schemas/"
    assert all(ref.startswith(prefix) for ref in refs)
    assert sorted(ref.removeprefix(prefix) for ref in refs if
                  ref.removeprefix(prefix) not in schemas) == []
