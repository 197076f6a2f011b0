"""``POST /webhooks/<provider>[/<token>]`` over httpx.ASGITransport on a real SQLite file: each
provider's callback authenticated as that provider authenticates it, or refused and not
stored; a body nothing authenticates recorded unconfirmed, with no effect and no handler job
until a poll confirms it; the provider's name on the delivery and the task."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.models import JobFilter, Outcome
from receiver.providers.calls import token_hash
from receiver.recording import CONFIRM_HANDLER
from receiver.signatures import sign_kie, sign_standard
from receiver.storage.admin import TaskFilter
from receiver.storage.roles import sqlite_storage
from tests.provider_bodies import (
    AIMLAPI_SECRET,
    HMAC_KEY,
    PATH_SECRET,
    PIAPI_SECRET,
    aimlapi,
    piapi,
    piapi_clip,
    providers_table,
    suno,
    suno_clip,
)
from tests.support import COMPLETED, EMPTY_COUNTS, app_client, post_signed, settings_for

pytestmark = pytest.mark.anyio

TOKEN = "tok-" + "x" * 40
ROUTES = {"routes": [{"on": ["task.succeeded", "task.failed", "task.streaming"],
                      "handlers": ["notify_nothing"]}],
          "handlers": {"notify_nothing": {"path": "tests.test_provider_endpoints:nothing"}}}


async def nothing(event: Any, ctx: Any) -> None:
    """A handler for the routes above (the tests run no worker: its jobs are only counted)."""


def provider_settings(tmp_path: Path, **changes: Any) -> Any:
    tables = providers_table(
        sunoapi={"path_secret": PATH_SECRET},
        kie={"hmac_key": HMAC_KEY},
        apibox={},
        piapi={"webhook_secret": PIAPI_SECRET},
        aimlapi={"webhook_secret": AIMLAPI_SECRET},
    )
    return settings_for(tmp_path, providers=tables, worker="off", config=ROUTES, **changes)


@pytest.fixture
async def client(tmp_path: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(provider_settings(tmp_path), clock=clock)) as c:
        yield c


async def stored(tmp_path: Path) -> dict[str, Any]:
    """What the store holds: counts, deliveries (id → (outcome, provider, scheme)), tasks
    (id → (state, provider)) and jobs (handler names)."""
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        counts = dict(await store.admin.counts())
        jobs = await store.admin.find_jobs(JobFilter())
    conn = sqlite3.connect(tmp_path / "receiver.db")
    try:
        deliveries = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT delivery_id, outcome, provider, scheme FROM deliveries")}
        tasks = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT task_id, state, provider FROM tasks")}
    finally:
        conn.close()
    return {"counts": counts, "deliveries": deliveries, "tasks": tasks,
            "jobs": sorted(j.handler for j in jobs)}


async def add_token(tmp_path: Path, provider: str, task_id: str | None, token: str = TOKEN
                    ) -> None:
    """A token as POST /tasks keeps it (its hash, bound to the task once created)."""
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        await store.ingest.add_token(token_hash(token), provider=provider, now=1.0)
        if task_id is not None:
            await store.ingest.bind_token(token_hash(token), task_id)


async def test_a_sunoapi_callback_without_a_known_token_is_refused_and_not_stored(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    body = suno("complete", clips=[suno_clip("a")])
    for path, reason in (("/webhooks/sunoapi", "missing_token"),
                         ("/webhooks/sunoapi/" + TOKEN, "unknown_token"),
                         ("/webhooks/sunoapi/" + PATH_SECRET + "x", "unknown_token")):
        answer = await client.post(path, content=body)
        assert (answer.status_code, answer.json()) == (401, {"error": reason}), path
    assert (await stored(tmp_path))["counts"] == EMPTY_COUNTS


async def test_a_known_token_lets_the_body_in_unconfirmed_with_no_effect(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    """Recorded unconfirmed: the task known (pending), one confirmation job, no handler job,
    no clip, no transition; a repeat of the same body is the same delivery."""
    await add_token(tmp_path, "sunoapi", "t-1")
    body = suno("complete", clips=[suno_clip("a"), suno_clip("b")])
    answer = await client.post("/webhooks/sunoapi/" + TOKEN, content=body)
    assert answer.status_code == 200
    assert answer.json()["status"] == "unconfirmed"
    assert answer.json()["state"] == "pending"
    again = await client.post("/webhooks/sunoapi/" + TOKEN, content=body)
    assert again.json()["status"] == "unconfirmed"
    assert again.json()["delivery_id"] == answer.json()["delivery_id"]
    found = await stored(tmp_path)
    assert found["deliveries"] == {answer.json()["delivery_id"]: ("unconfirmed", "sunoapi",
                                                                  "token")}
    assert found["tasks"] == {"t-1": ("pending", "sunoapi")}
    assert found["jobs"] == [CONFIRM_HANDLER]
    assert (found["counts"]["clips"], found["counts"]["transitions"]) == (0, 0)


async def test_a_token_made_for_another_task_is_refused(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    await add_token(tmp_path, "sunoapi", "t-other")
    answer = await client.post("/webhooks/sunoapi/" + TOKEN, content=suno("complete"))
    assert (answer.status_code, answer.json()) == (401, {"error": "token_task_mismatch"})
    # a token of one provider is no token of another
    await add_token(tmp_path, "apibox", None, token=TOKEN + "b")
    answer = await client.post("/webhooks/sunoapi/" + TOKEN + "b", content=suno("complete"))
    assert answer.json() == {"error": "unknown_token"}
    assert (await stored(tmp_path))["counts"]["deliveries"] == 0


async def test_a_token_whose_create_is_in_flight_takes_any_task(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    """The provider may call back before the create call returned the task's id."""
    await add_token(tmp_path, "apibox", None)
    answer = await client.post("/webhooks/apibox/" + TOKEN,
                               content=suno("failed", "t-9", code=501, msg="failed"))
    assert (answer.status_code, answer.json()["status"]) == (200, "unconfirmed")


