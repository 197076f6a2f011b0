"""The dashboard in a real Chromium (Debian's, driven by Playwright): an operator logs in, sees
a task arrive live from the sandbox's signed webhooks, opens it and plays its downloaded audio,
retries a dead job, records a quarantined delivery again, retries every dead job matching a
filter, and logs out, with no error in the browser's console. At a laptop's and a phone's
size: a hostile payload shows as data (no script link, no remote image the browser fetches,
a 3,000-character title that leaves every page within the window), pages update live without
a reload, every page fits the width with its actions reachable, and an ended session goes to
the login form and back. A screenshot of each page is left in ``test-results/screenshots/``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, expect

from receiver.app import create_app
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.sonic.support import KEY, SandboxHandle, serve_sandbox
from tests.support import SECRET, callback, clip, http_client, settings_for, signed_headers
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio
TOKEN = "browser-test-admin-token-9b8c7d6e"
SIZES: dict[str, dict[str, Any]] = {
    "laptop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
CONFIG: dict[str, Any] = {
    "network": {"allow_networks": ["127.0.0.0/8"]},  # the sandbox's media are on loopback
    "routes": [{"name": "keep", "on": ["task.succeeded"],
                "handlers": [{"name": "download_audio", "options": {"image": True}}]}],
}


@asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[tuple[str, SandboxHandle]]:
    """The sandbox (songs settle within seconds) and the receiver with its in-process worker
    keeping every succeeded song's audio and cover."""
    settings = settings_for(tmp_path, admin_token=TOKEN, config=CONFIG)
    sandbox_config = SandboxConfig(api_keys={KEY: 1000}, speed=Speed.DEMO, seed=5)
    async with serve_sandbox(sandbox_config) as sandbox, running(create_app(settings)) as url:
        yield url, sandbox


