"""The dashboard in a real Chromium (Debian's, driven by Playwright): an operator logs in, sees
a task arrive live from the sandbox's signed webhooks, opens it and plays its downloaded audio,
retries a dead job, records a quarantined delivery again, retries every dead job matching a
filter, and logs out, with no error in the browser's console. A screenshot of each page is
left in ``test-results/screenshots/``."""

from __future__ import annotations

import asyncio
import json
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
from tests.support import SECRET, callback, clip, settings_for, signed_headers
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio
TOKEN = "browser-test-admin-token"
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
    async with httpx.AsyncClient(timeout=10) as http:
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
        await expect(page.locator("#chain li.here")).to_contain_text(created[:8])
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
        await expect(page.locator("pre.body")).to_contain_text('"clip_id": "c-q"')
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
        await expect(page.locator("tbody tr")).to_have_count(3)
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
    async with httpx.AsyncClient(timeout=10) as http:
        page = (await http.get(f"{url}/jobs", params={"state": "dead", "handler": handler},
                               headers={"Authorization": f"Bearer {TOKEN}"})).json()
    return len(page["items"]) == n


@pytest.mark.browser
async def test_the_overview_fits_a_phone(browser: Browser, tmp_path: Path,
                                         screenshots: Path) -> None:
    """On a phone-sized screen the pages do not scroll sideways (tables scroll in their box)."""
    settings = settings_for(tmp_path, admin_token=TOKEN)
    async with running(create_app(settings)) as url:
        for n in range(3):
            body = callback(f"t-{n}", [clip(f"c-{n}", "succeeded", title=f"Song {n}")])
            await signed_post(url, body, f"d-{n}")
        context = await browser.new_context(viewport={"width": 390, "height": 844},
                                            is_mobile=True, has_touch=True)
        page = await context.new_page()
        ui = Console(page, url, screenshots)
        await ui.go("/ui/login")
        await page.get_by_label("Admin token").fill(TOKEN)
        await page.get_by_role("button", name="Log in").click()
        for path, name in (("/ui", "phone-overview"), ("/ui/tasks", "phone-tasks"),
                           ("/ui/tasks/t-1", "phone-task")):
            await ui.go(path)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width}px wide"
            await ui.shot(name)
        await context.close()
    assert ui.errors == []
    assert json.dumps(ui.dialogs) == "[]"
