"""The console shows what a signed payload carries as data: URLs that are not http(s) never
become links, cover art comes through the receiver (never hot-linked), ids of any shape are
percent-encoded into links and open their page, bidi controls are shown, and every answer
carries the headers that keep a browser from sniffing, leaking or embedding it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.app import create_app
from receiver.clock import FakeClock
from receiver.console.templating import delivery_href, http_url, task_href, visible
from receiver.models import StoredFile
from receiver.server import running
from receiver.storage.roles import sqlite_storage
from tests.console.support import TOKEN
from tests.support import app_client, callback, clip, post_signed, settings_for

pytestmark = pytest.mark.anyio

# a 1x1 transparent PNG
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
HOSTILE_IDS = ["t/1?x=1#frag", "..", ".", "t%2F2", "a b&c", "\u202etxt.exe"]


async def logged_in(client: httpx.AsyncClient) -> None:
    answer = await client.post("/ui/login", data={"token": TOKEN},
                               headers={"Origin": "http://receiver"})
    assert answer.status_code == 303


@pytest.fixture
async def console(tmp_path: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in browser of a receiver with a token (no worker)."""
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with app_client(create_app(settings, clock=clock)) as client:
        await logged_in(client)
        yield client


def links(html: str) -> list[str]:
    return re.findall(r'<a\s[^>]*href="([^"]*)"', html)


def image_sources(html: str) -> list[str]:
    return re.findall(r'<img\s[^>]*src="([^"]*)"', html)


async def test_urls_that_are_not_http_stay_text_and_the_cover_is_never_hot_linked(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    body = callback("t-x", [clip("c-x", "succeeded", title="X",
                                 audio_url="javascript:alert(document.cookie)",
                                 image_url="https://tracker.example/pixel.png",
                                 video_url="data:text/html,<script>alert(1)</script>")])
    assert (await post_signed(console, body, clock=clock, delivery_id="d-x")).status_code == 200
    page = (await console.get("/ui/tasks/t-x")).text
    assert not [h for h in links(page) if not h.startswith(("/", "http://", "https://"))]
    assert "javascript:alert" in page  # shown, as text
    assert image_sources(page) == ["/ui/cover?task_id=t-x&amp;clip_id=c-x"]
    assert "<script>alert(1)" not in page
    # the only absolute links are http(s) ones, opened without opener or referrer
    for anchor in re.findall(r'<a\s[^>]*href="https?:[^"]*"[^>]*>', page):
        assert 'rel="noopener noreferrer"' in anchor


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "JAVASCRIPT:alert(1)", " javascript:alert(1)", "java\tscript:x",
    "data:text/html,<b>", "vbscript:x", "//evil.example/x", "/relative", "http://", "https:x",
    "http://ok.example/a\nb", "file:///etc/passwd", None, 42,
])
def test_only_http_urls_with_a_host_become_links(url: Any) -> None:
    assert http_url(url) is None


def test_http_urls_do() -> None:
    assert http_url("https://cdn.example/a.mp3?sig=1") == "https://cdn.example/a.mp3?sig=1"
    assert http_url("HTTP://cdn.example/a") == "HTTP://cdn.example/a"


async def test_the_receiver_fetches_the_cover_under_the_network_policy_and_caches_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    hits: list[str] = []

    async def pixel(request: Request) -> Response:
        hits.append(request.headers.get("user-agent", ""))
        return Response(PNG, media_type="image/png")

    async def svg(request: Request) -> Response:
        hits.append("svg")
        return Response("<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>",
                        media_type="image/svg+xml")

    remote = Starlette(routes=[Route("/p.png", pixel), Route("/x.svg", svg)])
    allowed = {"network": {"allow_networks": ["127.0.0.0/8"]}, "routes": []}
    async with running(remote) as cdn:
        for config, expected in ((allowed, 200), ({"routes": []}, 404)):
            folder = tmp_path / str(expected)
            settings = settings_for(folder, admin_token=TOKEN, worker="off", config=config)
            async with app_client(create_app(settings, clock=clock)) as client:
                await logged_in(client)
                body = callback("t-c", [clip("c-1", "succeeded", image_url=f"{cdn}/p.png"),
                                        clip("c-2", "succeeded", image_url=f"{cdn}/x.svg"),
                                        clip("c-3", "succeeded", image_url="javascript:x")])
                await post_signed(client, body, clock=clock, delivery_id="d-c")
                first = await client.get("/ui/cover", params={"task_id": "t-c",
                                                              "clip_id": "c-1"})
                assert first.status_code == expected
                if expected == 200:
                    assert first.content == PNG
                    assert first.headers["content-type"] == "image/png"
                    assert "sandbox" in first.headers["content-security-policy"]
                    again = await client.get("/ui/cover", params={"task_id": "t-c",
                                                                  "clip_id": "c-1"})
                    assert again.content == PNG
                for clip_id in ("c-2", "c-3", "c-nope"):
                    refused = await client.get("/ui/cover", params={"task_id": "t-c",
                                                                    "clip_id": clip_id})
                    assert refused.status_code == 404
    # fetched once (cached), by the receiver; the loopback CDN refused without [network]
    assert hits.count("sonic-receiver") == 1
    assert "svg" in hits


