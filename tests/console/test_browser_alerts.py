"""The receiver's alerts on the console's overview, in a real Chromium (issue 19): after
deliveries signed with a wrong secret, a download that dies and a delivery kept as quarantined
(under an id no path could hold), the overview shows the three alerts with what to do, live;
their links open the dead jobs and that delivery; the same three went to the alert target
(apprise's json:// to a peer on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from receiver.app import create_app
from receiver.config import AlertsTable
from receiver.conversion import convert
from receiver.server import running
from tests.peers import json_sink
from tests.support import callback, clip, http_client, settings_for, signed_headers
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio
TOKEN = "browser-alerts-admin-token-5f4e3d2c"


@pytest.mark.browser
async def test_the_overview_shows_the_active_alerts_with_what_to_do(
    browser: Browser, tmp_path: Path, screenshots: Path
) -> None:
    async with json_sink() as sink:
        alerts: AlertsTable = convert({"every": 0.5}, AlertsTable)
        settings = settings_for(
            tmp_path, admin_token=TOKEN, alerts=alerts, alert_targets=(sink.url("alerts"),),
            config={"network": {"allow_networks": ["127.0.0.0/8"]},
                    "routes": [{"on": "task.succeeded", "handlers": [
                        {"name": "download_audio", "max_attempts": 1}]}]})
        async with running(create_app(settings)) as url, http_client(timeout=10) as http:
            for n in range(30):
                body = callback(f"t-{n}", [clip(f"c-{n}", "running")], event="song.streaming")
                answer = await http.post(f"{url}/webhooks/sonic", content=body,
                                         headers=signed_headers(body, secret="rotated-elsewhere",
                                                                delivery_id=f"bad-{n}"))
                assert answer.status_code == 401
            gone = f"{sink.base}/gone-for-good"  # the sink answers GET with 405: a dead link
            done = callback("t-0", [clip("c-0", "succeeded", audio_url=gone, duration=1.0)],
                            event="song.completed")
            assert (await http.post(f"{url}/webhooks/sonic", content=done, headers=signed_headers(
                done, delivery_id="ok-1"))).status_code == 200

            odd = "../q 1?#"  # a verified id no path could hold: the alert's link must open it
            assert (await http.post(f"{url}/webhooks/sonic", content=b"[1]", headers=signed_headers(
                b"[1]", delivery_id=odd))).status_code == 422

            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})
                          ).new_page()
            await page.goto(f"{url}/ui")
            await page.get_by_label("Admin token").fill(TOKEN)
            await page.get_by_role("button", name="Log in").click()
            alerts_card = page.locator("#alerts")
            items = alerts_card.locator("li.alert")
            await expect(items).to_have_count(3, timeout=20_000)  # live: no reload
            await expect(alerts_card).to_contain_text("Webhook signatures failing")
            await expect(alerts_card).to_contain_text("30 deliveries refused")
            await expect(alerts_card).to_contain_text("Jobs dead (download_audio)")
            await expect(alerts_card).to_contain_text("Deliveries quarantined")
            await expect(alerts_card.get_by_text("What to do:")).to_have_count(3)
            await page.screenshot(path=str(screenshots / "laptop-alerts.png"), full_page=True)
            dead = items.filter(has_text="Jobs dead")
            await dead.get_by_role("link", name="See it").click()
            await expect(page).to_have_url(f"{url}/ui/jobs?state=dead&handler=download_audio")
            await page.go_back()
            kept = page.locator("#alerts li.alert").filter(has_text="Deliveries quarantined")
            await kept.get_by_role("link", name="See it").click()
            await expect(page.locator("main")).to_contain_text(odd)

            await wait_until(lambda: len(sink.delivered("alerts")) == 3, within=10,
                             what="the three alerts at the target")
            assert sorted(m["title"] for m in sink.delivered("alerts")) == [
                "[sonic-receiver] deliveries quarantined",
                "[sonic-receiver] jobs dead (download_audio)",
                "[sonic-receiver] webhook signatures failing"]
