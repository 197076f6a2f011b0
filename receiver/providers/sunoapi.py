"""sunoapi.org: its callbacks, its record-info poll and its client. kie.ai
(:mod:`receiver.providers.kie`) and apibox (:mod:`receiver.providers.apibox`) send the same
shape and are this adapter with their differences.

A callback (https://docs.sunoapi.org/suno-api/generate-music-callbacks) is a POST of::

    {"code": 200, "msg": "...", "data": {"callbackType": "text" | "first" | "complete" | "error",
     "task_id": "...", "data": [{"id", "audio_url", "source_audio_url", "stream_audio_url",
     "image_url", "prompt", "model_name", "title", "tags", "createTime", "duration"}]}}

read thus:

- the stage is the receiver's event: ``text`` and ``first`` (and ``second``, which some
  receivers see) are progress (``song.streaming``: the task and its clips running),
  ``complete`` is ``song.completed``, ``error`` (apibox: ``failed``) is ``song.failed``; any
  ``code`` of 400 or more fails the task whatever the stage (an older generation reported a
  failure as ``complete`` with 501); a stage it does not know is not used (quarantined);
- a clip's state is its stage's; its audio is ``audio_url``, and while running, when that
  is empty or a placeholder, its ``stream_audio_url`` (playable while it streams); its lyrics
  are ``prompt``, its creation time ``createTime``; camelCase twins (``taskId``,
  ``audioUrl``, ``streamAudioUrl``, ``imageUrl``...) are read wherever snake_case gives none;
  every field is kept raw;
- a failure's category reads the documented codes (:data:`CODES`): 400 lyrics refused as
  copyrighted material, 408 timeout, 413 the audio matches an existing work, 500/501 the
  provider failed, 531 the provider failed and refunded the credits; words that name a
  moderation or copyright refusal refine them (:func:`receiver.failures.classify_documented`).

Nothing authenticates a callback (the docs name no signature): the receiver's per-task token
in the callback URL, or the static ``path_secret``, lets it in, and it is confirmed by a poll
of ``GET /api/v1/generate/record-info?taskId=`` before it takes effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from receiver.clips import (
    ClipReport,
    parse_code,
    parse_identifier,
    parse_text,
    parse_url,
    read_clip,
)
from receiver.errors import PayloadError
from receiver.failures import FailureCategory, classify_documented
from receiver.payloads import Callback
from receiver.providers import EVENT_STATE, Adapter, Inbound, ProviderClient
from receiver.providers.wire import ApiWire, RetryPolicy
from receiver.signatures import Verified
from receiver.sonic.contract import CreateRequest, TaskType, normalise_model
from receiver.sonic.errors import SonicProtocolError, SonicValidationError
from receiver.sonic.responses import Created, Music
from receiver.states import State, WebhookEvent

DAY = 86400.0

# callbackType → the receiver's event
STAGES: dict[str, WebhookEvent] = {
    "text": WebhookEvent.STREAMING,
    "first": WebhookEvent.STREAMING,
    "second": WebhookEvent.STREAMING,
    "complete": WebhookEvent.COMPLETED,
    "error": WebhookEvent.FAILED,
    "failed": WebhookEvent.FAILED,
}
# record-info's status → the receiver's event (None: pending)
STATUSES: dict[str, WebhookEvent | None] = {
    "PENDING": None,
    "TEXT_SUCCESS": WebhookEvent.STREAMING,
    "FIRST_SUCCESS": WebhookEvent.STREAMING,
    "SUCCESS": WebhookEvent.COMPLETED,
    "CREATE_TASK_FAILED": WebhookEvent.FAILED,
    "GENERATE_AUDIO_FAILED": WebhookEvent.FAILED,
    "SENSITIVE_WORD_ERROR": WebhookEvent.FAILED,
    "CALLBACK_EXCEPTION": WebhookEvent.COMPLETED,  # the callback failed; see _poll_event
}
# The callback codes' documented meanings.
CODES: dict[int, FailureCategory] = {
    400: FailureCategory.COPYRIGHT,  # "Lyrics contained copyrighted material"
    408: FailureCategory.TIMEOUT,
    413: FailureCategory.COPYRIGHT,  # "Uploaded audio matches existing work of art"
    500: FailureCategory.UPSTREAM,
    501: FailureCategory.UPSTREAM,  # "Audio generation failed"
    531: FailureCategory.UPSTREAM,  # "generation failed ... your credits have been refunded"
}
# Sonic's model names → the provider's
MODELS: dict[str, str] = {
    "sonic-v3-5": "V3_5", "sonic-v4": "V4", "sonic-v4-5": "V4_5",
    "sonic-v4-5-plus": "V4_5PLUS", "sonic-v4-5-all": "V4_5ALL", "sonic-v5": "V5",
}
DEFAULT_MODEL = "V4_5"


def first(mapping: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of ``names`` that ``mapping`` holds (not null)."""
    for name in names:
        value = mapping.get(name)
        if value is not None:
            return value
    return None