class Console:
    """A page with what the browser reported: console errors and uncaught exceptions."""

    def __init__(self, page: Page, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self._accepting: set[asyncio.Future[None]] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        accepting = asyncio.ensure_future(dialog.accept())
        self._accepting.add(accepting)
        accepting.add_done_callback(self._accepting.discard)

    async def go(self, path: str) -> None:
        await self.page.goto(self.base + path)

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


async def signed_post(url: str, body: bytes, delivery_id: str) -> httpx.Response:
    async with http_client(timeout=10) as http:
        return await http.post(f"{url}/webhooks/sonic", content=body, headers={
            **signed_headers(body, delivery_id=delivery_id), "Content-Type": "application/json"})


@pytest.mark.browser
async def test_an_operator_session_in_chromium(
    browser: Browser, tmp_path: Path, screenshots: Path
) -> None:
    async with stack(tmp_path) as (url, sandbox):
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        ui = Console(page, url, screenshots)

        # log in once with the admin token
        await ui.go("/ui/tasks")
        await expect(page).to_have_url(f"{url}/ui/login?next=/ui/tasks")
        await ui.shot("login")
        await page.get_by_label("Admin token").fill(TOKEN)
        await page.get_by_role("button", name="Log in").click()
        await expect(page).to_have_url(f"{url}/ui/tasks")
        cookie = next(c for c in await context.cookies() if c["name"] == "receiver_console")
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")

        # a song created at the sandbox shows up in the open list from its signed webhooks
        created = await sandbox_create(sandbox, url)
        row = page.locator(f'tr[data-task="{created}"]')
        await expect(row).to_be_visible(timeout=20_000)
        await expect(row.locator(".badge")).to_have_text("succeeded", timeout=20_000)
        await ui.shot("tasks")

        # its page: chain, timeline, clips, and an audio player that plays the kept WAV
        await row.locator("a").first.click()
        await expect(page).to_have_url(f"{url}/ui/tasks/{created}")
        audio = page.locator("audio").first
        await _wait_for_download(page, audio)
        await expect(page.locator("#timeline li").first).to_be_visible()
        await expect(page.locator("h1")).to_contain_text(created)
        await expect(page.locator("#chain")).to_have_count(0)  # no follow-ups: no chain
        duration = await audio.evaluate(
            "a => new Promise((ok, no) => { a.muted = true;"
            " const ready = () => a.duration > 0 ? ok(a.duration) : null;"
            " a.addEventListener('loadedmetadata', ready); ready();"
            " setTimeout(() => no(new Error('no metadata')), 10000); })")
        assert duration > 1
        await audio.evaluate("a => a.play()")
        await page.wait_for_function(
            "() => document.querySelector('audio').currentTime > 0.2", timeout=10_000)
        await ui.shot("task")

        # a dead job: a download refused by the network policy dies at once
        body = callback("t-dead", [clip("c-dead", "succeeded", title="Unreachable",
                                        audio_url="http://10.255.255.1/x.wav")])
        assert (await signed_post(url, body, "d-dead")).status_code == 200
        await wait_until(lambda: _dead_count(url, "download_audio", 1), within=15,
                       what="the refused download to die")
        await ui.go("/ui/jobs?state=dead")
        dead_row = page.locator("tr[data-job]").filter(has_text="download_audio").first
        await expect(dead_row).to_be_visible(timeout=10_000)
        await expect(dead_row.locator(".error")).to_contain_text("10.255.255.1")
        await ui.shot("jobs")
        await dead_row.get_by_role("button", name="Retry").click()
        await expect(page.locator(".flash")).to_contain_text("queued again")
        assert any("again?" in d for d in ui.dialogs)

        # a quarantined delivery, recorded again once its task is known
        orphan = callback(None, [clip("c-q", "succeeded", title="Orphan")])
        assert (await signed_post(url, orphan, "d-orphan")).status_code == 422
        known = callback("t-known", [clip("c-q", "running")])
        assert (await signed_post(url, known, "d-known")).status_code == 200
        await ui.go("/ui/deliveries?outcome=quarantined")
        await expect(page.locator(".badge.quarantined").first).to_be_visible()
        await ui.shot("deliveries")
        await page.get_by_role("link", name="d-orphan").click()
        await expect(page.locator("pre.body.pretty")).to_contain_text('"clip_id": "c-q"')
        await expect(page.locator("pre.body.raw")).to_contain_text('"clip_id": "c-q"')
        await ui.shot("delivery")
        await page.get_by_role("button", name="Record again").click()
        await expect(page.locator(".flash")).to_contain_text("Recorded again: recorded")

        # bulk retry: every dead download_audio job, counted first, then all of them
        await wait_until(lambda: _dead_count(url, "download_audio", 1), within=15,
                       what="the retried job to die again")
        await ui.go("/ui/jobs?state=dead&handler=download_audio")
        await page.get_by_role("button", name="Retry every dead job matching this filter…").click()
        await expect(page.locator("#matched")).to_have_text("1")
        await ui.shot("confirm-retry")
        await page.get_by_role("button", name="Yes, retry all 1").click()
        await expect(page.locator(".flash")).to_contain_text("1 of 1 matching jobs queued again")

        # the overview and the audit log say what happened
        await ui.go("/ui")
        await expect(page.locator(".tile").first).to_be_visible()
        await ui.shot("overview")
        await ui.go("/ui/audit")
        await expect(page.locator("tbody tr")).to_have_count(4)  # the login, and 3 actions
        await ui.shot("audit")

        # log out: the pages ask for the token again
        await page.get_by_role("button", name="Log out").click()
        await expect(page).to_have_url(f"{url}/ui/login")
        await ui.go("/ui/jobs")
        await expect(page).to_have_url(f"{url}/ui/login?next=/ui/jobs")
        await context.close()
    assert ui.errors == []


async def sandbox_create(sandbox: SandboxHandle, url: str) -> str:
    created = await sandbox.client().create_music(
        mv="sonic-v4-5", custom_mode=True, title="Starry Night", tags="pop, dreamy",
        prompt="[Verse]\nStars they shine above me\nMoonlight softly glows",
        webhook_url=f"{url}/webhooks/sonic", webhook_secret=SECRET)
    return created.task_id


async def _wait_for_download(page: Page, audio: Any) -> None:
    """The download job runs after the task succeeded: reload until the player is there."""

    async def shown() -> bool:
        if await audio.count():
            return True
        await page.reload()
        return False

    await wait_until(shown, within=30, every=0.5, what="the audio player to appear")


async def _dead_count(url: str, handler: str, n: int) -> bool:
    async with http_client(timeout=10) as http:
        page = (await http.get(f"{url}/jobs", params={"state": "dead", "handler": handler},
                               headers={"Authorization": f"Bearer {TOKEN}"})).json()
    return len(page["items"]) == n



async def log_in(ui: Console, token: str = TOKEN) -> None:
    await ui.page.get_by_label("Admin token").fill(token)
    await ui.page.get_by_role("button", name="Log in").click()


async def fits(ui: Console, path: str, width: int) -> None:
    """The page at ``path`` is no wider than the window (nothing scrolls sideways)."""
    scroll = await ui.page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{path} is {scroll}px wide in a {width}px window"


TRACKED = "/pixel.png"


@asynccontextmanager
async def tracker() -> AsyncIterator[tuple[str, list[str]]]:
    """A remote host a payload names for its cover: it records who fetched it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
    seen: list[str] = []

    async def pixel(request: Request) -> Response:
        seen.append(request.headers.get("user-agent", ""))
        return Response(png, media_type="image/png")

    async with running(Starlette(routes=[Route(TRACKED, pixel)])) as url:
        yield url, seen


@pytest.mark.browser
@pytest.mark.parametrize("size", list(SIZES))
async def test_a_hostile_payload_shows_as_data_and_fits_the_window(
    browser: Browser, tmp_path: Path, screenshots: Path, size: str
) -> None:
    width = SIZES[size]["viewport"]["width"]
    task_id = "evil/1?x=1#y"
    title = "Very long title " + "la" * 1500 + " \u202eevil.exe"
    # the receiver may fetch the loopback "remote" host; the browser never does
    config = {"network": {"allow_networks": ["127.0.0.0/8"]}, "routes": []}
    async with tracker() as (remote, fetched), running(create_app(settings_for(
            tmp_path, admin_token=TOKEN, config=config, insecure_open_admin=False))) as url:
        body = callback(task_id, [clip("c-evil", "succeeded", title=title,
                                       audio_url="javascript:alert(document.cookie)",
                                       video_url="data:text/html,<script>alert(1)</script>",
                                       image_url=f"{remote}{TRACKED}")])
        assert (await signed_post(url, body, "d-evil")).status_code == 200
        context = await browser.new_context(**SIZES[size])
        page = await context.new_page()
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        ui = Console(page, url, screenshots)
        await ui.go("/ui/tasks")
        await log_in(ui)
        await expect(page.locator("tr[data-task]")).to_have_count(1)
        await fits(ui, "/ui/tasks", width)
        await ui.shot(f"{size}-hostile-tasks")
        await page.locator("tr[data-task] a").first.click()
        await expect(page).to_have_url(f"{url}/ui/tasks/evil%2F1%3Fx%3D1%23y")
        cover = page.locator("img.cover")
        await expect(cover).to_have_attribute("src", "/ui/cover?task_id=evil%2F1%3Fx%3D1%23y"
                                                     "&clip_id=c-evil")
        await page.wait_for_function(
            "() => document.querySelector('img.cover').naturalWidth > 0", timeout=10_000)
        hrefs = await page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
        assert [h for h in hrefs if not h.startswith(("http://", "https://"))] == []
        assert await page.locator("a[href^='javascript:'], a[href^='data:']").count() == 0
        await expect(page.locator("#clips")).to_contain_text("javascript:alert(document.cookie)")
        await expect(page.locator("h3").first).to_contain_text("\u27e6U+202E\u27e7")
        await fits(ui, "/ui/tasks/...", width)
        await ui.shot(f"{size}-hostile-task")
        # the whole title is a tap away, and still fits
        await page.locator("#clips details.cut summary").first.click()
        await expect(page.locator("#clips details.cut .whole").first).to_contain_text(
            "evil.exe")
        await fits(ui, "/ui/tasks/... (title open)", width)
        await context.close()
    assert not [a for a in asked if a.startswith(remote)], "the browser fetched the remote URL"
    assert fetched == ["sonic-receiver"]  # once, by the receiver, for the browser
    assert ui.errors == []


@pytest.mark.browser
@pytest.mark.parametrize("size", list(SIZES))
async def test_pages_update_live_fit_the_window_and_keep_their_actions_in_reach(
    browser: Browser, tmp_path: Path, screenshots: Path, size: str
) -> None:
    from tests.console.support import dead_jobs

    width = SIZES[size]["viewport"]["width"]
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off", insecure_open_admin=False)
    async with running(create_app(settings)) as url:
        for n in range(3):
            body = callback(f"t-{n}", [clip(f"c-{n}", "running", title=f"Song {n}")])
            await signed_post(url, body, f"d-{n}")
        await dead_jobs(tmp_path, _clock(), 2, "download_audio")
        context = await browser.new_context(**SIZES[size])
        page = await context.new_page()
        ui = Console(page, url, screenshots)
        await ui.go("/ui/tasks/t-1")
        await log_in(ui)
        await expect(page).to_have_url(f"{url}/ui/tasks/t-1")
        await expect(page.locator("#task-state")).to_have_text("running")
        await page.evaluate("window.notReloaded = true; window.scrollTo(0, 40)")
        # the task's next state reaches the open page, without a reload
        done = callback("t-1", [clip("c-1", "succeeded", title="Song 1")])
        assert (await signed_post(url, done, "d-1b")).status_code == 200
        await expect(page.locator("#task-state")).to_have_text("succeeded", timeout=10_000)
        assert await page.evaluate("window.notReloaded === true")
        await fits(ui, "/ui/tasks/t-1", width)
        await ui.shot(f"{size}-task")
        # the lists and the overview follow too
        for path, name, check in (
                ("/ui/deliveries", "deliveries", "tr[data-delivery='d-new']"),
                ("/ui/tasks", "tasks", "tr[data-task='t-new']"),
                ("/ui", "overview", None)):
            await ui.go(path)
            await page.evaluate("window.notReloaded = true")
            before = await page.locator("main").inner_text()
            await signed_post(url, callback("t-new" if name == "tasks" else f"t-{name}", [
                clip(f"c-{name}", "running")]), "d-new" if name == "deliveries" else f"d-{name}")
            if check is not None:
                await expect(page.locator(check)).to_be_visible(timeout=10_000)
            else:
                await wait_until(functools.partial(_changed, page, before), within=10,
                                 what="the overview to change")
            assert await page.evaluate("window.notReloaded === true")
            await fits(ui, path, width)
            await ui.shot(f"{size}-{name}")
        # jobs: every Retry button is within reach
        await ui.go("/ui/jobs?state=dead")
        buttons = page.get_by_role("button", name="Retry", exact=True)
        await expect(buttons).to_have_count(2)
        # the stream's first news is what the page already shows: nothing is swapped
        await page.evaluate("document.querySelector('#retry-job-1').dataset.mark = 'kept'")
        await page.wait_for_selector("body[data-live-seen]", state="attached", timeout=10_000)
        assert await page.evaluate("document.querySelector('#retry-job-1').dataset.mark") == (
            "kept")
        boxes = await page.eval_on_selector_all(
            "button[id^='retry-job-']", "bs => bs.map(b => b.getBoundingClientRect())"
            ".map(r => [r.left, r.right, r.width])")
        assert len(boxes) == 2
        for left, right, box_width in boxes:
            assert box_width > 0
            assert left >= 0
            assert right <= width
        await fits(ui, "/ui/jobs", width)
        await ui.shot(f"{size}-jobs")
        await buttons.first.click()
        await expect(page.locator(".flash")).to_contain_text("queued again")
        for path, name in (("/ui/deliveries/d-0", "delivery"), ("/ui/audit", "audit"),
                           ("/ui/sessions", "sessions"), ("/ui/nope", "not-found")):
            await ui.go(path)
            await fits(ui, path, width)
            await ui.shot(f"{size}-{name}")
        await expect(page.locator("h1")).to_contain_text("No page")
        await context.close()
    assert ui.errors == [e for e in ui.errors if "404" in e]  # the unknown page, on purpose


async def _changed(page: Page, before: str) -> bool:
    return await page.locator("main").inner_text() != before


def _clock() -> Any:
    from receiver.clock import SystemClock

    return SystemClock()


@pytest.mark.browser
async def test_an_ended_session_goes_to_the_login_form_and_back(
    browser: Browser, tmp_path: Path, screenshots: Path
) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off", insecure_open_admin=False)
    async with running(create_app(settings)) as url:
        context = await browser.new_context(**SIZES["laptop"])
        page = await context.new_page()
        ui = Console(page, url, screenshots)
        await ui.go("/ui/jobs?state=dead")
        await log_in(ui)
        await expect(page).to_have_url(f"{url}/ui/jobs?state=dead")
        # an operator ends this session from elsewhere (the API, another browser)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with http_client(base_url=url, headers=bearer) as api:
            (session,) = (await api.get("/sessions")).json()["items"]
            assert (await api.post(f"/sessions/{session['id']}/end")).json()["ended"] is True
        await expect(page).to_have_url(
            f"{url}/ui/login?ended=1&next=%2Fui%2Fjobs%3Fstate%3Ddead", timeout=10_000)
        await expect(page.locator(".flash")).to_contain_text("Your session ended")
        await ui.shot("session-ended")
        await log_in(ui)
        await expect(page).to_have_url(f"{url}/ui/jobs?state=dead")
        await context.close()
    assert ui.errors == []
