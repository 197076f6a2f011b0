"""The sandbox and the receiver together over loopback: a task created through the client
ends recorded at the receiver from real signed webhooks, and its clips' audio is real."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import pytest

from receiver.app import create_app
from receiver.server import running
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.sonic.support import KEY, serve_sandbox
from tests.support import SECRET, http_client, settings_for
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "faults", [{}, {"duplicate": 1.0, "reorder": 1.0}], ids=["clean", "duplicated-reordered"]
)
async def test_a_sandbox_task_is_verified_and_recorded_by_the_receiver(
    tmp_path: Path, faults: dict[str, Any]
) -> None:
    app = create_app(settings_for(tmp_path))
    config = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, seed=3)
    async with serve_sandbox(config) as sandbox, running(app) as receiver_url:
        if faults:
            await sandbox.set_faults(faults)
        created = await sandbox.client().create_music(
            mv="sonic-v4-5", custom_mode=True, title="Starry Night", tags="pop, dreamy",
            prompt="[Verse]\nStars they shine above me",
            webhook_url=f"{receiver_url}/webhooks/sonic", webhook_secret=SECRET,
        )
        async with http_client(base_url=receiver_url, timeout=10) as http:

            async def settled() -> bool:
                response = await http.get(f"/tasks/{created.task_id}")
                return response.status_code == 200 and response.json()["task"]["state"] in (
                    "succeeded", "failed")

            await wait_until(settled, within=20, what="the receiver to see the task settle")
            view = (await http.get(f"/tasks/{created.task_id}")).json()
            audio = [await sandbox.http.get(c["audio_url"]) for c in view["clips"]]

        sent = await sandbox.deliveries(task_id=created.task_id)
    assert view["task"]["state"] == "succeeded"
    assert [c["state"] for c in view["clips"]] == ["succeeded", "succeeded"]
    # every delivery the sandbox sent was answered 200: verified and recorded (or duplicate)
    assert sent
    assert {d["outcome"] for d in sent} == {"answered"}
    assert {d["status"] for d in sent} == {200}
    for clip, response in zip(view["clips"], audio, strict=True):
        assert response.headers["content-type"].startswith("audio/")
        with wave.open(io.BytesIO(response.content)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        assert seconds == pytest.approx(clip["duration"], abs=0.01)
    history = [(t["entity"], t["to"]) for t in view["transitions"] if t["entity"] == "task"]
    assert history[-1] == ("task", "succeeded")
