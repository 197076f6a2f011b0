"""Text in a signed delivery that PostgreSQL cannot store as SQLite does, on both backends
alike: a NUL character (``\\u0000``, valid JSON) in the callback or in the webhook URL's
``?task_id=`` (PostgreSQL's text and jsonb cannot hold one: it is read as what JSON cannot
carry, absent), in a header, or an index entry past PostgreSQL's limit. The delivery is
recorded or quarantined, never answered 503 (which its sender would retry for ever)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.clips import is_text
from receiver.clock import FakeClock
from receiver.errors import ValueRefused
from receiver.payloads import parse_callback
from receiver.storage.roles import Storage
from tests.support import app_client, post_signed, settings_for, signed_headers

pytestmark = pytest.mark.anyio


def _settings(tmp_path: Path, database: Path | str) -> Any:
    url = database if isinstance(database, str) else None
    path = database if isinstance(database, Path) else tmp_path / "r.db"
    return settings_for(tmp_path, db_path=path, db_url=url, worker="off")


def test_text_with_a_nul_is_not_text() -> None:
    assert not is_text("a\x00b")
    assert is_text("ab")
    assert is_text("é\U0001f3b5")


def test_a_nul_in_a_field_reads_as_absent_and_the_rest_is_used() -> None:
    body = (b'{"task_id": "t", "message": "m\\u0000", "event": "song.completed", "data": '
            b'[{"clip_id": "c", "state": "succeeded", "title": "a\\u0000b", '
            b'"k\\u0000": 1, "nested": ["x\\u0000", "ok"]}]}')
    cb = parse_callback(body)
    assert (cb.task_id, cb.message) == ("t", None)
    clip = cb.clips[0]
    assert clip.title is None
    assert clip.raw["title"] is None
    assert "k\x00" not in clip.raw
    assert clip.raw["nested"] == [None, "ok"]
    assert parse_callback(b'{"task_id": "t\\u0000", "data": [{"clip_id": "c"}]}').task_id is None
    assert parse_callback(b'{"data": [{"clip_id": "c"}]}', task_id_hint="a\x00b").task_id is None


CASES = {
    # body, query, expected (status, answer's status, answer's task_id)
    "nul_in_task_id": (b'{"task_id": "t-1\\u0000x", "event": "song.completed", "data": []}',
                       "", (422, "quarantined", None)),
    "nul_in_fields": (b'{"task_id": "t-2", "event": "song.failed", "message": "x\\u0000y", '
                      b'"data": [{"clip_id": "c-2", "state": "failed", "title": "a\\u0000", '
                      b'"error_message": "e\\u0000", "audio_url": "https://cdn/a\\u0000.mp3"}]}',
                      "", (200, "recorded", "t-2")),
    "nul_in_query_hint": (b'{"event": "song.completed", "data": []}', "?task_id=a%00b",
                          (422, "quarantined", None)),
    "nul_in_query_hint_unusable_body": (b"not json", "?task_id=a%00b",
                                        (422, "quarantined", None)),
}


async def test_a_nul_is_recorded_or_quarantined_alike_on_both_backends(
        tmp_path: Path, clock: FakeClock, backend_database: Path | str) -> None:
    answers: dict[str, tuple[int, str, Any]] = {}
    async with app_client(create_app(_settings(tmp_path, backend_database),
                                     clock=clock)) as client:
        for name, (body, query, _) in CASES.items():
            got = await post_signed(client, body, clock=clock, delivery_id=name,
                                    path="/webhooks/sonic" + query)
            answers[name] = (got.status_code, got.json().get("status"),
                             got.json().get("task_id"))
        again = await post_signed(client, CASES["nul_in_fields"][0], clock=clock,
                                  delivery_id="nul_in_fields")
        listed = await client.get("/deliveries", params={"limit": 50})
    assert answers == {name: expected for name, (_, _, expected) in CASES.items()}
    assert again.json()["status"] == "duplicate"
    assert listed.status_code == 200
    assert {d["delivery_id"] for d in listed.json()["items"]} == set(CASES)


@pytest.mark.parametrize("path", ["/tasks/a%00b", "/deliveries/a%00b", "/ui/tasks/a%00b",
                                  "/ui/deliveries/a%00b", "/jobs?task_id=a%00b",
                                  "/ui/tasks?q=a%00b"])
async def test_an_admin_url_with_a_nul_is_refused_on_both_backends(
        tmp_path: Path, clock: FakeClock, backend_database: Path | str, path: str) -> None:
    """Nothing stored holds a NUL, so a path with one names nothing (404) and a query with one
    is a bad query (400, as the API documents): not a 500 from PostgreSQL refusing the
    parameter."""
    async with app_client(create_app(_settings(tmp_path, backend_database),
                                     clock=clock)) as client:
        got: httpx.Response = await client.get(path)
    assert got.status_code == (400 if "?" in path else 404), (got.status_code, got.text[:300])


async def test_a_nul_in_a_header_is_a_space_on_both_backends(
        tmp_path: Path, clock: FakeClock, backend_database: Path | str) -> None:
    """uvicorn refuses a NUL in a header; an ASGI server that passes one on (or a test's
    transport) must not make the delivery unstorable on PostgreSQL: RFC 9110 lets a recipient
    read it as a space."""
    body = b'{"task_id": "t-h", "data": []}'
    async with app_client(create_app(_settings(tmp_path, backend_database),
                                     clock=clock)) as client:
        recorded = await client.post("/webhooks/sonic", content=body, headers={
            **signed_headers(body, timestamp=int(clock.now()), delivery_id="h-1"),
            "X-Webhook-Event": "a\x00b", "X-Trace": "t\x00"})
        quarantined = await client.post("/webhooks/sonic", content=b"[]", headers={
            **signed_headers(b"[]", timestamp=int(clock.now()), delivery_id="h-2"),
            "X-Webhook-Event": "a\x00b"})
        kept = await client.get("/deliveries/h-1")
    assert (recorded.status_code, recorded.json()["status"]) == (200, "recorded")
    assert (quarantined.status_code, quarantined.json()["status"]) == (422, "quarantined")
    assert kept.json()["headers"]["x-trace"] == "t "


async def test_a_long_unknown_event_header_is_kept_cut_short_on_both_backends(
        tmp_path: Path, clock: FakeClock, backend_database: Path | str) -> None:
    """An X-Webhook-Event naming no known event is kept with the delivery as it came, in an
    indexed column: PostgreSQL refuses an index entry past 2,704 bytes (SQLite has no such
    limit), so it is kept cut to 200 characters; the delivery is recorded on both."""
    # 6,400 characters that do not compress (PostgreSQL compresses a long index entry)
    event = "".join(hashlib.sha256(str(n).encode()).hexdigest() for n in range(100))
    body = b'{"task_id": "t-e", "data": []}'
    async with app_client(create_app(_settings(tmp_path, backend_database),
                                     clock=clock)) as client:
        got = await client.post("/webhooks/sonic", content=body, headers={
            **signed_headers(body, timestamp=int(clock.now()), delivery_id="e-1"),
            "X-Webhook-Event": event})
        kept = await client.get("/deliveries/e-1")
    assert (got.status_code, got.json()["status"]) == (200, "recorded")
    assert kept.json()["event"] == event[:200]


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"task_id": "a\\u0000b"}'),
    ("application/x-www-form-urlencoded", b"task_id=a%00b"),
    ("application/json", b'{"task_id": "a\x00b"}'),
])
async def test_an_admin_body_with_a_nul_is_a_bad_request_on_both_backends(
        tmp_path: Path, clock: FakeClock, backend_database: Path | str, content_type: str,
        body: bytes) -> None:
    """A NUL in a changing admin request's body (an action's filter, a form) is refused as a
    bad request before any route reads it: nothing stored holds one."""
    async with app_client(create_app(_settings(tmp_path, backend_database),
                                     clock=clock)) as client:
        got = await client.post("/jobs/retry", content=body,
                                headers={"content-type": content_type})
        ready = await client.get("/readyz")
    assert (got.status_code, got.json()) == (400, {"error": "a value holds a NUL character"})
    assert ready.status_code == 200


async def test_a_value_the_database_refuses_is_no_outage(store: Storage) -> None:
    """PostgreSQL refuses a NUL even as a parameter: that is the work's fault, not the
    database's, so the store stays available (no store_unavailable, /readyz unchanged) and
    says so with ValueRefused; SQLite takes the same read and finds nothing."""
    if store.db.describe().startswith("postgresql"):
        with pytest.raises(ValueRefused):
            await store.admin.get_delivery("a\x00b")
    else:
        assert await store.admin.get_delivery("a\x00b") is None
    assert store.db.available
    assert await store.admin.get_delivery("absent") is None
