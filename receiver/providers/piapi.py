"""PiAPI: its task callbacks, its task poll and its client (https://piapi.ai/docs).

A task created with ``config.webhook_config = {endpoint, secret}`` is called back with::

    {"timestamp": ..., "data": {"task_id", "model", "task_type", "status", "input",
     "output": {...}, "error": {"code", "message"}}}

and the configured secret, in plain text, in an ``x-webhook-secret`` header: it is compared in
constant time with each of the table's ``webhook_secret`` (a rotation), never stored or
logged. It proves the sender knows the secret, and nothing more: whoever sees one request
(a logging proxy) can forge any, and the body itself is not signed. A callback whose secret
matches takes effect at once unless ``confirm = true``.

``status`` is the receiver's event: ``pending`` and ``staged`` say nothing new, ``processing``
is progress (some tasks call back on it), ``completed`` and ``failed`` are terminal. The output's
clips are read from ``output.clips`` (an object keyed by clip id, or a list) or ``output.songs``
(PiAPI's Udio shape: ``song_path``, ``image_path``), each by the one clip reader, with its
``metadata`` (duration, tags, prompt) and its own ``status`` where it has one; the output's
shape for music models is not confirmed by the docs found (the Suno endpoint is marked
stopped there), so both are read and anything else is kept raw. A failure's category is read
from ``error.code`` and ``error.message`` by :func:`receiver.failures.classify`.

The poll is ``GET /api/v1/task/{task_id}`` (``x-api-key``), answering ``{code, data, message}``
with ``data`` as in the callback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from receiver.clips import (
    ClipReport,
    parse_code,
    parse_identifier,
    parse_state,
    parse_text,
    read_clip,
)
from receiver.errors import PayloadError
from receiver.payloads import Callback
from receiver.providers import (
    EVENT_STATE,
    Adapter,
    Inbound,
    ProviderClient,
    failure,
    refuse,
    status_event,
)
from receiver.providers.sunoapi import first, first_url
from receiver.providers.wire import ApiWire, RetryPolicy
from receiver.signatures import HEADER_SECRET, Scheme, Verified, secret_matches
from receiver.sonic.contract import CreateRequest, TaskType
from receiver.sonic.errors import SonicProtocolError, SonicValidationError
from receiver.sonic.responses import Created, Music
from receiver.states import State, WebhookEvent

STATUSES: dict[str, WebhookEvent | None] = {
    "pending": None,
    "staged": None,
    "processing": WebhookEvent.STREAMING,
    "completed": WebhookEvent.COMPLETED,
    "failed": WebhookEvent.FAILED,
}


class PiapiAdapter(Adapter):
    """PiAPI (see the module docstring)."""

    name = "piapi"
    covers_body = True  # as far as a shared secret can: see the module docstring
    default_base_url = "https://api.piapi.ai"

    def authenticate(self, inbound: Inbound) -> Verified | None:
        given = inbound.headers.get(HEADER_SECRET)
        if given is None:
            raise refuse("missing_signature", Scheme.HEADER_SECRET, "no x-webhook-secret")
        secrets = getattr(self.table, "webhook_secret", None) or ()
        if not isinstance(given, str) or not secret_matches(given.strip(), secrets):
            raise refuse("signature_mismatch", Scheme.HEADER_SECRET)
        return Verified(scheme=Scheme.HEADER_SECRET, timestamp=None,
                        signed_content=inbound.body)

    def callback(self, document: Mapping[str, Any], headers: Mapping[str, str]) -> Callback:
        data = document.get("data")
        if not isinstance(data, dict):
            raise PayloadError("no data object")
        return self.task(data)

    def poll_callback(self, document: Mapping[str, Any], task_id: str) -> Callback:
        data = document.get("data")
        if not isinstance(data, dict):
            raise PayloadError("task answer has no data object")
        return self.task(data, task_id=task_id)

    def task(self, data: Mapping[str, Any], *, task_id: str | None = None) -> Callback:
        """A task object (the callback's ``data``, the poll's too) as a callback."""
        task_id = parse_identifier(first(data, "task_id", "taskId")) or task_id
        if task_id is None:
            raise PayloadError("no data.task_id")
        event = status_event(data, STATUSES)
        output = data.get("output")
        clips = self.clips(output if isinstance(output, dict) else {},
                           EVENT_STATE[event] if event else None)
        error = data.get("error")
        problem: Mapping[str, Any] = error if isinstance(error, dict) else {}
        code = parse_code(problem.get("code"))
        message, category = failure(
            event, code, parse_text(first(problem, "message", "raw_message")))
        return Callback(task_id=task_id, event=event, platform=self.name, code=code,
                        message=message, clips=clips, failure_category=category)

    @staticmethod
    def clips(output: Mapping[str, Any], state: State | None) -> tuple[ClipReport, ...]:
        found = first(output, "clips", "songs")
        if found is None:
            return ()
        items = list(found.values()) if isinstance(found, dict) else found
        if not isinstance(items, list):
            raise PayloadError("output.clips is not a list or an object of clips")
        clips = tuple(_clip(item, index, state) for index, item in enumerate(items))
        if len({c.clip_id for c in clips}) != len(clips):
            raise PayloadError("output lists the same clip twice")
        return clips

    def client(self, http: httpx.AsyncClient) -> ProviderClient | None:
        if not self.table.api_key:
            return None
        return PiapiClient(self, http=http)


def _clip(item: Any, index: int, state: State | None) -> ClipReport:
    if not isinstance(item, dict):
        raise PayloadError(f"output clip {index} is not an object")
    metadata = item.get("metadata")
    meta: Mapping[str, Any] = metadata if isinstance(metadata, dict) else {}
    view = dict(item)
    own = parse_state(first(item, "status", "state"))
    if own is None and item.get("finished") is True:
        own = State.SUCCEEDED
    view["state"] = (own or state or State.PENDING).value  # its own state, else its task's
    view["audio_url"] = first_url(item, "audio_url", "audioUrl", "song_path")
    view["image_url"] = first_url(item, "image_url", "imageUrl", "image_large_url",
                                  "image_path")
    view["duration"] = first(item, "duration") if item.get("duration") is not None else (
        meta.get("duration"))
    view["tags"] = first(item, "tags") or meta.get("tags")
    view["lyrics"] = first(item, "lyrics") or first(meta, "prompt") or item.get("prompt")
    view["mv"] = first(item, "mv", "model_name", "major_model_version")
    view["error_message"] = first(item, "error_message") or meta.get("error_message")
    return dataclasses.replace(read_clip(view, index), raw=item)


class PiapiClient(ApiWire, ProviderClient):
    """PiAPI's unified task API: ``POST /api/v1/task`` (its ``webhook_config`` carries the
    callback URL and the secret), ``GET /api/v1/task/{task_id}``; ``x-api-key``."""

    provider = "piapi"
    service = "PiAPI"
    log_name = "piapi"

    def __init__(self, adapter: PiapiAdapter, *, http: httpx.AsyncClient,
                 retry: RetryPolicy | None = None) -> None:
        self.adapter = adapter
        super().__init__(adapter.base_url, {"x-api-key": adapter.table.api_key or ""},
                         http=http, retry=retry)

    async def create(self, request: CreateRequest, *, callback_url: str,
                     secret: str | None = None) -> Created:
        body = self.request_for(request, callback_url, secret)
        answer = await self._call("POST", "/api/v1/task", body, creates=request)
        data = answer.get("data")
        task_id = parse_identifier(first(data, "task_id", "taskId")) if isinstance(
            data, dict) else None
        if task_id is None:
            raise SonicProtocolError("/api/v1/task answered without data.task_id")
        return Created(task_id=task_id, message=parse_text(answer.get("message")),
                       code=parse_code(answer.get("code")))

    def request_for(self, request: CreateRequest, callback_url: str,
                    secret: str | None) -> dict[str, Any]:
        task_type = str(request.task_type)
        model = getattr(self.adapter.table, "model", "music-s")
        entry: dict[str, Any] = {}
        if task_type == TaskType.EXTEND_MUSIC:
            if not request.continue_clip_id:
                raise SonicValidationError("continue_clip_id is required")
            entry.update(continue_clip_id=request.continue_clip_id,
                         continue_at=request.continue_at)
        elif task_type != TaskType.CREATE_MUSIC:
            raise SonicValidationError(f"{task_type} is not offered through PiAPI")
        custom = bool(request.custom_mode) or task_type == TaskType.EXTEND_MUSIC
        if custom:
            entry.update(prompt=request.prompt or "", tags=request.tags or "",
                         title=request.title or "", negative_tags=request.negative_tags or "")
        else:
            entry["gpt_description_prompt"] = request.gpt_description_prompt or (
                request.prompt or "")
        entry["make_instrumental"] = bool(request.make_instrumental)
        config: dict[str, Any] = {"endpoint": callback_url}
        if secret:
            config["secret"] = secret
        return {"model": model,
                "task_type": "generate_music_custom" if custom else "generate_music",
                "input": {k: v for k, v in entry.items() if v is not None},
                "config": {"webhook_config": config}}

    async def get_music(self, task_id: str) -> Music:
        if not task_id:
            raise SonicValidationError("task_id is required")
        answer = await self._call("GET", "/api/v1/task/" + quote(task_id, safe=""), None)
        return self.adapter.music(answer, task_id, "task answer")
