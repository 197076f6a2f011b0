"""A typed async client for the Sonic API.

Every call checks its request with :mod:`receiver.sonic.contract` first and raises
:class:`SonicValidationError` with the seed's message *before any network call*. Answers are
parsed into the dataclasses of :mod:`receiver.sonic.responses`; refusals become the named
errors of :mod:`receiver.sonic.errors`:

=========================================  ===============================================
the service answers                        the client raises
=========================================  ===============================================
400                                        ``SonicValidationError`` (the service's message)
401, or 403 not about credits              ``SonicAuthError``
"The remaining credits are not enough..."  ``InsufficientCredits`` (403, any status)
404, or "task not found."                  ``TaskNotFound``
429, 5xx (504 too), timeout, no connection retried with backoff, then ``SonicUnavailable``
=========================================  ===============================================

A call that creates something (a task, a one-stop upload task, a persona) is never resent
once it may have reached the service: a read timeout, a dropped connection or a 5xx after the
request went out raises :class:`CreateOutcomeUnknown` carrying the request, so whoever holds it
can look the task up before trying again. Only failures where nothing was sent (connecting,
waiting for a pooled connection) and refusals that accept nothing (429) are retried for them.

Retries use stamina (exponential backoff with jitter), tuned by :class:`RetryPolicy`; tests
pass a policy without waits (or use ``stamina.set_testing``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypedDict, Unpack
from urllib.parse import quote

import httpx
import stamina
import structlog

from receiver.clips import json_kind, load
from receiver.errors import PayloadError, SettingsError
from receiver.sonic.contract import (
    CREDITS_PREFIX,
    ApiPaths,
    BpmRequest,
    CreateRequest,
    Message,
    Model,
    PersonaRequest,
    TaskType,
    UploadRequest,
    UploadTaskRequest,
    VocalGender,
    VoxRequest,
    validate,
    validate_bpm,
    validate_persona,
    validate_upload,
    validate_upload_task,
    validate_vox,
)
from receiver.sonic.errors import (
    CreateOutcomeUnknown,
    InsufficientCredits,
    SonicAuthError,
    SonicError,
    SonicProtocolError,
    SonicRequestError,
    SonicUnavailable,
    SonicValidationError,
    TaskNotFound,
)
from receiver.sonic.responses import Bpm, Created, Json, Music, Persona, Uploaded, Vox

log = structlog.get_logger("receiver.sonic.client")

ENV_BASE_URL = "SONIC_API_BASE_URL"
ENV_API_KEY = "SONIC_API_KEY"

# Failures where the request cannot have left this process: safe to resend even a create.
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How retryable failures are retried: stamina's knobs (seconds).

    ``attempts`` counts the first try. Waits grow as ``wait_initial_s * wait_exp_base**n`` plus
    up to ``wait_jitter_s``, capped at ``wait_max_s``; ``timeout_s`` bounds the whole call.
    """

    attempts: int = 4
    timeout_s: float | None = 30.0
    wait_initial_s: float = 0.25
    wait_max_s: float = 5.0
    wait_jitter_s: float = 0.5
    wait_exp_base: float = 2.0

    @classmethod
    def without_waits(cls, attempts: int = 3) -> RetryPolicy:
        """Retries that do not wait: for tests and for callers that retry on their own."""
        return cls(attempts=attempts, wait_initial_s=0.0, wait_max_s=0.0, wait_jitter_s=0.0)


class CreateOptions(TypedDict, total=False):
    """The optional fields of a create, for the typed wrappers."""

    title: str
    tags: str
    negative_tags: str
    prompt: str
    gpt_description_prompt: str
    auto_lyrics: bool
    make_instrumental: bool
    vocal_gender: VocalGender | str
    style_weight: float
    weirdness_constraint: float
    audio_weight: float
    webhook_url: str
    webhook_secret: str


class _Retry(SonicUnavailable):
    """One failed attempt that may be retried (becomes SonicUnavailable when retries end)."""


def _refuse(message: str | None) -> None:
    if message is not None:
        raise SonicValidationError(message)


