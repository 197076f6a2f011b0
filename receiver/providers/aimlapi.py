"""AIMLAPI (AI/ML API): its generation callbacks, its generation poll and its client.

A request made with ``webhook_url`` is called back, when its job ends, with a POST signed by
Standard Webhooks (https://docs.aimlapi.com/capabilities/webhooks): ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` over ``{id}.{timestamp}.{body}``, HMAC-SHA256
with the workspace's one ``whsec_`` secret. The receiver already verifies that scheme
(:class:`receiver.signatures.Verifier`, ``standard``), constant-time, within the tolerance:
the body is authenticated, so a callback takes effect at once.

The event's body is not shown in the docs found: it is read as a generation, bare or under
``data`` (an envelope ``{"type", "data"}``): ``id`` (or ``generation_id``) is the task,
``status`` (``queued``, ``generating``, ``completed``, ``error``/``failed``) its event,
and its audio ``audio_file`` (``{url}``), or a list of ``audio_files``/``clips``, each a
clip (a single file is the clip named after the generation). The poll is
``GET /v2/generate/audio?generation_id=`` (Bearer key), answering the same generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from receiver.clips import (
    ClipReport,
    parse_code,
    parse_identifier,
    parse_text,
    read_clip,
)
from receiver.errors import PayloadError
from receiver.payloads import Callback
from receiver.providers import EVENT_STATE, Adapter, Inbound, ProviderClient, failure, status_event
from receiver.providers.sunoapi import first, first_url
from receiver.providers.wire import ApiWire, RetryPolicy
from receiver.signatures import Scheme, Verified, Verifier
from receiver.sonic.contract import CreateRequest, TaskType
from receiver.sonic.errors import SonicProtocolError, SonicValidationError
from receiver.sonic.responses import Created, Music
from receiver.states import State, WebhookEvent

STATUSES: dict[str, WebhookEvent | None] = {
    "queued": None,
    "pending": None,
    "generating": WebhookEvent.STREAMING,
    "processing": WebhookEvent.STREAMING,
    "completed": WebhookEvent.COMPLETED,
    "succeeded": WebhookEvent.COMPLETED,
    "error": WebhookEvent.FAILED,
    "failed": WebhookEvent.FAILED,
}


class AimlapiAdapter(Adapter):
    """AIMLAPI (see the module docstring)."""

    name = "aimlapi"
    covers_body = True
    default_base_url = "https://api.aimlapi.com"

    @property
    def verifier(self) -> Verifier:
        return Verifier(getattr(self.table, "webhook_secret", None) or (), (Scheme.STANDARD,),
                        tolerance_s=self.tolerance_s, clock=self.clock)

    def authenticate(self, inbound: Inbound) -> Verified | None:
        return self.verifier.verify(inbound.headers, inbound.body)

    def callback(self, document: Mapping[str, Any], headers: Mapping[str, str]) -> Callback:
        data = document.get("data")
        return self.generation(data if isinstance(data, dict) else document)

    def poll_callback(self, document: Mapping[str, Any], task_id: str) -> Callback:
        data = document.get("data")
        return self.generation(data if isinstance(data, dict) else document, task_id=task_id)

    def generation(self, data: Mapping[str, Any], *, task_id: str | None = None) -> Callback:
        task_id = parse_identifier(first(data, "id", "generation_id", "task_id")) or task_id
        if task_id is None:
            raise PayloadError("no generation id")
        event = status_event(data, STATUSES)
        state = EVENT_STATE[event] if event else State.PENDING
        clips = _clips(data, task_id, state)
        error = data.get("error")
        problem: Mapping[str, Any] = error if isinstance(error, dict) else {}
        code = parse_code(problem.get("code"))
        message, category = failure(
            event, code, parse_text(problem.get("message")) or parse_text(error))
        return Callback(task_id=task_id, event=event, platform=self.name, code=code,
                        message=message, clips=clips, failure_category=category)

    def client(self, http: httpx.AsyncClient) -> ProviderClient | None:
        if not self.table.api_key:
            return None
        return AimlapiClient(self, http=http)


def _clips(data: Mapping[str, Any], task_id: str, state: State) -> tuple[ClipReport, ...]:
    many = first(data, "audio_files", "clips")
    if many is None:
        single = data.get("audio_file")
        if not isinstance(single, dict):
            return ()
        many = [{"id": task_id, **single}]
    if not isinstance(many, list):
        raise PayloadError("audio_files is not a list")
    clips: list[ClipReport] = []
    for index, item in enumerate(many):
        if not isinstance(item, dict):
            raise PayloadError(f"audio file {index} is not an object")
        view = {**item, "state": state.value,
                "audio_url": first_url(item, "url", "audio_url", "audioUrl")}
        if first(item, "id", "clip_id") is None:
            view["id"] = f"{task_id}:{index}"
        clips.append(read_clip(view, index))
    if len({c.clip_id for c in clips}) != len(clips):
        raise PayloadError("the same audio file twice")
    return tuple(clips)


class AimlapiClient(ApiWire, ProviderClient):
    """AIMLAPI's audio generations: ``POST /v2/generate/audio`` (with ``webhook_url``),
    ``GET /v2/generate/audio?generation_id=``; Bearer key."""

    provider = "aimlapi"
    service = "AIMLAPI"
    log_name = "aimlapi"

    def __init__(self, adapter: AimlapiAdapter, *, http: httpx.AsyncClient,
                 retry: RetryPolicy | None = None) -> None:
        self.adapter = adapter
        super().__init__(adapter.base_url, {"Authorization": f"Bearer {adapter.table.api_key}"},
                         http=http, retry=retry)

    async def create(self, request: CreateRequest, *, callback_url: str,
                     secret: str | None = None) -> Created:
        if str(request.task_type) != TaskType.CREATE_MUSIC:
            raise SonicValidationError(f"{request.task_type} is not offered through AIMLAPI")
        body: dict[str, Any] = {
            "model": getattr(self.adapter.table, "model", ""), "webhook_url": callback_url,
            "prompt": request.gpt_description_prompt or request.tags or request.prompt or "",
        }
        if request.prompt and request.custom_mode:
            body["lyrics"] = request.prompt
        answer = await self._call("POST", "/v2/generate/audio", body, creates=request)
        task_id = parse_identifier(first(answer, "id", "generation_id"))
        if task_id is None:
            raise SonicProtocolError("/v2/generate/audio answered without an id")
        return Created(task_id=task_id, message=parse_text(answer.get("status")),
                       code=parse_code(answer.get("code")))

    async def get_music(self, task_id: str) -> Music:
        if not task_id:
            raise SonicValidationError("task_id is required")
        answer = await self._call("GET", "/v2/generate/audio", None,
                                  params={"generation_id": task_id})
        return self.adapter.music(answer, task_id, "generation answer")
