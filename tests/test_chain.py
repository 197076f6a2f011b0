"""The whole chain over loopback, with the built-in handlers as installed: sandbox → receiver →
download → extend → concat → notify (a JSON sink and an SMTP server), while the sandbox sends
every webhook twice and out of order. Every effect happens once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from receiver.app import create_app
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.peers import json_sink, smtp_server
from tests.sonic.support import KEY, serve_sandbox
from tests.support import free_port, http_client, settings_for
from tests.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def config(json_target: str, mail_target: str) -> dict[str, Any]:
    return {
        "network": {"allow_networks": ["127.0.0.0/8"]},
        "routes": [
            {"name": "keep", "on": ["task.succeeded"],
             "handlers": [{"name": "download_audio", "options": {"image": True}}]},
            {"name": "chain", "on": ["task.succeeded", "task.failed"],
             "handlers": ["follow_up"]},
            {"name": "tell", "on": ["task.succeeded", "task.failed"],
             "handlers": [{"name": "notify", "options": {
                 "targets": [json_target, mail_target], "wait_for_files_s": 20}}]},
        ],
        "follow_up": {"rules": [
            {"name": "extend", "task_type": "create_music", "action": "extend",
             "continue_at": -5},
            {"name": "concat", "task_type": "extend_music", "action": "concat"},
        ]},
    }


async def test_every_effect_happens_once_under_duplicated_reordered_webhooks(
    tmp_path: Path,
) -> None:
    port = free_port()
    sandbox_config = SandboxConfig(api_keys={KEY: 1000}, speed=Speed.INSTANT, seed=9)
    async with (
        serve_sandbox(sandbox_config) as sandbox,
        json_sink() as sink,
        smtp_server() as (mailbox, smtp_port),
    ):
        await sandbox.set_faults({"duplicate": 1.0, "reorder": 1.0})
        mail = (f"mailto://127.0.0.1:{smtp_port}?mode=insecure&from=sonic@receiver.test"
                "&to=ops@receiver.test")
        settings = settings_for(tmp_path, public_url=f"http://127.0.0.1:{port}",
                                config=config(sink.url("songs"), mail))
        app = create_app(settings, sonic=sandbox.client())  # handlers from the entry points
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with running(app, port=port) as url, http_client(base_url=url) as http:
                created = await http.post("/tasks", json={
                    "task_type": "create_music", "mv": "sonic-v4-5", "custom_mode": True,
                    "title": "Once", "tags": "pop", "prompt": "[Verse] once"})
                root = created.json()["task_id"]
                chain: list[dict[str, Any]] = []

                async def closed() -> bool:
                    chain.clear()
                    task_id = root
                    while True:
                        view = (await http.get(f"/tasks/{task_id}")).json()
                        if "task" not in view or view["task"]["state"] != "succeeded":
                            return False
                        if any(j["state"] not in ("done", "dead") for j in view["jobs"]):
                            return False
                        chain.append(view)
                        if view["task"]["task_type"] == "concat_music":
                            return len(sink.delivered("songs")) == 3
                        kids = [c for c in view["children"] if c["child_task_id"]]
                        if not kids:
                            return False
                        task_id = kids[0]["child_task_id"]

                await wait_until(closed, within=60, what="the chain to close")
                balance = await sandbox.balance()
                sent = await sandbox.deliveries()

    assert [v["task"]["task_type"] for v in chain] == [
        "create_music", "extend_music", "concat_music"]
    # the sandbox really did send everything twice, and some out of order
    assert Counter(d["delivery_id"] for d in sent).most_common(1)[0][1] >= 2
    # each follow-up created once: one child per parent, and credits for three tasks only
    assert [len(v["children"]) for v in chain] == [1, 1, 0]
    assert balance == 1000 - 15 - 15 - 2
    # each job once, each finished
    for view in chain:
        assert sorted(j["handler"] for j in view["jobs"]) == [
            "download_audio", "follow_up", "notify"]
        assert {j["state"] for j in view["jobs"]} == {"done"}
    # each file downloaded once: one download per (clip, kind), all recorded
    downloads = Counter((e["clip_id"], e["kind"]) for e in logs
                        if e["event"] == "file_downloaded")
    assert downloads
    assert set(downloads.values()) == {1}
    recorded = {(f["clip_id"], f["kind"]) for v in chain for f in v["files"]
                if f["kind"] != "sidecar"}
    assert recorded == set(downloads)
    assert len(recorded) == 2 * (2 + 2 + 1)  # audio and image of five clips
    # each notification once, to each target
    assert len(sink.delivered("songs")) == 3
    assert len(mailbox.envelopes) == 3
    assert not list((tmp_path / "media").rglob("*.part"))
