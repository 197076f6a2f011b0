"""The webhook endpoint and the read API over httpx.ASGITransport, on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.errors import ValueRefused
from receiver.models import Delivery, Outcome, RecordResult
from receiver.recording import record
from receiver.routing import Router
from receiver.settings import load
from receiver.signatures import Scheme, sign_legacy, sign_standard
from receiver.storage.connector import Tx
from receiver.storage.ingest import Ingest
from receiver.storage.roles import Storage, sqlite_storage
from receiver.storage.sqlite import SQLiteConnector
from tests.support import (
    EMPTY_COUNTS,
    SECRET,
    app_client,
    callback,
    clip,
    http_client,
    post_signed,
    settings_for,
    signed_headers,
)

pytestmark = pytest.mark.anyio

COMPLETED = callback("t-1", [clip("c1", "succeeded", duration="104.88"),
                             clip("c2", "succeeded", duration=99)], event="song.completed")


@pytest.fixture
async def client(tmp_path: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(settings_for(tmp_path), clock=clock)) as c:
        yield c


async def counts(tmp_path: Path) -> dict[str, int]:
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        return dict(await store.admin.counts())


async def test_signed_delivery_is_recorded_then_duplicate(
    client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    first = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
    assert first.status_code == 200
    assert first.json() == {
        "status": "recorded", "delivery_id": "d-1", "task_id": "t-1", "state": "succeeded"}
    again = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert (await counts(tmp_path))["deliveries"] == 1


async def test_without_an_id_header_the_delivery_id_is_a_digest_of_the_signed_content(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    first = await post_signed(client, COMPLETED, clock=clock)
    again = await post_signed(client, COMPLETED, clock=clock)
    assert first.json()["delivery_id"].startswith("sha256:")
    assert again.json() == {**first.json(), "status": "duplicate"}


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"secret": "wrong-secret"}, "signature_mismatch"),
        ({"timestamp_shift": -301}, "timestamp_expired"),
        ({"timestamp_shift": 301}, "timestamp_in_future"),
        ({"body": COMPLETED + b" "}, "signature_mismatch"),
    ],
)
async def test_bad_signatures_get_401_and_store_nothing(
    client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path, tamper: dict[str, Any],
    reason: str,
) -> None:
    tamper = dict(tamper)  # the parameter is shared by every run of this test in a process
    headers_body = tamper.pop("body", COMPLETED)
    shift = tamper.pop("timestamp_shift", 0)
    headers = signed_headers(COMPLETED, timestamp=int(clock.now()) + shift, **tamper)
    with capture_logs() as logs:
        response = await client.post("/webhooks/sonic", content=headers_body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": reason}
    assert await counts(tmp_path) == EMPTY_COUNTS
    rejected = [e for e in logs if e["event"] == "signature_rejected"]
    assert [e["reason"] for e in rejected] == [reason]
    signature = headers["X-Webhook-Signature"].removeprefix("sha256=")
    assert SECRET not in repr(logs)
    assert signature not in repr(logs)


async def test_malformed_signature_headers_get_401(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"X-Webhook-Signature": "sha256=zz", "X-Webhook-Timestamp": "1"},
        {"X-Webhook-Signature": "sha256=" + "0" * 64, "X-Webhook-Timestamp": "soon"},
    ):
        response = await client.post("/webhooks/sonic", content=COMPLETED, headers=headers)
        assert response.status_code == 401, headers


async def test_body_over_the_limit_is_413(tmp_path: Path, clock: FakeClock) -> None:
    app = create_app(settings_for(tmp_path, max_body_bytes=1024), clock=clock)
    async with app_client(app) as client:
        big = callback("t-1", [clip("c1", "succeeded", lyrics="x" * 2000)])
        response = await post_signed(client, big, clock=clock)
        assert response.status_code == 413
        assert response.json() == {"error": "body_too_large", "limit": 1024}

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
            for _ in range(4):
                yield b"x" * 512

        streamed = await client.post("/webhooks/sonic", content=chunks())
        assert streamed.status_code == 413
    assert (await counts(tmp_path))["deliveries"] == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe\xfd", "body is not UTF-8"),
        (b"null", "body is a JSON null, not an object"),
        (b"[]", "body is a JSON array, not an object"),
        (b'{"data": "x"}', "data is a JSON string, not a list of clips"),
    ],
)
async def test_verified_but_unusable_bodies_are_kept_raw_and_answered_422(
    client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path, body: bytes, reason: str
) -> None:
    response = await post_signed(client, body, clock=clock, delivery_id="q-1")
    assert response.status_code == 422
    assert response.json()["reason"] == reason
    assert response.json()["status"] == "quarantined"
    with contextlib.closing(sqlite3.connect(tmp_path / "receiver.db")) as db:
        rows = db.execute(
            "SELECT outcome, reason, body FROM deliveries WHERE delivery_id = 'q-1'").fetchall()
    assert rows == [("quarantined", reason, body)]


async def test_task_id_comes_from_the_query_when_the_body_lacks_it(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    body = callback(None, [clip("c9", "running")], event="song.streaming")
    response = await post_signed(client, body, clock=clock, path="/webhooks/sonic?task_id=q-7")
    assert response.json()["task_id"] == "q-7"
    assert response.json()["state"] == "running"


async def test_succeeded_before_running_ends_succeeded_with_history(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    streaming = callback("t-1", [clip("c1", "running"), clip("c2", "running")])
    await post_signed(client, COMPLETED, clock=clock, delivery_id="d-2", event="song.completed")
    late = await post_signed(client, streaming, clock=clock, delivery_id="d-1",
                             event="song.streaming")
    assert late.json()["state"] == "succeeded"
    view = (await client.get("/tasks/t-1")).json()
    assert view["task"]["state"] == "succeeded"
    assert [c["duration"] for c in view["clips"]] == [104.88, 99.0]
    assert [(t["entity_id"], t["to"], t["delivery_id"]) for t in view["transitions"]] == [
        ("c1", "succeeded", "d-2"), ("c2", "succeeded", "d-2"), ("t-1", "succeeded", "d-2")]


async def test_read_api_needs_the_admin_token_when_set(tmp_path: Path, clock: FakeClock) -> None:
    app = create_app(settings_for(tmp_path, admin_token="adm1n"), clock=clock)
    async with app_client(app) as client:
        await post_signed(client, COMPLETED, clock=clock)
        assert (await client.get("/tasks/t-1")).status_code == 401
        bad = await client.get("/tasks/t-1", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        good = await client.get("/tasks/t-1", headers={"Authorization": "Bearer adm1n"})
        assert good.status_code == 200
        missing = await client.get("/tasks/none", headers={"Authorization": "Bearer adm1n"})
        assert missing.status_code == 404
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_readyz_reports_an_unwritable_database(tmp_path: Path, clock: FakeClock) -> None:
    app = create_app(replace(settings_for(tmp_path), db_lock_timeout_s=0.05), clock=clock)
    async with app_client(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        with contextlib.closing(sqlite3.connect(tmp_path / "receiver.db")) as other:
            # Another process holds the write lock past the lock timeout: not ready.
            other.execute("BEGIN EXCLUSIVE")
            assert (await client.get("/readyz")).status_code == 503
            other.execute("ROLLBACK")
        assert (await client.get("/readyz")).status_code == 200


async def test_readyz_is_unavailable_outside_the_lifespan(tmp_path: Path) -> None:
    """Before the lifespan has opened the store, and after it has closed it, /readyz answers
    503 while /healthz answers 200."""
    app = create_app(settings_for(tmp_path, worker="off"))

    async def probe() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as c:
            return (await c.get("/healthz")).status_code, (await c.get("/readyz")).status_code

    assert await probe() == (200, 503)
    async with app_client(app) as client:
        assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert await probe() == (200, 503)


async def test_legacy_and_standard_schemes_when_enabled(tmp_path: Path, clock: FakeClock) -> None:
    app = create_app(
        settings_for(tmp_path, schemes=(Scheme.LEGACY, Scheme.STANDARD),
                     webhook_secrets=(SECRET, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        clock=clock,
    )
    async with app_client(app) as client:
        legacy = await client.post("/webhooks/sonic", content=COMPLETED,
                                   headers=sign_legacy(SECRET, COMPLETED))
        assert legacy.status_code == 200
        body = callback("t-2", [clip("x", "running")])
        std_headers = sign_standard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", body,
                                    int(clock.now()))
        std = await client.post("/webhooks/sonic", content=body, headers=std_headers)
        assert std.status_code == 200
        assert std.json()["delivery_id"] == "msg_1"


async def test_insecure_mode_accepts_unsigned_deliveries(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, webhook_secrets=(), insecure_no_verify=True))
    async with app_client(app) as client:
        response = await client.post("/webhooks/sonic", content=COMPLETED)
    assert response.status_code == 200
    assert response.json()["status"] == "recorded"


async def test_every_log_line_of_a_delivery_carries_its_ids(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await post_signed(client, COMPLETED, clock=clock, delivery_id="d-9")
    recorded = [e for e in logs if e["event"] == "delivery_recorded"]
    assert recorded == [
        {**recorded[0], "delivery_id": "d-9", "task_id": "t-1", "state": "succeeded"}]
    assert json.dumps(recorded[0], default=str)  # serialisable as a JSON line


async def test_dead_jobs_are_listed_with_their_error(tmp_path: Path, clock: FakeClock) -> None:
    from receiver.jobs import PermanentError
    from receiver.registry import Registry

    async def broken(event: object, ctx: object) -> None:
        raise PermanentError("cannot")

    registry = Registry()
    registry.register("broken", broken, origin="test")
    # no in-process worker: this test runs the job itself, once
    settings = settings_for(tmp_path, worker="off",
                            config={"routes": [{"on": "task.succeeded", "handlers": ["broken"]}]})
    app = create_app(settings, clock=clock, registry=registry)
    async with app_client(app) as client:
        await post_signed(client, COMPLETED, clock=clock)
        assert app.state.runtime.worker is None
        assert await app.state.runtime.make_worker(poll_s=1.0).run_once() == 1
        dead = (await client.get("/jobs?state=dead")).json()["items"]
        assert [(j["handler"], j["last_error"]) for j in dead] == [
            ("broken", "PermanentError: cannot")]
        assert (await client.get("/jobs?state=done")).json()["items"] == []
        assert (await client.get("/jobs?state=nope")).status_code == 400
        task = (await client.get("/tasks/t-1")).json()
        assert [j["state"] for j in task["jobs"]] == ["dead"]
        assert task["files"] == []
        assert task["children"] == []


# ---- validly signed garbage is kept, never a 5xx (issue 8, item 1) ------------------------------

HUGE = "7" * 5000
GARBAGE = {
    "huge_task_id": (f'{{"task_id": {HUGE}, "data": []}}'.encode(), 200),  # ?task_id= named it
    "huge_clip_id": (f'{{"data": [{{"clip_id": {HUGE}}}]}}'.encode(), 422),
    "huge_unknown_field": (f'{{"task_id": "g", "n": {HUGE}, "data": []}}'.encode(), 200),
    "surrogate_task_id": (b'{"task_id": "\\ud800", "data": [{"clip_id": "c"}]}', 200),
    "surrogate_clip_id": (b'{"task_id": "g", "data": [{"clip_id": "\\udfff"}]}', 422),
    "surrogate_fields": (b'{"task_id": "g", "platform": "\\ud800", "message": "\\ud800", '
                         b'"data": [{"clip_id": "c", "state": "failed", "title": "\\ud800", '
                         b'"tags": "\\udc00", "lyrics": "\\udbff", "audio_url": "\\ud800", '
                         b'"error_message": "\\ud800", "\\ud800": {"\\udfff": "\\ud800"}}]}', 200),
    "code_superscript": (b'{"task_id": "g", "code": "\\u00b2", "data": []}', 200),
    "code_5000_digits": (f'{{"task_id": "g", "code": "{HUGE}", "data": []}}'.encode(), 200),
    "duration_10e400": (b'{"task_id": "g", "data": [{"clip_id": "c", "duration": 1'
                        + b"0" * 400 + b"}]}", 200),
    "nan_and_infinity": (b'{"task_id": "g", "data": [{"clip_id": "c", "duration": NaN, '
                         b'"x": [Infinity, -Infinity, 1e999]}]}', 200),
    "deep_nesting": (b'{"task_id": "g", "x": ' + b"[" * 900 + b"]" * 900 + b"}", 422),
    "deeper_than_the_parser": (b'{"task_id": "g", "x": ' + b"[" * 100_000, 422),
}


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_signed_garbage_is_recorded_or_quarantined_and_reads_back(
    client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path, name: str
) -> None:
    body, status = GARBAGE[name]
    response = await post_signed(client, body, clock=clock, delivery_id="g-1",
                                 path="/webhooks/sonic?task_id=hint")
    assert response.status_code == status, response.text
    with contextlib.closing(sqlite3.connect(tmp_path / "receiver.db")) as db:
        rows = db.execute(
            "SELECT outcome, body FROM deliveries WHERE delivery_id = 'g-1'").fetchall()
    assert [tuple(r) for r in rows] == [
        ("recorded" if status == 200 else "quarantined", body)]  # kept raw, byte for byte
    if status == 200:
        view = await client.get("/tasks/" + response.json()["task_id"])
        assert view.status_code == 200  # what was stored can be served as strict JSON
        assert view.json()["task"]["state"] in ("pending", "failed")
    again = await post_signed(client, body, clock=clock, delivery_id="g-1")
    assert again.status_code == status


class BrokenInsideTheTransaction(Ingest):
    """Fault injection (no input reaches a bug in recording any more, so one is planted): the
    first try of a usable delivery fails after writing, inside its transaction."""

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        if delivery.callback is None:
            return await super().record_delivery(delivery, router=router)

        async def broken(tx: Tx) -> RecordResult:
            result = await record(tx, delivery, router=router)
            if result.outcome is Outcome.RECORDED:
                raise self.fault
            return result

        return await self.db.write(broken)

    fault: Exception = LookupError("a bug")


class RefusedInsideTheTransaction(BrokenInsideTheTransaction):
    """The same, the database refusing a value the delivery carried (no input reaches one any
    more: PostgreSQL's refusals of NUL and of long index entries are read around): no
    outage, and the same delivery would be refused again, so it is kept aside too."""

    fault = ValueRefused("PostgreSQL refused a value")


class BrokenEveryTime(Ingest):
    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        raise RuntimeError("a bug that also breaks keeping the body")


def storage_with(ingest: type[Ingest], path: Path) -> Storage:
    """Storage in the file at ``path`` whose ingest role is ``ingest``."""
    storage = sqlite_storage(path)
    return dataclasses.replace(storage, ingest=ingest(storage.db))


@pytest.mark.parametrize("ingest", [BrokenInsideTheTransaction, RefusedInsideTheTransaction])
async def test_a_bug_while_recording_is_rolled_back_kept_aside_and_answered_503(
    tmp_path: Path, clock: FakeClock, ingest: type[BrokenInsideTheTransaction],
) -> None:
    async with storage_with(ingest, tmp_path / "receiver.db") as store:
        app = create_app(settings_for(tmp_path), clock=clock, storage=store)
        async with app_client(app) as client:
            first = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
            assert first.status_code == 503
            reason = f"internal error while recording: {type(ingest.fault).__name__}"
            assert first.json() == {"error": "store_unavailable", "reason": reason,
                                    "kept": True, "delivery_id": "d-1"}
            # the sender's retry finds the body kept aside, and stops retrying
            retry = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
            assert (retry.status_code, retry.json()["reason"]) == (422, reason)
        counts_now = await store.admin.counts()
    with contextlib.closing(sqlite3.connect(tmp_path / "receiver.db")) as db:
        rows = db.execute("SELECT outcome, reason, body FROM deliveries").fetchall()
    assert rows == [("quarantined", reason, COMPLETED)]
    assert counts_now["tasks"] == counts_now["clips"] == counts_now["transitions"] == 0


async def test_when_even_keeping_the_body_fails_the_answer_is_still_a_clean_503(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with storage_with(BrokenEveryTime, tmp_path / "receiver.db") as store:
        app = create_app(settings_for(tmp_path), clock=clock, storage=store)
        async with app_client(app) as client:
            response = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
    assert response.status_code == 503
    assert response.json()["kept"] is False


async def test_a_store_that_cannot_commit_answers_503_and_keeps_nothing_half_done(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = create_app(replace(settings_for(tmp_path), db_lock_timeout_s=0.05), clock=clock)
    async with app_client(app) as client:
        with contextlib.closing(sqlite3.connect(tmp_path / "receiver.db")) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the lock
            locked = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
            other.execute("ROLLBACK")
        assert (locked.status_code, locked.json()) == (503, {"error": "store_unavailable"})
        assert (await counts(tmp_path))["deliveries"] == 0
        later = await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
        assert (later.status_code, later.json()["status"]) == (200, "recorded")


# ---- what the mutation run found untested (issue 8, item 6) ------------------------------------


async def test_signature_and_credential_headers_are_never_stored(
    client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    headers = {
        **signed_headers(COMPLETED, timestamp=int(clock.now()), delivery_id="d-1"),
        **sign_legacy(SECRET, COMPLETED),
        **sign_standard(SECRET, "d-1", COMPLETED, int(clock.now())),
        "Authorization": "Bearer hunter2", "Cookie": "session=hunter3",
        "Proxy-Authorization": "Basic aHVudGVyNA==", "X-Trace": "kept",
    }
    response = await client.post("/webhooks/sonic", content=COMPLETED, headers=headers)
    assert response.status_code == 200
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        (raw,) = await store.admin.raw_deliveries()
    stored = dict(raw.headers)
    assert stored["x-trace"] == "kept"
    assert stored["x-webhook-timestamp"] == str(int(clock.now()))  # only secrets are dropped
    for name in ("x-webhook-signature", "x-signature", "webhook-signature", "authorization",
                 "cookie", "proxy-authorization"):
        assert name not in stored
    text = json.dumps(stored)
    for value in ("hunter", headers["X-Webhook-Signature"][7:], headers["X-Signature"],
                  headers["webhook-signature"][3:]):
        assert value not in text


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ({"X-Webhook-Id": "from-x", "Idempotency-Key": "from-idem", "webhook-id": "from-std"},
         "from-x"),
        ({"Idempotency-Key": "from-idem", "webhook-id": "from-std"}, "from-idem"),
        ({"webhook-id": "from-std"}, "from-std"),
        ({"X-Webhook-Id": " ", "Idempotency-Key": "x" * 201, "webhook-id": "from-std"},
         "from-std"),
    ],
)
async def test_the_delivery_id_header_precedence(
    client: httpx.AsyncClient, clock: FakeClock, present: dict[str, str], expected: str
) -> None:
    headers = {**signed_headers(COMPLETED, timestamp=int(clock.now())), **present}
    response = await client.post("/webhooks/sonic", content=COMPLETED, headers=headers)
    assert response.json()["delivery_id"] == expected


async def test_receiver_schemes_standard_alone_accepts_standard_and_refuses_musicapi(
    tmp_path: Path, clock: FakeClock
) -> None:
    loaded = load({"SONIC_WEBHOOK_SECRET": SECRET, "RECEIVER_SCHEMES": "standard",
                   "RECEIVER_DB": str(tmp_path / "receiver.db")})
    assert loaded.schemes == (Scheme.STANDARD,)
    app = create_app(replace(loaded, media_dir=tmp_path / "media", config={"routes": []}),
                     clock=clock)
    async with app_client(app) as client:
        std = await client.post("/webhooks/sonic", content=COMPLETED,
                                headers=sign_standard(SECRET, "m-1", COMPLETED, int(clock.now())))
        assert (std.status_code, std.json()["delivery_id"]) == (200, "m-1")
        musicapi = await post_signed(client, COMPLETED, clock=clock)
        assert (musicapi.status_code, musicapi.json()) == (401, {"error": "missing_signature"})
        # a UTF-8 webhook-id as a sender's library writes it, raw bytes on the wire
        msg_id = "m-\N{MUSICAL NOTE}"
        signed = sign_standard(SECRET, msg_id, COMPLETED, int(clock.now()))
        wire = [(k.encode(), v.encode()) for k, v in signed.items()]  # webhook-id as UTF-8
        accepted = await client.post("/webhooks/sonic", content=COMPLETED, headers=wire)
        assert accepted.status_code == 200


@pytest.mark.parametrize(("setting", "pragma"), [(None, 1), ("normal", 1), ("full", 2)])
async def test_db_synchronous_is_applied_to_the_connection(
    tmp_path: Path, setting: str | None, pragma: int
) -> None:
    env = {"SONIC_WEBHOOK_SECRET": SECRET, "RECEIVER_DB": str(tmp_path / "receiver.db")}
    if setting is not None:
        env["RECEIVER_DB_SYNCHRONOUS"] = setting
    loaded = replace(load(env), media_dir=tmp_path / "media", config={"routes": []})
    app = create_app(loaded)
    async with app_client(app):
        connector = app.state.runtime.storage.db.connector
        assert isinstance(connector, SQLiteConnector)
        value = await connector.writer_pragma("synchronous")  # it is per connection
    assert value == pragma


# ---- the webhook as a plain ASGI endpoint (issue 12) -------------------------------------------


async def test_other_methods_get_a_json_405_that_names_post(client: httpx.AsyncClient) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(method, "/webhooks/sonic")
        assert (response.status_code, response.json()) == (405, {"error": "method_not_allowed"})
        assert response.headers["allow"] == "POST"
        assert response.headers["content-type"] == "application/json"


async def test_before_the_lifespan_has_opened_the_store_a_delivery_gets_503(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = create_app(settings_for(tmp_path), clock=clock)
    transport = httpx.ASGITransport(app=app)  # no lifespan: the store is never opened
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        response = await post_signed(client, COMPLETED, clock=clock)
    assert (response.status_code, response.json()) == (503, {"error": "store_unavailable"})


async def test_a_repeated_header_counts_once_by_its_first_value(
    client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    signed = signed_headers(COMPLETED, timestamp=int(clock.now()))
    wire = [(k.encode(), v.encode()) for k, v in signed.items()]
    wire += [(b"x-webhook-id", b"first"), (b"x-webhook-id", b"second"),
             (b"x-trace", b"one"), (b"x-trace", b"two")]
    response = await client.post("/webhooks/sonic", content=COMPLETED, headers=wire)
    assert (response.status_code, response.json()["delivery_id"]) == (200, "first")
    async with sqlite_storage(tmp_path / "receiver.db") as store:
        (raw,) = await store.admin.raw_deliveries()
    assert dict(raw.headers)["x-trace"] == "one"


async def test_a_client_gone_mid_body_is_not_answered_nor_logged_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from receiver.server import running

    settings = settings_for(tmp_path)
    with capture_logs() as logs:
        async with running(create_app(settings), settings=settings) as url:
            port = int(url.rsplit(":", 1)[1])
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /webhooks/sonic HTTP/1.1\r\nHost: r\r\nContent-Length: 1000\r\n"
                         b"\r\n" + b"{" * 10)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            async with http_client(base_url=url) as http:  # the server carries on
                response = await post_signed(http, COMPLETED)
                assert response.status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [e for e in logs if e["log_level"] == "error"]
    assert (await counts(tmp_path))["deliveries"] == 1


async def test_behind_a_root_path_the_webhook_is_served_by_its_route(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = create_app(settings_for(tmp_path), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            response = await post_signed(client, COMPLETED, clock=clock,
                                         path="/api/webhooks/sonic")
            assert (response.status_code, response.json()["status"]) == (200, "recorded")
            refused = await client.post("/api/webhooks/sonic", content=COMPLETED)
            assert refused.status_code == 401