def first_url(mapping: Mapping[str, Any], *names: str) -> str | None:
    """The first of ``names`` that holds a URL (placeholders are none)."""
    for name in names:
        if (url := parse_url(mapping.get(name))) is not None:
            return url
    return None


class SunoapiAdapter(Adapter):
    """sunoapi.org (see the module docstring)."""

    name = "sunoapi"
    covers_body = False
    tokens = True
    default_base_url = "https://api.sunoapi.org"
    link_lifetime_s: ClassVar[float | None] = 15 * DAY  # "kept 15 days": not in the docs found
    #: The stages that fail a task, for the sandbox (every adapter reads both).
    failure_stage: ClassVar[str] = "error"

    def authenticate(self, inbound: Inbound) -> Verified | None:
        return None  # nothing in the request: the token (or path secret) lets it in

    def callback(self, document: Mapping[str, Any], headers: Mapping[str, str]) -> Callback:
        data = document.get("data")
        envelope: Mapping[str, Any] = data if isinstance(data, dict) else {}
        task_id = parse_identifier(first(envelope, "task_id", "taskId")) or parse_identifier(
            first(document, "task_id", "taskId"))
        if task_id is None:
            raise PayloadError("no task_id in data")
        code = parse_code(document.get("code"))
        stage = parse_text(first(envelope, "callbackType", "callback_type"))
        event = STAGES.get(stage.strip().lower()) if stage else None
        if code is not None and code >= 400:
            event = WebhookEvent.FAILED
        elif event is None:
            raise PayloadError(f"unknown callbackType {stage[:40]!r}" if stage
                               else "no callbackType")
        clips = self.clips(envelope.get("data"), EVENT_STATE[event])
        message = parse_text(first(document, "msg", "message"))
        return self.made(task_id, event, code, message, clips, envelope)

    def made(self, task_id: str, event: WebhookEvent | None, code: int | None,
             message: str | None, clips: tuple[ClipReport, ...],
             envelope: Mapping[str, Any]) -> Callback:
        """The callback of ``task_id``; a failure's message is the most specific one."""
        category = None
        if event is WebhookEvent.FAILED:
            detail = parse_text(first(envelope, "error", "errorMessage", "error_message"))
            message = detail or message
            category = classify_documented(code, message, CODES)
        return Callback(task_id=task_id, event=event, platform=self.name, code=code,
                        message=message, clips=clips, failure_category=category)

    def clips(self, items: Any, state: State | None) -> tuple[ClipReport, ...]:
        """The clips of a callback or a poll, all in ``state`` (None: pending)."""
        if items is None:
            return ()
        if not isinstance(items, list):
            raise PayloadError("data.data is not a list of clips")
        clips = tuple(self.clip(item, index, state) for index, item in enumerate(items))
        if len({c.clip_id for c in clips}) != len(clips):
            raise PayloadError("data.data lists the same id twice")
        return clips

    @staticmethod
    def clip(item: Any, index: int, state: State | None) -> ClipReport:
        """One clip, its fields renamed to those the clip reader knows (its values read by
        that reader's rules), the object kept raw as it came."""
        if not isinstance(item, dict):
            raise PayloadError(f"data.data[{index}] is not a clip object")
        view = dict(item)
        view["state"] = (state or State.PENDING).value
        audio = first_url(item, "audio_url", "audioUrl")
        if audio is None and state is State.RUNNING:  # playable while it streams
            audio = first_url(item, "stream_audio_url", "streamAudioUrl")
        view["audio_url"] = audio
        view["lyrics"] = first(item, "lyrics", "prompt")
        view["created_at"] = first(item, "created_at", "createdAt", "createTime", "create_time")
        return dataclasses.replace(read_clip(view, index), raw=item)

    def poll_callback(self, document: Mapping[str, Any], task_id: str) -> Callback:
        data = document.get("data")
        if not isinstance(data, dict):
            raise PayloadError("record-info answer has no data object")
        status = parse_text(data.get("status"))
        if status is None or status.strip().upper() not in STATUSES:
            raise PayloadError(f"unknown record-info status {(status or '')[:40]!r}")
        response = data.get("response")
        answer: Mapping[str, Any] = response if isinstance(response, dict) else {}
        items = first(answer, "sunoData", "suno_data", "data")
        status = status.strip().upper()
        event = _poll_event(status, items)
        clips = self.clips(items, EVENT_STATE[event] if event else None)
        code = parse_code(first(data, "errorCode", "error_code"))
        message = parse_text(first(data, "errorMessage", "error_message")) or parse_text(
            document.get("msg"))
        if event is WebhookEvent.FAILED:
            category = _poll_category(status, code, message)
            return Callback(task_id=task_id, event=event, platform=self.name, code=code,
                            message=message or status.lower(), clips=clips,
                            failure_category=category)
        return Callback(task_id=task_id, event=event, platform=self.name, code=code,
                        message=message, clips=clips)

    def client(self, http: httpx.AsyncClient) -> ProviderClient | None:
        if not self.table.api_key:
            return None
        return self.client_class(self, http=http)

    @property
    def client_class(self) -> type[SunoapiClient]:
        return SunoapiClient


