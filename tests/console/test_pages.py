"""What the pages say, read as HTML: the chain shows each follow-up task's own state, numbered
by depth, with its credits; a done job says done; empty sections say why (or are hidden); the
chart has axes and times; sizes are human; times are both absolute and relative; the raw body
is the bytes as received beside a pretty view; a task row shows every title of its clips."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.console.templating import ago, moment, size, when
from receiver.jobs import JobSpec
from receiver.models import ChildState, ChildTask
from receiver.recording import insert_jobs
from receiver.storage.roles import sqlite_storage
from tests.console.support import TOKEN
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def console(tmp_path: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    async with app_client(create_app(settings, clock=clock)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def text_of(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


async def test_the_chain_shows_each_follow_ups_own_state_and_credits(
    console: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    await post_signed(console, callback("root", [clip("r-c", "succeeded", title="Root")]),
                      clock=clock, delivery_id="d-root")
    async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
        for n, rule in enumerate(("extend", "cover")):
            await store.outputs.claim_child(ChildTask(
                trigger_key=f"k-{n}", parent_task_id="root", root_task_id="root", rule=rule,
                depth=1, task_type="extend_music", credits=15, request={},
                child_task_id=None, state=ChildState.REQUESTED, error=None,
                created_at=clock.now(), updated_at=clock.now()))
            await store.outputs.update_child(f"k-{n}", state=ChildState.CREATED,
                                             child_task_id=f"child-{n}", now=clock.now())
    await post_signed(console, callback("child-0", [clip("c0", "succeeded")]), clock=clock,
                      delivery_id="d-c0")
    root = text_of((await console.get("/ui/tasks/root")).text)
    assert "0 root type unknown succeeded root · this task" in root
    # each follow-up's own state (the record of its creation says "created" for both)
    assert "1 child-0 extend_music succeeded extend, 15 credits" in root
    assert "1 child-1 extend_music pending cover, 15 credits" in root
    child = text_of((await console.get("/ui/tasks/child-0")).text)
    assert "0 root type unknown succeeded root" in child
    assert "1 child-0 extend_music succeeded extend, 15 credits · this task" in child


async def test_a_done_job_says_done_and_its_earlier_runs_stay_quiet(
    console: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    await post_signed(console, callback("t-j", [clip("c", "succeeded")]), clock=clock,
                      delivery_id="d-j")
    spec = JobSpec(key="t-j/forward", handler="forward", route="r", options={}, task_id="t-j",
                   trigger="task.succeeded", delivery_id=None, max_attempts=3)
    async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
        await store.db.write(lambda tx: insert_jobs(tx, [spec], at=clock.now()))
        (job,) = await store.jobs.claim_jobs(owner="w", limit=1, now=clock.now(), lease_s=60)
        await store.jobs.retry_job(job.id, owner="w", error="later: waiting for audio files",
                                   run_after=clock.now(), now=clock.now(), count_attempt=False)
        (job,) = await store.jobs.claim_jobs(owner="w", limit=1, now=clock.now(), lease_s=60)
        await store.jobs.finish_job(job.id, owner="w", now=clock.now())
    for path in ("/ui/tasks/t-j", "/ui/jobs"):
        html = (await console.get(path)).text
        row = re.search(r'<tr data-job="\d+">.*?</tr>', html, re.DOTALL)
        assert row is not None
        assert '<span class="ok">done</span>' in row.group()
        assert 'class="error"' not in row.group()
        assert "2 runs" in row.group()


async def test_empty_sections_say_why_or_are_hidden(console: httpx.AsyncClient) -> None:
    overview = text_of((await console.get("/ui")).text)
    assert "Nothing has been received yet" in overview
    assert "Outcomes" not in overview
    tasks = (await console.get("/ui/tasks")).text
    assert "<table" not in tasks
    assert "No task yet: a task appears with its first delivery." in text_of(tasks)
    assert "No task matches this filter." in text_of(
        (await console.get("/ui/tasks?state=failed")).text)
    jobs = (await console.get("/ui/jobs")).text
    assert "Retry every" not in jobs
    assert "No dead job matches this filter: nothing to retry." in text_of(jobs)
    assert "No action yet" in text_of((await console.get("/ui/audit")).text)


async def test_a_task_without_results_or_follow_ups_shows_neither(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    await post_signed(console, callback("t-e", [clip("c", "running")]), clock=clock,
                      delivery_id="d-e")
    html = (await console.get("/ui/tasks/t-e")).text
    assert 'id="results"' not in html
    assert 'id="chain"' not in html
    assert "routes run when a task settles" in text_of(html)


async def test_the_chart_has_axes_and_times(console: httpx.AsyncClient,
                                            clock: FakeClock) -> None:
    for n in range(3):
        await post_signed(console, callback(f"t-{n}", [clip(f"c-{n}", "running")]),
                          clock=clock, delivery_id=f"d-{n}")
    html = (await console.get("/ui")).text
    x_axis = re.search(r'<div class="x-axis"[^>]*>(.*?)</div>', html, re.DOTALL)
    y_axis = re.search(r'<div class="y-axis"[^>]*>(.*?)</div>', html, re.DOTALL)
    assert x_axis is not None
    assert y_axis is not None
    assert len(re.findall(r"<span>\d\d:\d\d</span>", x_axis.group(1))) == 5
    assert re.findall(r"<span>([^<]*)</span>", y_axis.group(1)) == ["3", "1.5", "0"]
    assert "Busiest: 3 at" in text_of(html)


def test_sizes_and_times_read_as_a_person_reads_them() -> None:
    assert [size(n) for n in (0, 1, 999, 1000, 1_154_276, 2_500_000_000)] == [
        "0 bytes", "1 byte", "999 bytes", "1.0 kB", "1.2 MB", "2.5 GB"]
    assert size(1_100_000) == "1.1 MB"
    now = 1_800_000_000.0
    assert [ago(now - s, now) for s in (1, 42, 180, 5 * 3600, 2 * 86400)] == [
        "just now", "42 s ago", "3 min ago", "5 h ago", "2 d ago"]
    assert ago(now + 120, now) == "in 2 min"
    shown = str(moment(now - 180, now))
    assert when(now - 180) in shown
    assert f'(<span class="ago" data-at="{now - 180:.3f}">3 min ago</span>)' in shown
    assert 'datetime="2027-01-15T07:57:00+00:00"' in shown


async def test_the_raw_body_is_the_bytes_as_received_beside_a_pretty_view(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    body = b'{"task_id":"t-raw",   "data":[{"clip_id":"c","state":"running"}]}'
    await post_signed(console, body, clock=clock, delivery_id="d-raw")
    html = (await console.get("/ui/deliveries/d-raw")).text
    raw = re.search(r'<pre class="body raw">(.*?)</pre>', html, re.DOTALL)
    assert raw is not None
    assert raw.group(1) == body.decode().replace('"', "&#34;")
    assert '<pre class="body pretty">' in html
    assert "65 bytes as received" in html
    broken = b'{"data": "caf\xe9"'
    await post_signed(console, broken, clock=clock, delivery_id="d-broken")
    html = (await console.get("/ui/deliveries/d-broken")).text
    assert "caf\\xe9" in html
    assert "not JSON" in html
    assert '<pre class="body pretty">' not in html


async def test_a_task_row_shows_every_title_of_its_clips(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    body = callback("t-two", [clip("a", "succeeded", title="Morning"),
                              clip("b", "succeeded", title="Evening")])
    await post_signed(console, body, clock=clock, delivery_id="d-two")
    row = re.search(r'<tr data-task="t-two">.*?</tr>', (await console.get("/ui/tasks")).text,
                    re.DOTALL)
    assert row is not None
    assert "Morning · Evening" in row.group()
    listed = (await console.get("/tasks")).json()["items"][0]
    assert (listed["title"], listed["titles"]) == ("Morning", ["Morning", "Evening"])