class SonicClient:
    """The Sonic API over an injected :class:`httpx.AsyncClient` (its timeouts, limits and
    transport are the caller's). One client per API key."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.AsyncClient,
        retry: RetryPolicy | None = None,
        paths: ApiPaths | None = None,
    ) -> None:
        if not base_url:
            raise SettingsError("the Sonic API base URL is empty")
        if not api_key:
            raise SettingsError("the Sonic API key is empty")
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._http = http
        self._retry = retry or RetryPolicy()
        self._paths = paths or ApiPaths()

    @classmethod
    def from_env(
        cls,
        http: httpx.AsyncClient,
        *,
        environ: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> SonicClient:
        """A client for ``$SONIC_API_BASE_URL`` with ``$SONIC_API_KEY``; raises
        :class:`SettingsError` naming what is missing."""
        env = os.environ if environ is None else environ
        missing = [name for name in (ENV_BASE_URL, ENV_API_KEY) if not env.get(name)]
        if missing:
            raise SettingsError(f"{' and '.join(missing)} must be set to call the Sonic API")
        return cls(env[ENV_BASE_URL], env[ENV_API_KEY], http=http, retry=retry)

    def __repr__(self) -> str:  # never the key
        return f"SonicClient({self._base_url!r})"

    # --- creates ------------------------------------------------------------------------------

    async def create(self, request: CreateRequest, *, source_is_upload: bool = False) -> Created:
        """Start a task. ``source_is_upload``: ``continue_clip_id`` came from upload-music
        (only the caller knows), so only the ``*_upload_music`` types may use it."""
        _refuse(validate(request, source_is_upload=source_is_upload))
        body = await self._call("POST", self._paths.create, request.to_json(), creates=request)
        return Created.from_json(body)

    async def create_music(
        self, *, mv: Model | str, custom_mode: bool, **options: Unpack[CreateOptions]
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.CREATE_MUSIC, mv=mv, custom_mode=custom_mode, **options
            )
        )

    async def extend_music(
        self,
        continue_clip_id: str,
        *,
        continue_at: float,
        mv: Model | str,
        custom_mode: bool,
        **options: Unpack[CreateOptions],
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.EXTEND_MUSIC,
                continue_clip_id=continue_clip_id,
                continue_at=continue_at,
                mv=mv,
                custom_mode=custom_mode,
                **options,
            )
        )

    async def cover_music(
        self,
        continue_clip_id: str,
        *,
        mv: Model | str,
        custom_mode: bool,
        **options: Unpack[CreateOptions],
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.COVER_MUSIC,
                continue_clip_id=continue_clip_id,
                mv=mv,
                custom_mode=custom_mode,
                **options,
            )
        )

    async def concat_music(
        self,
        continue_clip_id: str,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.CONCAT_MUSIC,
                continue_clip_id=continue_clip_id,
                webhook_url=webhook_url,
                webhook_secret=webhook_secret,
            )
        )

    async def persona_music(
        self,
        persona_id: str,
        *,
        mv: Model | str,
        custom_mode: bool,
        **options: Unpack[CreateOptions],
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.PERSONA_MUSIC,
                persona_id=persona_id,
                mv=mv,
                custom_mode=custom_mode,
                **options,
            )
        )

    async def extend_upload_music(
        self,
        continue_clip_id: str,
        *,
        continue_at: float,
        mv: Model | str,
        custom_mode: bool,
        **options: Unpack[CreateOptions],
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.EXTEND_UPLOAD_MUSIC,
                continue_clip_id=continue_clip_id,
                continue_at=continue_at,
                mv=mv,
                custom_mode=custom_mode,
                **options,
            )
        )

    async def cover_upload_music(
        self,
        continue_clip_id: str,
        *,
        mv: Model | str,
        custom_mode: bool,
        **options: Unpack[CreateOptions],
    ) -> Created:
        return await self.create(
            CreateRequest(
                task_type=TaskType.COVER_UPLOAD_MUSIC,
                continue_clip_id=continue_clip_id,
                mv=mv,
                custom_mode=custom_mode,
                **options,
            )
        )

    async def upload_task(self, upload: UploadTaskRequest) -> Created:
        """The one-stop endpoints: upload ``url`` and extend or cover it in one call."""
        _refuse(validate_upload_task(upload))
        path = (
            self._paths.upload_extend
            if upload.request.task_type == TaskType.EXTEND_UPLOAD_MUSIC
            else self._paths.upload_cover
        )
        body = await self._call("POST", path, upload.to_json(), creates=upload)
        return Created.from_json(body)

    async def upload_extend_music(
        self,
        url: str,
        *,
        continue_at: float,
        mv: Model | str,
        custom_mode: bool,
        **options: Unpack[CreateOptions],
    ) -> Created:
        request = CreateRequest(
            task_type=TaskType.EXTEND_UPLOAD_MUSIC,
            continue_at=continue_at,
            mv=mv,
            custom_mode=custom_mode,
            **options,
        )
        return await self.upload_task(UploadTaskRequest(url=url, request=request))

    async def upload_cover_music(
        self, url: str, *, mv: Model | str, custom_mode: bool, **options: Unpack[CreateOptions]
    ) -> Created:
        request = CreateRequest(
            task_type=TaskType.COVER_UPLOAD_MUSIC, mv=mv, custom_mode=custom_mode, **options
        )
        return await self.upload_task(UploadTaskRequest(url=url, request=request))

    async def create_persona(
        self, continue_clip_id: str, *, name: str, description: str | None = None
    ) -> Persona:
        request = PersonaRequest(
            name=name, description=description, continue_clip_id=continue_clip_id
        )
        _refuse(validate_persona(request))
        body = await self._call("POST", self._paths.persona, request.to_json(), creates=request)
        return Persona.from_json(body)

    # --- reads (retried) ----------------------------------------------------------------------

    async def get_music(self, task_id: str) -> Music:
        """Poll a task: its clips in whatever state they are."""
        if not task_id:
            raise SonicValidationError("task_id is required")
        path = self._paths.task.format(task_id=quote(task_id, safe=""))
        return Music.from_json(await self._call("GET", path, None))

    async def upload_music(self, url: str) -> Uploaded:
        """Have the service fetch ``url`` and make it a clip (extend/cover it with the
        ``*_upload_music`` types). Retried: a duplicate upload costs nothing."""
        request = UploadRequest(url=url)
        _refuse(validate_upload(request))
        return Uploaded.from_json(await self._call("POST", self._paths.upload, request.to_json()))

    async def get_bpm(self, clip_id: str) -> Bpm:
        request = BpmRequest(clip_id=clip_id)
        _refuse(validate_bpm(request))
        return Bpm.from_json(await self._call("POST", self._paths.bpm, request.to_json()))

    async def get_vox(
        self,
        clip_id: str,
        vocal_start_s: float | None = None,
        vocal_end_s: float | None = None,
    ) -> Vox:
        request = VoxRequest(clip_id=clip_id, vocal_start_s=vocal_start_s, vocal_end_s=vocal_end_s)
        _refuse(validate_vox(request))
        return Vox.from_json(await self._call("POST", self._paths.vox, request.to_json()))

    # --- the wire -----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        creates: object | None = None,
    ) -> Json:
        policy = self._retry
        try:
            async for attempt in stamina.retry_context(
                on=_Retry,
                attempts=policy.attempts,
                timeout=policy.timeout_s,
                wait_initial=policy.wait_initial_s,
                wait_max=policy.wait_max_s,
                wait_jitter=policy.wait_jitter_s,
                wait_exp_base=policy.wait_exp_base,
            ):
                with attempt:
                    return await self._once(method, path, body, creates)
        except _Retry as exc:
            log.warning("sonic_unavailable", path=path, reason=exc.message)
            raise SonicUnavailable(exc.message) from exc.__cause__
        raise AssertionError("stamina ended without an outcome")  # pragma: no cover

    async def _once(
        self, method: str, path: str, body: dict[str, Any] | None, creates: object | None
    ) -> Json:
        try:
            response = await self._http.request(
                method, self._base_url + path, json=body, headers=self._headers
            )
        except httpx.UnsupportedProtocol as exc:
            raise SonicError(f"cannot call {self._base_url}: {exc}") from exc
        except httpx.TransportError as exc:  # timeouts, connection and protocol errors
            reason = f"{type(exc).__name__} on {method} {path}"
            if creates is not None and not isinstance(exc, _NOTHING_SENT):
                self._outcome_unknown(creates, path, reason, exc)
            raise _Retry(reason) from exc
        return self._answer(response, path, creates)

    def _answer(self, response: httpx.Response, path: str, creates: object | None) -> Json:
        status = response.status_code
        try:
            # Read by the clip reader's rules, so an answer reads as the same body would in a
            # webhook (an integer past Python's digit limit is null, not unreadable).
            data: object = load(response.content)
            unusable = f"a JSON {json_kind(data)}"
        except PayloadError as exc:
            data, unusable = None, exc.message
        body: Json = data if isinstance(data, Mapping) else {}
        code = body.get("code")
        # Some answers say HTTP 200 but carry a refusal in the body's code ("task not found.").
        # Only 4xx codes count: a 200 whose body says 500 still carries data (a failed task's
        # clips, say) and must not be retried as if the service were down.
        if 200 <= status < 300 and isinstance(code, int) and not isinstance(code, bool):
            status = code if 400 <= code < 500 else status
        if 200 <= status < 300:
            if data is None or not isinstance(data, Mapping):
                raise SonicProtocolError(
                    f"{path} answered {status} without a JSON object ({unusable})"
                )
            return body
        message = _message(body) or response.text[:200] or response.reason_phrase
        if status == 429 or status >= 500:
            reason = f"{path} answered {status}: {message}"
            if creates is not None and status != 429:  # a 429 accepted nothing
                self._outcome_unknown(creates, path, reason, None)
            raise _Retry(reason)
        self._raise_refusal(status, message, code, body)

    def _outcome_unknown(
        self, creates: object, path: str, reason: str, exc: Exception | None
    ) -> NoReturn:
        log.warning("sonic_create_outcome_unknown", path=path, reason=reason)
        raise CreateOutcomeUnknown(
            creates, endpoint=path, message=f"the create may have reached Sonic: {reason}"
        ) from exc

    @staticmethod
    def _raise_refusal(status: int, message: str, code: object, body: Json) -> NoReturn:
        kind: type[SonicRequestError]
        if message.strip().lower().startswith(Message.TASK_NOT_FOUND.rstrip(".")):
            kind = TaskNotFound
        elif message.startswith(CREDITS_PREFIX):
            kind = InsufficientCredits
        elif status == 404:
            kind = TaskNotFound
        elif status == 400:
            kind = SonicValidationError
        elif status in (401, 403):
            kind = SonicAuthError
        else:
            kind = SonicRequestError
        raise kind(message, status=status, code=code, body=body)


def _message(body: Json) -> str | None:
    for name in ("message", "error", "detail"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None
