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

The wire (retries with stamina, tuned by :class:`RetryPolicy`; the refusals above) is
:class:`receiver.providers.wire.ApiWire`, shared with the other providers' clients; tests
pass a policy without waits (or use ``stamina.set_testing``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypedDict, Unpack
from urllib.parse import quote

import httpx

from receiver.errors import SettingsError
from receiver.providers.wire import ApiWire, RetryPolicy
from receiver.sonic.contract import (
    CREDITS_PREFIX,
    ApiPaths,
    BpmRequest,
    CreateRequest,
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
from receiver.sonic.errors import SonicValidationError
from receiver.sonic.responses import Bpm, Created, Music, Persona, Uploaded, Vox

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "CreateOptions", "RetryPolicy", "SonicClient"]

ENV_BASE_URL = "SONIC_API_BASE_URL"
ENV_API_KEY = "SONIC_API_KEY"


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


def _refuse(message: str | None) -> None:
    if message is not None:
        raise SonicValidationError(message)


class SonicClient(ApiWire):
    """The Sonic API over an injected :class:`httpx.AsyncClient` (its timeouts, limits and
    transport are the caller's). One client per API key."""

    service = "Sonic"
    log_name = "sonic"
    credits_prefix = CREDITS_PREFIX

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
        super().__init__(base_url, {"Authorization": f"Bearer {api_key}"}, http=http,
                         retry=retry)
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
