"""Console sessions end: they are kept in the store, so a cookie saved before logout, before
the token changed or before the idle limit opens nothing afterwards, in any process; open
sessions are listed and can be ended. Wrong tokens are slowed down per address and audited;
named operators' tokens put their names in the audit log."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.auth import FREE_FAILURES, Throttle
from receiver.clock import FakeClock
from receiver.settings import Settings
from tests.console.support import TOKEN
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio
ALICE = "alice-token-7d1e9c3b5a2f4e6d8c0b"
ORIGIN = {"Origin": "http://receiver"}


def closed(tmp_path: Path, **changes: Any) -> Settings:
    return settings_for(tmp_path, **{"admin_token": TOKEN, "worker": "off",
                                      "insecure_open_admin": False, **changes})


@pytest.fixture
async def visit(tmp_path: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(closed(tmp_path), clock=clock)) as client:
        yield client


async def log_in(client: httpx.AsyncClient, token: str = TOKEN,
                 next_page: str = "/ui") -> httpx.Response:
    return await client.post("/ui/login", params={"next": next_page}, data={"token": token},
                             headers=ORIGIN)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def test_a_cookie_saved_before_logout_opens_nothing_afterwards(
    visit: httpx.AsyncClient,
) -> None:
    assert (await log_in(visit)).status_code == 303
    saved = dict(visit.cookies)
    page = await visit.get("/ui/jobs")
    assert page.status_code == 200
    out = await visit.post("/ui/logout", data={"csrf": csrf_of(page.text)}, headers=ORIGIN)
    assert out.headers["location"] == "/ui/login"
    visit.cookies.clear()
    visit.cookies.update(saved)  # the cookie an attacker copied before the logout
    for path in ("/ui", "/ui/tasks", "/ui/jobs", "/ui/audit", "/ui/sessions"):
        answer = await visit.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/ui/login?next=")
    assert (await visit.get("/tasks")).status_code == 401
    assert (await visit.get("/ui/live", params={"page": "/ui", "once": "1"})).status_code == 401


async def test_a_changed_token_ends_every_session_opened_with_the_old_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with app_client(create_app(closed(tmp_path), clock=clock)) as first:
        await log_in(first)
        saved = dict(first.cookies)
        assert (await first.get("/ui")).status_code == 200
    new = "a-new-token-after-rotation-5c4b3a29"
    async with app_client(create_app(closed(tmp_path, admin_token=new), clock=clock)) as again:
        again.cookies.update(saved)
        assert (await again.get("/ui")).status_code == 303
    # a second process with the old token still accepts it: sessions are in the store
    async with app_client(create_app(closed(tmp_path), clock=clock)) as other:
        other.cookies.update(saved)
        assert (await other.get("/ui")).status_code == 200


async def test_a_session_ends_after_the_idle_limit_and_the_longest_life(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = closed(tmp_path, session_idle_s=600.0, session_max_s=3600.0)
    async with app_client(create_app(settings, clock=clock)) as client:
        await log_in(client)
        for _ in range(5):  # used every 9 minutes: never idle, until the longest life ends
            clock.advance(540)
            assert (await client.get("/ui")).status_code == 200
        clock.advance(3600 - 5 * 540)
        assert (await client.get("/ui")).status_code == 303
        await log_in(client)
        clock.advance(601)
        idle = await client.get("/ui/tasks?state=running")
        assert idle.status_code == 303
        # back to where the operator was, once logged in again
        assert idle.headers["location"] == "/ui/login?next=/ui/tasks%3Fstate%3Drunning&ended=1"
        assert (await log_in(client, next_page="/ui/tasks?state=running")).headers[
            "location"] == "/ui/tasks?state=running"


async def test_open_sessions_are_listed_and_can_be_ended_everywhere(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = replace(closed(tmp_path), operator_tokens=(("alice", ALICE),))
    app = create_app(settings, clock=clock)
    async with app_client(app) as admin, app_client(app) as alice:
        await log_in(admin)
        await log_in(alice, ALICE)
        listed = (await admin.get("/sessions", headers={"Authorization": f"Bearer {TOKEN}"}))
        sessions = listed.json()["items"]
        assert sorted(s["operator"] for s in sessions) == ["admin", "alice"]
        assert all(s["client"] == "127.0.0.1" for s in sessions)
        page = await admin.get("/ui/sessions")
        assert "this one" in page.text
        alices = next(s["id"] for s in sessions if s["operator"] == "alice")
        ended = await admin.post("/ui/actions/end-session", headers=ORIGIN,
                                 data={"csrf": csrf_of(page.text), "session_id": str(alices)})
        assert ended.status_code == 303
        assert (await alice.get("/ui")).status_code == 303
        assert (await admin.get("/ui")).status_code == 200
        audit = (await admin.get("/audit", headers={"Authorization": f"Bearer {TOKEN}"})).json()
    actions = [(a["action"], a["actor"]) for a in audit["items"]]
    assert ("end_session", "admin via session from 127.0.0.1") in actions
    assert ("login", "alice via login from 127.0.0.1") in actions


async def test_named_operators_are_who_the_audit_log_names(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = replace(closed(tmp_path), operator_tokens=(("alice", ALICE),))
    async with app_client(create_app(settings, clock=clock)) as client:
        await post_signed(client, callback("t-1", [clip("c", "succeeded")]), clock=clock,
                          delivery_id="d-1")
        bearer = {"Authorization": f"Bearer {ALICE}"}
        assert (await client.post("/deliveries/d-1/record-again", headers=bearer)).status_code \
            == 200
        await log_in(client, ALICE)
        page = await client.get("/ui/jobs")
        assert "alice" in page.text  # who is logged in, by the logout button
        audit = (await client.get("/audit", headers=bearer)).json()["items"]
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("login", "alice via login from 127.0.0.1"),
        ("record_again", "alice via token from 127.0.0.1")]


async def test_twenty_wrong_logins_from_one_address_slow_the_next_ones_down(
    visit: httpx.AsyncClient, clock: FakeClock
) -> None:
    answers = [(await log_in(visit, f"wrong-{n}")).status_code for n in range(20)]
    # the first few are only refused; then the address waits longer after each
    assert answers[:FREE_FAILURES] == [401] * FREE_FAILURES
    assert 429 in answers[FREE_FAILURES:]
    refused = await log_in(visit)  # even the right token waits its turn
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "Too many wrong tokens" in refused.text
    clock.advance(int(refused.headers["Retry-After"]))
    assert (await log_in(visit)).status_code == 303
    audit = (await visit.get("/audit", headers={"Authorization": f"Bearer {TOKEN}"})).json()
    refusals = [a for a in audit["items"] if a["action"] == "login_refused"]
    assert refusals
    assert all(a["actor"] == "unknown via login from 127.0.0.1" for a in refusals)


async def test_wrong_bearer_tokens_are_slowed_down_and_audited(
    visit: httpx.AsyncClient, clock: FakeClock
) -> None:
    wrong = {"Authorization": "Bearer not-the-token-but-long-enough-123"}
    statuses = [(await visit.get("/jobs", headers=wrong)).status_code for _ in range(8)]
    assert statuses[:FREE_FAILURES] == [401] * FREE_FAILURES
    assert statuses[-1] == 429
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert (await visit.get("/jobs", headers=right)).status_code == 429
    clock.advance(600)
    assert (await visit.get("/jobs", headers=right)).status_code == 200
    audit = (await visit.get("/audit", headers=right)).json()["items"]
    assert {a["action"] for a in audit} == {"token_refused"}
    assert audit[0]["target"] == "/jobs"


def test_the_wait_grows_per_address_and_a_success_forgets_it() -> None:
    clock = FakeClock(1000.0)
    throttle = Throttle(clock)
    waits = []
    for _ in range(FREE_FAILURES + 4):
        throttle.failed("203.0.113.9")
        waits.append(throttle.wait_s("203.0.113.9"))
    assert waits == [0.0] * FREE_FAILURES + [1.0, 2.0, 4.0, 8.0]
    assert throttle.wait_s("203.0.113.10") == 0.0
    # an IPv6 host is counted by its /64
    for _ in range(FREE_FAILURES + 1):
        throttle.failed("2001:db8::1")
    assert throttle.wait_s("2001:db8::ffff") == 1.0
    throttle.succeeded("203.0.113.9")
    assert throttle.wait_s("203.0.113.9") == 0.0


async def test_an_action_after_the_session_ended_goes_to_the_login_page_and_back(
    visit: httpx.AsyncClient, clock: FakeClock
) -> None:
    await log_in(visit)
    page = await visit.get("/ui/jobs?state=dead")
    csrf = csrf_of(page.text)
    clock.advance(7200)  # idle past the limit
    answer = await visit.post("/ui/actions/retry-job", headers=ORIGIN, data={
        "csrf": csrf, "job_id": "1", "back": "/ui/jobs?state=dead"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=/ui/jobs%3Fstate%3Ddead&ended=1"
    login_page = await visit.get(answer.headers["location"])
    assert "Your session ended" in login_page.text


async def test_unknown_console_pages_are_the_consoles_own_page(
    visit: httpx.AsyncClient,
) -> None:
    assert (await visit.get("/ui/nope")).headers["location"] == "/ui/login?next=/ui/nope"
    await log_in(visit)
    missing = await visit.get("/ui/nope/deeper")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "The console has no such page" in missing.text
    # outside /ui, unknown paths still answer JSON, like the rest of the API
    assert (await visit.get("/nope", headers={"Authorization": f"Bearer {TOKEN}"})).json() \
        == {"error": "not_found"}