async def test_every_id_is_encoded_into_its_links_and_opens_its_page(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    for n, task_id in enumerate(HOSTILE_IDS):
        body = callback(task_id, [clip(f"c-{n}", "succeeded", title=f"Song {n}")])
        answer = await post_signed(console, body, clock=clock, delivery_id=f"d{n}/x?y#..")
        assert answer.status_code == 200, answer.text
    listing = (await console.get("/ui/tasks")).text
    for n, task_id in enumerate(HOSTILE_IDS):
        href = task_href(task_id)
        assert href.replace("&", "&amp;") in listing
        page = await console.get(href)
        assert page.status_code == 200, (task_id, href)
        assert visible(task_id).replace("&", "&amp;") in page.text
        delivery = await console.get(delivery_href(f"d{n}/x?y#.."))
        assert delivery.status_code == 200, task_id
        assert href.replace("&", "&amp;") in delivery.text
    assert task_href("..") == "/ui/task?id=.."
    assert task_href("t/1?x=1#frag") == "/ui/tasks/t%2F1%3Fx%3D1%23frag"


async def test_a_delivery_id_with_a_slash_can_be_recorded_again_and_resent_from_the_console(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    orphan = callback(None, [clip("c-q", "succeeded", title="Orphan")])
    assert (await post_signed(console, orphan, clock=clock,
                              delivery_id="q/1?#..")).status_code == 422
    await post_signed(console, callback("t-q", [clip("c-q", "running")]), clock=clock,
                      delivery_id="d-known")
    page = await console.get(delivery_href("q/1?#.."))
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf is not None
    form = {"csrf": csrf.group(1), "delivery_id": "q/1?#..", "back": delivery_href("q/1?#..")}
    done = await console.post("/ui/actions/record-again", data=form,
                              headers={"Origin": "http://receiver"})
    assert done.status_code == 303
    assert done.headers["location"] == delivery_href("q/1?#..")
    assert (await console.get(done.headers["location"])).status_code == 200
    detail = (await console.get("/deliveries/q%2F1%3F%23..")).json()
    assert detail["outcome"] == "recorded"
    # resend needs the public URL: refused, and said so, without one
    resend = await console.post("/ui/actions/resend", data=form,
                                headers={"Origin": "http://receiver"})
    flash = (await console.get(resend.headers["location"])).text
    assert "Not sent again" in flash
    assert "RECEIVER_PUBLIC_URL" in flash


async def test_bidi_controls_are_shown_not_obeyed_but_forms_carry_the_exact_id(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    task_id = "abc\u202egpj.exe"
    body = callback(task_id, [clip("c-b", "succeeded", title="fine\u2067 title\u2069")])
    await post_signed(console, body, clock=clock, delivery_id="d-b")
    page = (await console.get(task_href(task_id))).text
    assert "abc\u27e6U+202E\u27e7gpj.exe" in page
    assert "fine\u27e6U+2067\u27e7 title\u27e6U+2069\u27e7" in page
    text_outside_attributes = re.sub(r'value="[^"]*"', "", page)
    assert not re.search("[\u202a-\u202e\u2066-\u2069]", text_outside_attributes)


async def test_long_values_are_cut_with_the_whole_value_on_demand(
    console: httpx.AsyncClient, clock: FakeClock
) -> None:
    title = "Long " + "x" * 3000
    await post_signed(console, callback("t-long", [clip("c-l", "succeeded", title=title)]),
                      clock=clock, delivery_id="d-long")
    for path in ("/ui/tasks", "/ui/tasks/t-long"):
        page = (await console.get(path)).text
        assert '<details class="cut">' in page
        assert title in page  # the whole of it, folded


async def test_every_answer_carries_the_security_headers(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with app_client(create_app(settings, clock=clock)) as client:
        await post_signed(client, callback("t-h", [clip("c-h", "succeeded")]), clock=clock,
                          delivery_id="d-h")
        answers = [await client.get(p) for p in (
            "/healthz", "/readyz", "/ui/login", "/ui/static/console.css", "/ui/static/console.js",
            "/tasks", "/nope", "/webhooks/sonic", "/openapi.json")]
        answers.append(await post_signed(client, callback("t-h", [clip("c-h", "succeeded")]),
                                         clock=clock, delivery_id="d-h2"))
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert answer.headers["referrer-policy"] == "same-origin", answer.url
        assert answer.headers["cross-origin-resource-policy"] == "same-origin", answer.url
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], answer.url
    page_csp = answers[2].headers["content-security-policy"]
    assert "img-src 'self';" in page_csp
    assert "http:" not in page_csp
    assert "data:" not in page_csp


@pytest.mark.parametrize(("content_type", "disposition"), [
    ("audio/mpeg", "inline"), ("image/png", "inline"), ("image/svg+xml", "attachment"),
    ("text/html", "attachment"), ("application/json", "attachment"), (None, "attachment"),
])
async def test_kept_files_run_nothing_and_download_what_a_browser_could_render(
    tmp_path: Path, clock: FakeClock, content_type: str | None, disposition: str
) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    media = tmp_path / "media" / "t-f"
    media.mkdir(parents=True)
    (media / "c.bin").write_bytes(b"<svg onload=alert(1)>")
    async with app_client(create_app(settings, clock=clock)) as client:
        await post_signed(client, callback("t-f", [clip("c", "succeeded")]), clock=clock)
        async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
            await store.outputs.record_file(StoredFile(
                task_id="t-f", clip_id="c", kind="image", path=str(media / "c.bin"), size=21,
                sha256="0" * 64, url=None, content_type=content_type, job_key=None,
                created_at=clock.now()))
        for path in ("/files/t-f/c/image", "/ui/file?task_id=t-f&clip_id=c&kind=image"):
            answer = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200
            assert answer.headers["content-disposition"].startswith(disposition)
            assert "sandbox" in answer.headers["content-security-policy"]
            assert "default-src 'none'" in answer.headers["content-security-policy"]
            assert answer.headers["cross-origin-resource-policy"] == "same-origin"


async def test_a_kept_file_of_a_task_whose_id_holds_a_slash_is_served(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    media = tmp_path / "media" / "t"
    media.mkdir(parents=True)
    (media / "c.wav").write_bytes(b"RIFF")
    async with app_client(create_app(settings, clock=clock)) as client:
        await post_signed(client, callback("t/1", [clip("c", "succeeded")]), clock=clock)
        async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
            await store.outputs.record_file(StoredFile(
                task_id="t/1", clip_id="c", kind="audio", path=str(media / "c.wav"), size=4,
                sha256="0" * 64, url=None, content_type="audio/wav", job_key=None,
                created_at=clock.now()))
        answer = await client.get("/files/t%2F1/c/audio",
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.content == b"RIFF"


async def test_digits_that_are_not_ascii_are_no_number(tmp_path: Path, clock: FakeClock) -> None:
    """``"³".isdigit()`` is true and ``int("³")`` fails: an id, a limit or a Content-Length
    of such digits is no number (here: 404, 400), never a 500."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            insecure_open_admin=False)
    async with app_client(create_app(settings, clock=clock)) as client:
        ended = await client.post("/sessions/%C2%B3/end", headers=auth)
        assert ended.status_code == 404
        job = await client.get("/jobs/%C2%B3", headers=auth)
        assert job.status_code == 404
        listed = await client.get("/tasks", params={"limit": "\u00b3"}, headers=auth)
        assert listed.status_code == 400
