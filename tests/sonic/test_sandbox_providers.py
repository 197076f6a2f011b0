"""The sandbox playing the other providers (receiver/sonic/sandbox/providers.py): each one's
create and poll answers, its callbacks' stages, bodies and signatures (or none), its
refusals and its links, as the provider's docs show them."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.clock import SystemClock
from receiver.server import running
from receiver.signatures import Scheme, Verifier, verify_kie
from receiver.sonic.sandbox import SandboxConfig, Speed
from tests.sonic.support import KEY, SandboxHandle, serve_sandbox
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

HMAC = "kie-key-for-the-sandbox"
AIML = "whsec_" + base64.b64encode(b"aimlapi sandbox test key").decode()


@dataclass
class Hooks:
    """A callback endpoint that keeps every request it gets."""

    url: str = ""
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        self.got.append((dict(request.headers), await request.body()))
        return Response(status_code=200)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@contextlib.asynccontextmanager
async def playing(**config: Any) -> AsyncIterator[tuple[SandboxHandle, Hooks]]:
    hooks = Hooks()
    settings = SandboxConfig(api_keys={KEY: 100}, speed=Speed.INSTANT, kie_hmac_key=HMAC,
                             aimlapi_secret=AIML, **config)
    app = Starlette(routes=[Route("/hook/{rest:path}", hooks.hook, methods=["POST"])])
    async with serve_sandbox(settings) as sandbox, running(app) as url:
        hooks.url = url + "/hook/t0ken"
        yield sandbox, hooks


async def suno_create(sandbox: SandboxHandle, prefix: str, hooks: Hooks) -> str:
    answer = await sandbox.http.post(
        f"/{prefix}/api/v1/generate", headers=sandbox.headers(),
        json={"customMode": True, "instrumental": False, "model": "V4_5", "title": "Night",
              "style": "rock", "prompt": "[Verse] la", "callBackUrl": hooks.url})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["code"], body["msg"]) == (200, "success")
    task_id: str = body["data"]["taskId"]
    return task_id


@pytest.mark.parametrize("prefix", ["sunoapi", "apibox", "kie"])
async def test_the_suno_shape_calls_back_text_first_complete_and_record_info_agrees(
        prefix: str) -> None:
    async with playing() as (sandbox, hooks):
        task_id = await suno_create(sandbox, prefix, hooks)
        await wait_until(lambda: len(hooks.got) == 3, within=10, what="three callbacks")
        info = (await sandbox.http.get(f"/{prefix}/api/v1/generate/record-info",
                                       params={"taskId": task_id},
                                       headers=sandbox.headers())).json()
    bodies = hooks.bodies()
    assert [b["data"]["callbackType"] for b in bodies] == ["text", "first", "complete"]
    assert {b["data"]["task_id"] for b in bodies} == {task_id}
    text, first, complete = (b["data"]["data"] for b in bodies)
    assert all(c["audio_url"] == "" and c["stream_audio_url"] == "" for c in text)
    assert first[0]["stream_audio_url"]
    assert first[0]["audio_url"] == ""
    assert all(c["audio_url"] and isinstance(c["duration"], float) for c in complete)
    assert all(c["model_name"] == "chirp-v4-5" for c in complete)
    assert info["data"]["status"] == "SUCCESS"
    assert [c["id"] for c in info["data"]["response"]["sunoData"]] == [c["id"] for c in complete]
    assert "audioUrl" in info["data"]["response"]["sunoData"][0]  # camelCase, as documented
    headers = [h for h, _ in hooks.got]
    assert not [h for h in headers if "x-webhook-id" in h]  # no id header: bodies name them
    if prefix == "kie":  # signed over {task_id}.{timestamp}
        for h in headers:
            verify_kie([HMAC], h, task_id, tolerance_s=300, now=SystemClock().now())
        assert all("expires=" in c["audio_url"] for c in complete)  # 20-minute links
    else:
        assert not [h for h in headers if "x-webhook-signature" in h]


@pytest.mark.parametrize(("prefix", "stage"), [("sunoapi", "error"), ("apibox", "failed")])
async def test_a_failed_suno_shape_task_calls_back_its_failure_stage_and_code(
        prefix: str, stage: str) -> None:
    async with playing(failure_code=531) as (sandbox, hooks):
        await sandbox.set_faults({"fail_tasks": 1.0})
        task_id = await suno_create(sandbox, prefix, hooks)
        await wait_until(lambda: len(hooks.got) == 2, within=10, what="two callbacks")
        info = (await sandbox.http.get(f"/{prefix}/api/v1/generate/record-info",
                                       params={"taskId": task_id},
                                       headers=sandbox.headers())).json()
    text, failed = hooks.bodies()
    assert text["data"]["callbackType"] == "text"
    assert (failed["code"], failed["data"]["callbackType"]) == (531, stage)
    assert "refunded" in failed["msg"]
    assert (info["data"]["status"], info["data"]["errorCode"]) == ("GENERATE_AUDIO_FAILED", 531)


async def test_suno_shape_refusals_are_in_the_body_code() -> None:
    async with playing() as (sandbox, hooks):
        await sandbox.http.put(f"/_sandbox/keys/{KEY}", json={"credits": 0})
        poor = await sandbox.http.post("/sunoapi/api/v1/generate", headers=sandbox.headers(),
                                       json={"prompt": "x", "callBackUrl": hooks.url})
        lost = await sandbox.http.get("/sunoapi/api/v1/generate/record-info",
                                      params={"taskId": "nope"}, headers=sandbox.headers())
        nokey = await sandbox.http.post("/sunoapi/api/v1/generate", json={})
    assert (poor.status_code, poor.json()["code"]) == (200, 429)
    assert lost.json()["code"] == 404
    assert nokey.json()["code"] == 401


async def test_piapi_calls_back_processing_then_completed_with_its_secret() -> None:
    async with playing() as (sandbox, hooks):
        created = await sandbox.http.post(
            "/piapi/api/v1/task", headers={"x-api-key": KEY},
            json={"model": "music-s", "task_type": "generate_music",
                  "input": {"gpt_description_prompt": "night city"},
                  "config": {"webhook_config": {"endpoint": hooks.url, "secret": "s3cr3t"}}})
        task_id = created.json()["data"]["task_id"]
        await wait_until(lambda: len(hooks.got) == 2, within=10, what="two callbacks")
        polled = (await sandbox.http.get(f"/piapi/api/v1/task/{task_id}",
                                         headers={"x-api-key": KEY})).json()
    assert created.json()["data"]["status"] == "pending"
    assert [b["data"]["status"] for b in hooks.bodies()] == ["processing", "completed"]
    assert {h["x-webhook-secret"] for h, _ in hooks.got} == {"s3cr3t"}
    assert polled["data"]["status"] == "completed"
    assert len(polled["data"]["output"]["clips"]) == 2


async def test_aimlapi_calls_back_once_signed_by_standard_webhooks() -> None:
    async with playing() as (sandbox, hooks):
        created = await sandbox.http.post("/aimlapi/v2/generate/audio",
                                          headers=sandbox.headers(),
                                          json={"model": "x", "prompt": "rain",
                                                "webhook_url": hooks.url})
        generation = created.json()["id"]
        await wait_until(lambda: len(hooks.got) == 1, within=10, what="one callback")
        polled = (await sandbox.http.get("/aimlapi/v2/generate/audio", headers=sandbox.headers(),
                                         params={"generation_id": generation})).json()
    headers, body = hooks.got[0]
    Verifier([AIML], [Scheme.STANDARD], tolerance_s=300, clock=SystemClock()).verify(
        headers, body)
    assert json.loads(body)["data"]["status"] == "completed"
    assert polled["audio_file"]["url"]


async def test_a_provider_sees_only_its_own_tasks() -> None:
    async with playing() as (sandbox, hooks):
        task_id = await suno_create(sandbox, "sunoapi", hooks)
        other = await sandbox.http.get("/apibox/api/v1/generate/record-info",
                                       params={"taskId": task_id}, headers=sandbox.headers())
        sonic = await sandbox.http.get(f"/api/v1/sonic/task/{task_id}",
                                       headers=sandbox.headers())
    assert other.json()["code"] == 404
    assert sonic.status_code == 200  # the same task, as Sonic's API shows every task
