"""The actions that reach out, over real servers on loopback: resend signs and POSTs a stored
delivery to the webhook again (a duplicate there), and reconcile polls the sandbox for a task
whose completion webhook was dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.app import create_app
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from receiver.sonic.sandbox.faults import EventDrop, FaultConfig
from receiver.states import WebhookEvent
from tests.sonic.support import KEY, serve_sandbox
from tests.support import (
    SECRET,
    callback,
    clip,
    free_port,
    http_client,
    settings_for,
    signed_headers,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio
TOKEN = "actions-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_resend_is_recognised_as_a_duplicate_and_audited(tmp_path: Path) -> None:
    port = free_port()
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                            public_url=f"http://127.0.0.1:{port}")
    async with running(create_app(settings), port=port) as url, http_client(
        base_url=url, timeout=10, headers=AUTH
    ) as http:
        body = callback("t-1", [clip("c-1", "succeeded")])
        first = await http.post("/webhooks/sonic", content=body,
                                headers={**signed_headers(body, delivery_id="d-1"),
                                         "Content-Type": "application/json"})
        assert first.json()["status"] == "recorded"
        resent = (await http.post("/deliveries/d-1/resend")).json()
        assert resent["counts"] == {"status_200": 1}
        assert resent["failures"] == []
        detail = (await http.get("/deliveries/d-1")).json()
        assert detail["duplicates"] == 1
        assert [d["delivery_id"] for d in
                (await http.get("/deliveries", params={"outcome": "duplicate"})).json()[
                    "items"]] == ["d-1"]
        audit = (await http.get("/audit")).json()["items"]
        assert [(a["action"], a["target"]) for a in audit] == [("resend", "delivery:d-1")]
        assert (await http.post("/deliveries/nope/resend")).status_code == 404


async def test_reconcile_now_recovers_a_dropped_completion(tmp_path: Path) -> None:
    faults = FaultConfig(drop_events=(EventDrop(task=1, event=WebhookEvent("song.completed")),))
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, seed=2, faults=faults)
    async with serve_sandbox(config) as sandbox:
        settings = settings_for(tmp_path, admin_token=TOKEN, worker="off",
                                sonic_api_base_url=sandbox.url, sonic_api_key=KEY)
        async with running(create_app(settings)) as url, http_client(
            base_url=url, timeout=10, headers=AUTH
        ) as http:
            created = await sandbox.client().create_music(
                mv="sonic-v4-5", custom_mode=True, title="Dropped", tags="pop",
                prompt="[Verse]\nla la", webhook_url=f"{url}/webhooks/sonic",
                webhook_secret=SECRET)

            async def running_seen() -> bool:
                answer = await http.get(f"/tasks/{created.task_id}")
                return answer.status_code == 200 and answer.json()["task"]["state"] == "running"

            await wait_until(running_seen, within=10, what="the task to be seen running")
            done = await http.post(f"/tasks/{created.task_id}/reconcile")
            assert done.status_code == 200, done.text
            assert done.json()["counts"]["recorded"] == 1
            view = (await http.get(f"/tasks/{created.task_id}")).json()
            assert view["task"]["state"] == "succeeded"
            assert view["transitions"][-1]["source"] == "poll"
            assert (await http.post("/tasks/unknown/reconcile")).status_code == 404


async def test_reconcile_without_a_sonic_client_is_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, admin_token=TOKEN, worker="off")
    async with running(create_app(settings)) as url, http_client(
        base_url=url, timeout=10, headers=AUTH
    ) as http:
        body = callback("t-1", [clip("c-1", "running")])
        await http.post("/webhooks/sonic", content=body,
                        headers={**signed_headers(body), "Content-Type": "application/json"})
        refused = await http.post("/tasks/t-1/reconcile")
        assert refused.status_code == 409
        assert refused.json()["error"] == "cannot_reconcile"