def _poll_event(status: str, items: Any) -> WebhookEvent | None:
    """The event a record-info status means. CALLBACK_EXCEPTION ("an error occurred during
    the callback") says nothing of the music: done if every clip has audio, else failed."""
    if status == "CALLBACK_EXCEPTION":
        clips = items if isinstance(items, list) else []
        done = bool(clips) and all(isinstance(c, dict) and first_url(c, "audio_url", "audioUrl")
                                   for c in clips)
        return WebhookEvent.COMPLETED if done else WebhookEvent.FAILED
    return STATUSES[status]


def _poll_category(status: str, code: int | None, message: str | None) -> FailureCategory:
    if status == "SENSITIVE_WORD_ERROR":
        return FailureCategory.MODERATION
    category = classify_documented(code, message, CODES)
    if category is FailureCategory.UNKNOWN and status == "CREATE_TASK_FAILED":
        return FailureCategory.INVALID_REQUEST
    if category is FailureCategory.UNKNOWN:
        return FailureCategory.UPSTREAM
    return category


class SunoapiClient(ApiWire, ProviderClient):
    """sunoapi.org's API (https://docs.sunoapi.org): generate, extend, record-info, and a
    concat at the ``concat_path`` the table names (the docs name none). Its answers are
    ``{code, msg, data}``; code 429 is "insufficient credits", 405 and 430 rate limits, 455
    maintenance."""

    provider = "sunoapi"
    service = "sunoapi.org"
    log_name = "sunoapi"
    message_names = ("msg", "message", "error")
    credits_codes = frozenset({429})
    later_codes = frozenset({405, 430, 455})

    def __init__(self, adapter: SunoapiAdapter, *, http: httpx.AsyncClient,
                 retry: RetryPolicy | None = None) -> None:
        self.adapter = adapter
        super().__init__(adapter.base_url, {"Authorization": f"Bearer {adapter.table.api_key}"},
                         http=http, retry=retry)

    async def create(self, request: CreateRequest, *, callback_url: str,
                     secret: str | None = None) -> Created:
        path, body = self.request_for(request, callback_url)
        answer = await self._call("POST", path, body, creates=request)
        data = answer.get("data")
        task_id = parse_identifier(first(data, "taskId", "task_id")) if isinstance(
            data, dict) else None
        if task_id is None:
            raise SonicProtocolError(f"{path} answered without data.taskId")
        return Created(task_id=task_id, message=parse_text(answer.get("msg")),
                       code=parse_code(answer.get("code")))

    def request_for(self, request: CreateRequest, callback_url: str
                    ) -> tuple[str, dict[str, Any]]:
        """Where and what to POST for ``request`` (the receiver's create shape)."""
        task_type = str(request.task_type)
        model = _model(request.mv)
        if task_type == TaskType.CREATE_MUSIC:
            custom = bool(request.custom_mode)
            body: dict[str, Any] = {
                "customMode": custom, "instrumental": bool(request.make_instrumental),
                "model": model, "callBackUrl": callback_url,
                "prompt": (request.prompt if custom else
                           request.gpt_description_prompt or request.prompt) or "",
            }
            if custom:
                body.update(style=request.tags or "", title=request.title or "")
            return "/api/v1/generate", _with_options(body, request)
        if task_type == TaskType.EXTEND_MUSIC:
            if not request.continue_clip_id:
                raise SonicValidationError("continue_clip_id is required")
            custom = any(v is not None for v in (request.prompt, request.tags, request.title))
            body = {"defaultParamFlag": custom, "audioId": request.continue_clip_id,
                    "model": model, "callBackUrl": callback_url}
            if request.continue_at is not None:
                body["continueAt"] = request.continue_at
            if custom:
                body.update(prompt=request.prompt or "", style=request.tags or "",
                            title=request.title or "")
            return "/api/v1/generate/extend", _with_options(body, request)
        if task_type == TaskType.CONCAT_MUSIC:
            concat = getattr(self.adapter.table, "concat_path", None)
            if not concat:
                raise SonicValidationError(
                    f"concat_music: {self.adapter.name} documents no concat endpoint "
                    f"(set [providers.{self.adapter.name}] concat_path)")
            if not request.continue_clip_id:
                raise SonicValidationError("continue_clip_id is required")
            return concat, {"audioId": request.continue_clip_id, "callBackUrl": callback_url}
        raise SonicValidationError(f"{task_type} is not offered through {self.adapter.name}")

    async def get_music(self, task_id: str) -> Music:
        if not task_id:
            raise SonicValidationError("task_id is required")
        answer = await self._call("GET", "/api/v1/generate/record-info", None,
                                  params={"taskId": task_id})
        return self.adapter.music(answer, task_id, "record-info answer")


def _model(mv: object) -> str:
    """The provider's name of the model ``mv`` names (Sonic's or its own)."""
    text = str(mv) if mv else ""
    known = normalise_model(text)
    if known is not None:
        return MODELS.get(known.value, DEFAULT_MODEL)
    return text or DEFAULT_MODEL


def _with_options(body: dict[str, Any], request: CreateRequest) -> dict[str, Any]:
    for key, value in (("negativeTags", request.negative_tags),
                       ("vocalGender", request.vocal_gender),
                       ("styleWeight", request.style_weight),
                       ("weirdnessConstraint", request.weirdness_constraint)):
        if value is not None:
            body[key] = str(value) if key == "vocalGender" else value
    return body
