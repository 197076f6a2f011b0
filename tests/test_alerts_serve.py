"""The alerts as a new user meets them (issue 19's acceptance): ``sonic-receiver serve`` with
``RECEIVER_ALERT_TARGETS=json://...`` pointing at a peer on loopback, 30 deliveries signed with
a wrong secret, then good ones, then a download that dies."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.peers import InboxServer, inbox
from tests.processes import serve
from tests.support import callback, clip, free_port, signed_headers
from tests.waiting import wait_until_blocking

pytestmark = pytest.mark.slow

TOKEN = "alerts-admin-token-0123456789abcdef"
CONFIG = """
[network]
allow_networks = ["127.0.0.0/8"]  # the dying download's peer is on loopback

[alerts]
every = "1s"

[alerts.signatures_failing]
window = "4s"

[[routes]]
on = "task.succeeded"
handlers = [{ name = "download_audio", max_attempts = 1 }]
"""


def titles(peer: InboxServer) -> list[str]:
    return [body["title"] for body in peer.bodies("/alerts")]


def test_bad_signatures_and_a_dead_download_each_alert_once_and_the_first_resolves(
    tmp_path: Path,
) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text(CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/sonic"
    with inbox() as peer, serve(
        tmp_path / "receiver.db", port, tmp_path / "serve.log", config=config,
        extra_env={"RECEIVER_ALERT_TARGETS": f"json://{peer.base}/alerts",
                   "RECEIVER_ADMIN_TOKEN": TOKEN, "RECEIVER_MEDIA": str(tmp_path / "media")},
    ) as proc, httpx.Client(timeout=10) as http:
        log = tmp_path / "serve.log"
        for n in range(30):
            body = callback(f"t-{n}", [clip(f"c-{n}", "running")], event="song.streaming")
            refused = http.post(url, content=body, headers=signed_headers(
                body, secret="the-old-secret", delivery_id=f"bad-{n}"))
            assert refused.status_code == 401
        wait_until_blocking(lambda: len(titles(peer)) >= 1, within=15,
                            what="the signatures alert", detail=log.read_text)
        [fired] = peer.bodies("/alerts")
        assert fired["title"] == "[sonic-receiver] webhook signatures failing"
        assert "30 deliveries refused" in fired["message"]
        assert "30 signature_mismatch with the musicapi scheme" in fired["message"]
        assert "the-old-secret" not in json.dumps(fired)

        # good deliveries resume; once the window passes, one "resolved"
        for n in range(3):
            body = callback(f"t-{n}", [clip(f"c-{n}", "running")], event="song.streaming")
            ok = http.post(url, content=body, headers=signed_headers(body, delivery_id=f"ok-{n}"))
            assert ok.status_code == 200
        wait_until_blocking(lambda: len(titles(peer)) >= 2, within=20,
                            what="the signatures alert to resolve", detail=log.read_text)
        assert titles(peer)[1] == "[sonic-receiver] resolved: webhook signatures failing"

        # a download that dies: its link answers 410 Gone
        done = callback("t-0", [clip("c-0", "succeeded", duration=1.0,
                                     audio_url=f"http://{peer.base}/media/410")],
                        event="song.completed")
        assert http.post(url, content=done, headers=signed_headers(
            done, delivery_id="ok-done")).status_code == 200
        wait_until_blocking(lambda: len(titles(peer)) >= 3, within=20,
                            what="the dead-jobs alert", detail=log.read_text)
        dead = peer.bodies("/alerts")[2]
        assert dead["title"] == "[sonic-receiver] jobs dead (download_audio)"
        assert "/ui/jobs?state=dead&handler=download_audio" in dead["message"]

        listed = http.get(f"http://127.0.0.1:{port}/alerts",
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()["items"]
        assert [(a["rule"], a["resolved_at"] is None) for a in listed] == [
            ("jobs_dead", True), ("signatures_failing", False)]
        assert len(titles(peer)) == 3  # nothing else was sent
        assert proc.poll() is None
    fired_lines = [line for line in log.read_text().splitlines() if '"alert_fired"' in line]
    assert len(fired_lines) == 2
