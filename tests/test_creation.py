"""POST /tasks creates through the receiver; the server's own reconciliation heals drops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from receiver.app import create_app
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.sonic.support import KEY, serve_sandbox
from tests.support import free_port, http_client, settings_for
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

SONG = {"task_type": "create_music", "mv": "sonic-v4-5", "custom_mode": True,
        "prompt": "[Verse] hello"}


async def test_post_tasks_creates_registers_and_refuses_with_the_seed_messages(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = SandboxConfig(api_keys={KEY: 20}, speed=Speed.INSTANT, seed=4)
    async with serve_sandbox(config) as sandbox:
        app = create_app(settings_for(tmp_path, public_url=f"http://127.0.0.1:{port}",
                                      config={"routes": []}), sonic=sandbox.client())
        async with running(app, port=port) as url, http_client(base_url=url) as http:
            bad = await http.post("/tasks", json={**SONG, "mv": "sonic-v9"})
            ok = await http.post("/tasks", json=SONG)
            short = await http.post("/tasks", json=SONG)  # 20 - 15 < 15
            task_id = ok.json()["task_id"]

            async def succeeded() -> bool:
                view = (await http.get(f"/tasks/{task_id}")).json()
                return bool(view.get("task", {}).get("state") == "succeeded")

            await wait_until(succeeded, within=20, what="the created task to succeed")
            view = (await http.get(f"/tasks/{task_id}")).json()
            balance = await sandbox.balance()
    assert (bad.status_code, bad.json()["message"]) == (400, "mv field is invalid")
    assert (ok.status_code, ok.json()["task_type"]) == (201, "create_music")
    assert short.status_code == 403
    assert short.json()["message"].startswith("The remaining credits are not enough")
    assert view["task"]["task_type"] == "create_music"
    assert balance == 5


async def test_post_tasks_needs_a_public_url(tmp_path: Path) -> None:
    async with serve_sandbox() as sandbox:
        app = create_app(settings_for(tmp_path), sonic=sandbox.client())
        async with running(app) as url, http_client(base_url=url) as http:
            answer = await http.post("/tasks", json=SONG)
    assert (answer.status_code, answer.json()["error"]) == (503, "public_url_not_set")


async def test_the_server_reconciles_stale_tasks_on_its_own(tmp_path: Path) -> None:
    port = free_port()
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, seed=4)
    async with serve_sandbox(config) as sandbox:
        await sandbox.set_faults({"drop_events": [{"task": 1, "event": "song.completed"}]})
        settings: dict[str, Any] = {"public_url": f"http://127.0.0.1:{port}",
                                    "reconcile_every_s": 0.2, "reconcile_stale_s": 0.1,
                                    "config": {"routes": []}}
        app = create_app(settings_for(tmp_path, **settings), sonic=sandbox.client())
        async with running(app, port=port) as url, http_client(base_url=url) as http:
            task_id = (await http.post("/tasks", json=SONG)).json()["task_id"]

            async def healed() -> bool:
                view = (await http.get(f"/tasks/{task_id}")).json()
                return bool(view.get("task", {}).get("state") == "succeeded")

            await wait_until(healed, within=20, what="reconciliation to recover the drop")
            view = (await http.get(f"/tasks/{task_id}")).json()
            dropped = await sandbox.deliveries(task_id=task_id, outcome="dropped")
    assert [d["event"] for d in dropped] == ["song.completed"]
    assert view["transitions"][-1]["source"] == "poll"
