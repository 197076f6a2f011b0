"""The dashboard over httpx.ASGITransport: login with the token, pages render, and an action is
refused without the same origin and the form token."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from receiver.app import create_app
from receiver.clock import FakeClock
from tests.console.support import BASE, TOKEN, dead_jobs, deliver
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio


async def log_in(client: httpx.AsyncClient) -> str:
    """Log in through the form; returns the page's form token."""
    answer = await client.post("/ui/login?next=/ui/jobs", data={"token": TOKEN},
                               headers={"Origin": BASE})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/jobs"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    page = await client.get("/ui/jobs")
    assert page.status_code == 200
    found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert found
    return found.group(1)


async def test_pages_need_a_login_then_render(visitor: httpx.AsyncClient,
                                              clock: FakeClock) -> None:
    """Before login a page redirects to the form; a wrong token is refused; after login every
    page renders, the task page with its timeline."""
    first = await visitor.get("/ui/tasks")
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=/ui/tasks"
    wrong = await visitor.post("/ui/login", data={"token": "nope"}, headers={"Origin": BASE})
    assert wrong.status_code == 401
    await log_in(visitor)
    await deliver(visitor, clock, "t-1", "succeeded", "d-1", title="Starry Night")
    for path in ("/ui", "/ui/tasks", "/ui/tasks?partial=1", "/ui/tasks/t-1", "/ui/deliveries",
                 "/ui/deliveries/d-1", "/ui/jobs?state=dead", "/ui/audit"):
        page = await visitor.get(path)
        assert page.status_code == 200, path
    task = (await visitor.get("/ui/tasks/t-1")).text
    assert "Starry Night" in task
    assert "Timeline" in task
    assert (await visitor.get("/ui/tasks/missing")).status_code == 404


async def test_actions_refuse_cross_site_requests(
    visitor: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    """With the session cookie, a POST from another origin or without the form token is refused
    (403) and changes nothing; with both it retries the job and says so."""
    csrf = await log_in(visitor)
    [job_id] = await dead_jobs(tmp_path, clock, 1, "download_audio")
    form = {"job_id": str(job_id), "csrf": csrf}
    evil = await visitor.post("/ui/actions/retry-job", data=form,
                              headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    tokenless = await visitor.post("/ui/actions/retry-job", data={"job_id": str(job_id)},
                                   headers={"Origin": BASE})
    assert tokenless.status_code == 403
    api_with_cookie = await visitor.post(f"/jobs/{job_id}/retry")
    assert api_with_cookie.status_code == 403
    assert (await visitor.get(f"/jobs/{job_id}")).json()["state"] == "dead"
    ok = await visitor.post("/ui/actions/retry-job", data=form, headers={"Origin": BASE})
    assert ok.status_code == 303
    page = await visitor.get(ok.headers["location"])
    assert f"Job {job_id} queued again" in page.text
    assert (await visitor.get(f"/jobs/{job_id}")).json()["state"] == "queued"


async def test_bulk_retry_asks_with_the_count_first(
    visitor: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    """The bulk form first shows how many jobs match and changes nothing; confirming retries
    them all."""
    csrf = await log_in(visitor)
    await dead_jobs(tmp_path, clock, 3, "download_audio")
    form = {"csrf": csrf, "state": "dead", "handler": "download_audio"}
    ask = await visitor.post("/ui/actions/retry-jobs", data=form, headers={"Origin": BASE})
    assert ask.status_code == 200
    assert '<strong id="matched">3</strong>' in ask.text
    assert len((await visitor.get("/jobs", params={"state": "dead"})).json()["items"]) == 3
    yes = await visitor.post("/ui/actions/retry-jobs", data={**form, "confirm": "yes"},
                             headers={"Origin": BASE})
    assert yes.status_code == 303
    assert "3 of 3 matching jobs queued again" in (await visitor.get(yes.headers["location"])).text
    assert (await visitor.get("/jobs", params={"state": "dead"})).json()["items"] == []


async def test_logout_ends_the_session(visitor: httpx.AsyncClient) -> None:
    """After logging out, a page asks for the login again."""
    csrf = await log_in(visitor)
    out = await visitor.post("/ui/logout", data={"csrf": csrf}, headers={"Origin": BASE})
    assert out.status_code == 303
    assert (await visitor.get("/ui")).status_code == 303


async def test_quarantined_delivery_recorded_again_from_its_page(
    visitor: httpx.AsyncClient, clock: FakeClock
) -> None:
    csrf = await log_in(visitor)
    await post_signed(visitor, callback(None, [clip("c-9", "succeeded")]), clock=clock,
                      delivery_id="d-q")
    await post_signed(visitor, callback("t-9", [clip("c-9", "running")]), clock=clock,
                      delivery_id="d-k")
    page = await visitor.get("/ui/deliveries/d-q")
    assert "Record again" in page.text
    done = await visitor.post("/ui/actions/record-again",
                              data={"csrf": csrf, "delivery_id": "d-q",
                                    "back": "/ui/deliveries/d-q"}, headers={"Origin": BASE})
    assert done.status_code == 303
    after = await visitor.get(done.headers["location"])
    assert "Recorded again: recorded" in after.text
    assert "Record again</button>" not in after.text


async def test_open_admin_still_guards_the_forms(tmp_path: Path, clock: FakeClock) -> None:
    """Opened explicitly (no token), the pages need no login, but an action still needs this
    origin and the form token; with neither token nor opt-out the console is refused."""
    opened = settings_for(tmp_path, worker="off")  # tests' settings opt out explicitly
    async with app_client(create_app(opened, clock=clock)) as client:
        page = await client.get("/ui/jobs")
        assert page.status_code == 200
        found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
        assert found
        [job_id] = await dead_jobs(tmp_path, clock, 1, "download_audio")
        form = {"job_id": str(job_id), "csrf": found.group(1)}
        assert (await client.post("/ui/actions/retry-job", data=form)).status_code == 403
        ok = await client.post("/ui/actions/retry-job", data=form, headers={"Origin": BASE})
        assert ok.status_code == 303
    closed = settings_for(tmp_path / "closed", worker="off", insecure_open_admin=False)
    async with app_client(create_app(closed, clock=clock)) as client:
        refused = await client.get("/ui")
        assert refused.status_code == 403
        assert refused.json()["error"] == "admin_not_configured"


async def test_the_login_page_says_when_the_console_is_off(tmp_path: Path,
                                                          clock: FakeClock) -> None:
    closed = settings_for(tmp_path, worker="off", insecure_open_admin=False)
    async with app_client(create_app(closed, clock=clock)) as client:
        page = await client.get("/ui/login")
        assert page.status_code == 200
        assert "The console is off" in page.text