async def test_the_static_path_secret_lets_in_tasks_created_elsewhere(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    answer = await client.post("/webhooks/sunoapi/" + PATH_SECRET,
                               content=suno("first", "t-2", [suno_clip("a", audio="")]))
    assert answer.json()["status"] == "unconfirmed"
    assert (await stored(tmp_path))["deliveries"][answer.json()["delivery_id"]] == (
        "unconfirmed", "sunoapi", "path_secret")


async def test_kie_with_a_key_needs_its_signature_and_a_token(
        tmp_path: Path, client: httpx.AsyncClient, clock: FakeClock) -> None:
    await add_token(tmp_path, "kie", "t-1")
    body = suno("complete", clips=[suno_clip("a")])
    signed = sign_kie(HMAC_KEY, "t-1", int(clock.now()))
    unsigned = await client.post("/webhooks/kie/" + TOKEN, content=body)
    assert (unsigned.status_code, unsigned.json()) == (401, {"error": "missing_signature"})
    tokenless = await client.post("/webhooks/kie", content=body, headers=signed)
    assert (tokenless.status_code, tokenless.json()) == (401, {"error": "missing_token"})
    forged = await client.post("/webhooks/kie/" + TOKEN, content=body,
                               headers=sign_kie("guess", "t-1", int(clock.now())))
    assert forged.json() == {"error": "signature_mismatch"}
    answer = await client.post("/webhooks/kie/" + TOKEN, content=body, headers=signed)
    assert answer.json()["status"] == "unconfirmed"
    found = await stored(tmp_path)
    assert list(found["deliveries"].values()) == [("unconfirmed", "kie", "kie")]
    assert found["jobs"] == [CONFIRM_HANDLER]


async def test_piapi_is_recorded_at_once_when_its_secret_matches(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    body = piapi("completed", clips=[piapi_clip("c-1"), piapi_clip("c-2")])
    for headers in ({}, {"x-webhook-secret": "wrong"}):
        refused = await client.post("/webhooks/piapi", content=body, headers=headers)
        assert refused.status_code == 401
    assert (await stored(tmp_path))["counts"] == EMPTY_COUNTS
    with capture_logs() as logs:
        answer = await client.post("/webhooks/piapi", content=body,
                                   headers={"x-webhook-secret": PIAPI_SECRET})
    assert (answer.json()["status"], answer.json()["state"]) == ("recorded", "succeeded")
    found = await stored(tmp_path)
    assert found["tasks"] == {"p-1": ("succeeded", "piapi")}
    assert found["jobs"] == ["notify_nothing"]
    assert found["counts"]["clips"] == 2
    assert PIAPI_SECRET not in repr(logs)
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        detail = await store.admin.get_delivery(answer.json()["delivery_id"])
    assert detail is not None
    assert "x-webhook-secret" not in detail.raw.headers


async def test_aimlapi_signed_by_standard_webhooks_is_recorded_at_once(
        tmp_path: Path, client: httpx.AsyncClient, clock: FakeClock) -> None:
    body = aimlapi("completed")
    headers = sign_standard(AIMLAPI_SECRET, "msg_g1", body, int(clock.now()))
    answer = await client.post("/webhooks/aimlapi", content=body, headers=headers)
    assert (answer.json()["status"], answer.json()["state"]) == ("recorded", "succeeded")
    forged = await client.post("/webhooks/aimlapi", content=aimlapi("failed"), headers=headers)
    assert forged.status_code == 401
    found = await stored(tmp_path)
    assert found["deliveries"] == {"msg_g1": ("recorded", "aimlapi", "standard")}


async def test_an_unusable_body_with_a_valid_token_is_kept_as_quarantined(
        tmp_path: Path, client: httpx.AsyncClient) -> None:
    await add_token(tmp_path, "sunoapi", "t-1")
    answer = await client.post("/webhooks/sunoapi/" + TOKEN, content=suno("halfway"))
    assert (answer.status_code, answer.json()["reason"]) == (422, "unknown callbackType "
                                                                  "'halfway'")
    assert list((await stored(tmp_path))["deliveries"].values()) == [
        (Outcome.QUARANTINED.value, "sunoapi", "token")]


async def test_paths_that_name_no_enabled_provider_are_not_found(
        tmp_path: Path, clock: FakeClock) -> None:
    settings = settings_for(tmp_path, providers=providers_table(piapi={
        "webhook_secret": PIAPI_SECRET}))
    async with app_client(create_app(settings, clock=clock)) as client:
        for path in ("/webhooks/sunoapi", "/webhooks/nobody", "/webhooks/piapi/a/b",
                     "/webhooks/sonic/extra"):
            answer = await client.post(path, content=b"{}")
            assert answer.status_code == 404, path
        assert (await client.get("/webhooks/piapi")).status_code == 405


async def test_a_token_never_reaches_the_logs(tmp_path: Path,
                                              client: httpx.AsyncClient) -> None:
    await add_token(tmp_path, "sunoapi", "t-1")
    with capture_logs() as logs:
        await client.post("/webhooks/sunoapi/" + TOKEN, content=suno("complete"))
        await client.post("/webhooks/sunoapi/" + TOKEN + "x", content=suno("complete"))
    assert logs
    assert TOKEN not in repr(logs)
    assert {e.get("path") for e in logs if "path" in e} == {"/webhooks/sunoapi"}


async def test_an_unauthenticated_body_cannot_claim_another_deliverys_id(
        tmp_path: Path, client: httpx.AsyncClient, clock: FakeClock) -> None:
    """A body let in by a token is named by its digest under its provider, whatever id
    header it carries: it cannot make a later Sonic delivery of that id a duplicate."""
    await add_token(tmp_path, "sunoapi", "t-1")
    body = suno("complete", clips=[suno_clip("a")])
    taken = await client.post("/webhooks/sunoapi/" + TOKEN, content=body,
                              headers={"X-Webhook-Id": "sonic-1", "Idempotency-Key": "sonic-1"})
    assert taken.json()["status"] == "unconfirmed"
    assert taken.json()["delivery_id"].startswith("sunoapi:sha256:")
    sonic = await post_signed(client, COMPLETED, clock=clock, delivery_id="sonic-1")
    assert (sonic.json()["status"], sonic.json()["delivery_id"]) == ("recorded", "sonic-1")


async def test_provider_deliveries_are_recorded_alike_on_both_backends(
        tmp_path: Path, clock: FakeClock, backend_database: Path | str,
        backend_store: Any) -> None:
    """On PostgreSQL a group commit runs its units in batch statements: the provider on the
    delivery and the task, and an unconfirmed body's confirmation job, are written there as
    one at a time on SQLite."""
    url = backend_database if isinstance(backend_database, str) else None
    path = backend_database if isinstance(backend_database, Path) else tmp_path / "r.db"
    settings = provider_settings(tmp_path, db_path=path, db_url=url)
    async with backend_store() as store:
        await store.ingest.add_token(token_hash(TOKEN), provider="sunoapi", now=1.0)
        await store.ingest.bind_token(token_hash(TOKEN), "t-s")
    async with app_client(create_app(settings, clock=clock)) as client:
        answers = await asyncio.gather(
            client.post("/webhooks/sunoapi/" + TOKEN,
                        content=suno("complete", task_id="t-s", clips=[suno_clip("a")])),
            client.post("/webhooks/piapi", content=piapi("completed", "t-p", [piapi_clip("p")]),
                        headers={"x-webhook-secret": PIAPI_SECRET}),
            post_signed(client, COMPLETED, clock=clock, delivery_id="sonic-1"))
    assert [a.json()["status"] for a in answers] == ["unconfirmed", "recorded", "recorded"]
    async with backend_store() as store:
        deliveries = dict((await store.admin.totals(now=clock.now())).deliveries)
        tasks = {t.task.task_id: (t.task.state, t.task.provider)
                 for t in (await store.admin.list_tasks(TaskFilter(), limit=50)).items}
        jobs = sorted((j.task_id, j.handler) for j in await store.admin.find_jobs(JobFilter()))
    assert deliveries == {("unconfirmed", "token", "sunoapi"): 1,
                          ("recorded", "header_secret", "piapi"): 1,
                          ("recorded", "musicapi", "sonic"): 1}
    assert tasks["t-s"] == ("pending", "sunoapi")
    assert tasks["t-p"][1] == "piapi"
    assert ("t-s", CONFIRM_HANDLER) in jobs
    assert not [j for j in jobs if j[0] == "t-s" and j[1] != CONFIRM_HANDLER]
