"""Live pages over a real server: the stream at /ui/live sends a page's live blocks, then again
each time they change (a task's new state within seconds), and says when the session ended;
``once=1`` answers the same blocks for the polling fallback; only the console's live pages
can be followed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.console.live import STREAM_S
from receiver.server import running
from tests.console.support import TOKEN
from tests.support import callback, clip, http_client, settings_for, signed_headers
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


async def deliver(http: httpx.AsyncClient, task_id: str, state: str, delivery_id: str) -> None:
    body = callback(task_id, [clip(f"{task_id}-c", state, title="Live")])
    answer = await http.post("/webhooks/sonic", content=body, headers={
        **signed_headers(body, delivery_id=delivery_id), "Content-Type": "application/json"})
    assert answer.status_code == 200


async def events(answer: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """The stream's events, as (name, data) pairs."""
    name, data = "message", ""
    async for line in answer.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield name, data
            name, data = "message", ""


async def test_a_tasks_new_state_reaches_its_open_page_within_seconds(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with running(create_app(settings)) as url, http_client(
            base_url=url, timeout=30) as http:
        await deliver(http, "t-live", "running", "d-1")
        login = await http.post("/ui/login", data={"token": TOKEN}, headers={"Origin": url})
        assert login.status_code == 303
        once = (await http.get("/ui/live", params={"page": "/ui/tasks/t-live",
                                                   "once": "1"})).json()
        assert set(once) == {"live_head", "live_chain", "live_clips", "live_results",
                             "live_timeline", "live_jobs"}
        assert '<span class="badge running" id="task-state">' in once["live_head"]
        seen: list[str] = []
        async with http.stream("GET", "/ui/live", params={"page": "/ui/tasks/t-live"}) as live:
            assert live.headers["content-type"].startswith("text/event-stream")
            stream = events(live)
            name, data = await anext(stream)
            assert name == "blocks"
            assert "badge running" in json.loads(data)["live_head"]
            await deliver(http, "t-live", "succeeded", "d-2")

            async def changed() -> bool:
                name, data = await anext(stream)
                seen.append(name)
                return name == "blocks" and 'badge succeeded" id="task-state"' in json.loads(
                    data)["live_head"]

            await wait_until(changed, within=10, what="the new state on the open page")
        assert STREAM_S < 30  # a server shutting down waits for no stream longer than this


async def test_the_stream_says_when_the_session_ended(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with running(create_app(settings)) as url, http_client(
            base_url=url, timeout=30) as http:
        await http.post("/ui/login", data={"token": TOKEN}, headers={"Origin": url})
        page = await http.get("/ui/jobs")
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert csrf is not None
        async with http.stream("GET", "/ui/live", params={"page": "/ui/jobs"}) as live:
            stream = events(live)
            assert (await anext(stream))[0] == "blocks"
            async with http_client(base_url=url, cookies=http.cookies) as other_tab:
                await other_tab.post("/ui/logout", data={"csrf": csrf.group(1)},
                                     headers={"Origin": url})

            async def ended() -> bool:
                return (await anext(stream))[0] == "ended"

            await wait_until(ended, within=10, what="the stream to say the session ended")
        assert (await http.get("/ui/live", params={"page": "/ui/jobs"})).status_code == 401


@pytest.mark.parametrize("page", ["/ui/audit", "/ui/sessions", "/tasks", "http://evil/ui",
                                  "//evil/ui", "/ui/nope", ""])
async def test_only_the_consoles_live_pages_can_be_followed(tmp_path: Path, page: str) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    async with running(create_app(settings)) as url, http_client(base_url=url) as http:
        answer = await http.get("/ui/live", params={"page": page, "once": "1"},
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404


async def test_time_passing_alone_sends_nothing_new(tmp_path: Path) -> None:
    """The blocks are sent again when what they show changed, not because a "2 min ago"
    became "4 min ago": the stream says ``: unchanged`` instead."""
    clock = FakeClock(time.time())  # the signed deliveries carry the real time
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with running(create_app(settings, clock=clock)) as url, http_client(
            base_url=url, timeout=30) as http:
        await deliver(http, "t-tick", "running", "d-1")
        await http.post("/ui/login", data={"token": TOKEN}, headers={"Origin": url})
        clock.advance(120)
        async with http.stream("GET", "/ui/live", params={"page": "/ui/tasks/t-tick"}) as live:
            lines = live.aiter_lines()
            first = [line async for line in _until_blank(lines, skip_retry=True)]
            assert first[0] == "event: blocks"
            assert "2 min ago" in first[1], "the block shows a time that ticks"
            for _ in range(2):  # two more rounds, each with the clock 2 min further
                clock.advance(120)
                assert [line async for line in _until_blank(lines)] == [": unchanged"]


async def _until_blank(lines: AsyncIterator[str], *, skip_retry: bool = False
                       ) -> AsyncIterator[str]:
    """The next message's lines (after the stream's ``retry:`` message, when asked to skip
    it)."""
    first = await anext(lines)
    while first == "" or (skip_retry and first.startswith("retry:")):
        first = await anext(lines)
    yield first
    async for line in lines:
        if line == "":
            return
        yield line
