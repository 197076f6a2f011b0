"""The sandbox as an ASGI app: the Sonic API at its documented paths, media, and controls.

API (``Authorization: Bearer <key>``; answers and error texts from the contract)::

    POST /api/v1/sonic/create           {task_type, ...}      → {message, task_id}
    GET  /api/v1/sonic/task/{task_id}                         → {code, message, data: [clip]}
    POST /api/v1/sonic/upload           {url}                 → {code, message, clip_id}
    POST /api/v1/sonic/upload-extend    {url, continue_at...} → {message, task_id}
    POST /api/v1/sonic/upload-cover     {url, ...}            → {message, task_id}
    POST /api/v1/sonic/persona          {name, description, continue_clip_id}
                                                              → {code, message, persona_id}
    POST /api/v1/sonic/bpm              {clip_id}             → {code, data: {avg_bpm, ...}}
    POST /api/v1/sonic/vox              {clip_id, vocal_start_s?, vocal_end_s?}
                                                              → {code, data: {vocal_url, ...}}

Media (no auth, like a CDN; GET and HEAD, byte ranges)::

    /media/audio/{clip_id}.wav   /media/stream/{clip_id}.wav   /media/image/{clip_id}.png
    /media/vox/{clip_id}/{vocals|instrumental}.wav?start_cs=&end_cs=

With the ``links.expire_s`` fault, audio, stream and image links carry
``?expires=&signature=`` and answer 403 once expired (get-music gives fresh ones).

Controls (no auth: the sandbox is a local tool)::

    GET  /_sandbox/health
    GET  /_sandbox/keys                      PUT /_sandbox/keys/{key} {credits?, legacy_signature?}
    GET  /_sandbox/faults                    PUT /_sandbox/faults {the setup GET answers}
    DELETE /_sandbox/faults[?key=K]          (a key's override, or the global config)
    GET  /_sandbox/deliveries[?task_id=&event=&outcome=]
    GET  /_sandbox/tasks/{task_id}           (the plan: timeline, fate, clips, tempo)
    POST /_sandbox/seed {count, api_key?, state?: succeeded|failed, mv?} → {task_ids}

The other providers' APIs (sunoapi.org, kie.ai, apibox, PiAPI, AIMLAPI) are played under
``/<provider>/`` over the same tasks, media and controls: see
:mod:`receiver.sonic.sandbox.providers`.

Upload-music fetches only loopback URLs (the sandbox must not become a way out), refuses what
is not audio, and keeps the bytes to serve them back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import receiver.sonic.sandbox.media as media
from receiver.clock import Clock, SystemClock
from receiver.sonic.contract import (
    TASKS,
    ApiPaths,
    BpmRequest,
    ClipState,
    CreateRequest,
    Message,
    Model,
    OwnMessage,
    PersonaRequest,
    TaskType,
    UploadRequest,
    UploadTaskRequest,
    VoxRequest,
    WebhookEvent,
    validate,
    validate_bpm,
    validate_persona,
    validate_upload,
    validate_upload_task,
    validate_vox,
)
from receiver.sonic.errors import SonicValidationError
from receiver.sonic.sandbox.config import SandboxConfig
from receiver.sonic.sandbox.faults import (
    SETUP,
    FaultConfig,
    FaultConfigError,
    MediaFault,
)
from receiver.sonic.sandbox.providers import ProviderApis
from receiver.sonic.sandbox.state import ClipPlan, SandboxState, Source, Upload
from receiver.sonic.sandbox.webhooks import Webhooks

log = structlog.get_logger("receiver.sonic.sandbox")

Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """An answer other than success, raised from deep inside a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _answer(status: int, message: str) -> JSONResponse:
    body: dict[str, Any] = {"code": status, "message": message}
    if status == 401:
        # Error bodies vary: some carry ``error`` as well (clients must not rely on ``code``).
        body = {"error": "Unauthorized", "message": message}
    return JSONResponse(body, status_code=status)


class Sandbox:
    """The sandbox's state and handlers; :func:`create_sandbox_app` wraps it in Starlette."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Clock,
        http: httpx.AsyncClient | None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.state = SandboxState(config, clock)
        self._given_http = http
        self._http: httpx.AsyncClient | None = None
        self._webhooks: Webhooks | None = None
        self.providers = ProviderApis(self)

    @property
    def webhooks(self) -> Webhooks:
        if self._webhooks is None:
            raise RuntimeError("the sandbox's lifespan has not started (serve it with lifespan)")
        return self._webhooks

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("the sandbox's lifespan has not started (serve it with lifespan)")
        return self._http

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        owned = self._given_http is None
        self._http = self._given_http or httpx.AsyncClient(timeout=self.config.webhook_timeout_s)
        self._webhooks = Webhooks(self.state, http=self._http, clock=self.clock,
                                  flavours=self.providers.flavours)
        log.info(
            "sandbox_started",
            speed=self.config.speed,
            seed=self.config.seed,
            keys=len(self.state.balances),
        )
        try:
            yield
        finally:
            await self._webhooks.aclose()
            if owned:
                await self._http.aclose()
            log.info("sandbox_stopped")

    def routes(self, paths: ApiPaths) -> list[Route]:
        api = [
            (paths.create, self.create, "POST"),
            (paths.task.replace("{task_id}", "{task_id:path}"), self.get_music, "GET"),
            (paths.upload, self.upload, "POST"),
            (paths.upload_extend, self.upload_extend, "POST"),
            (paths.upload_cover, self.upload_cover, "POST"),
            (paths.persona, self.create_persona, "POST"),
            (paths.bpm, self.get_bpm, "POST"),
            (paths.vox, self.get_vox, "POST"),
        ]
        controls = [
            ("/_sandbox/health", self.health, "GET"),
            ("/_sandbox/keys", self.list_keys, "GET"),
            ("/_sandbox/keys/{key}", self.put_key, "PUT"),
            ("/_sandbox/faults", self.get_faults, "GET"),
            ("/_sandbox/faults", self.put_faults, "PUT"),
            ("/_sandbox/faults", self.delete_faults, "DELETE"),
            ("/_sandbox/deliveries", self.deliveries, "GET"),
            ("/_sandbox/tasks/{task_id}", self.inspect_task, "GET"),
            ("/_sandbox/seed", self.seed, "POST"),
        ]
        routes = [
            Route(path, self._guarded(handler), methods=[method])
            for path, handler, method in [*api, *controls]
        ]
        routes += self.providers.routes()
        routes += [
            Route("/media/audio/{name}", self.audio, methods=["GET", "HEAD"]),
            Route("/media/stream/{name}", self.stream, methods=["GET", "HEAD"]),
            Route("/media/image/{name}", self.image, methods=["GET", "HEAD"]),
            Route("/media/vox/{clip_id}/{stem}", self.vox_media, methods=["GET", "HEAD"]),
        ]
        return routes

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            self.state.settle_due()
            try:
                return await handler(request)
            except SonicValidationError as exc:
                return _answer(400, exc.message)
            except _Refused as exc:
                return _answer(exc.status, exc.message)

        return guarded

    # --- helpers ------------------------------------------------------------------------------

    def _api_key(self, request: Request) -> str:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or key not in self.state.balances:
            raise _Refused(401, OwnMessage.UNAUTHORIZED)
        return key

    @staticmethod
    async def _body(request: Request) -> object:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Refused(400, OwnMessage.BODY_INVALID) from None

    def _base_url(self, request: Request) -> str:
        return (self.config.public_base_url or str(request.base_url)).rstrip("/")

    def base_url_of(self, request: Request) -> str:
        """The base of the media URLs of a task ``request`` creates."""
        return self._base_url(request)

    def _accept(
        self,
        request: Request,
        api_key: str,
        create: CreateRequest,
        *,
        source_is_upload: bool,
    ) -> Response:
        """Validate, check the source, charge, start: the path every task takes."""
        if (message := validate(create, source_is_upload=source_is_upload)) is not None:
            raise _Refused(400, message)
        spec = TASKS[TaskType(create.task_type)]
        source: Source | None = None
        if spec.needs_source_clip:
            source = self.state.usable(create.continue_clip_id or "")
            if source is None:
                raise _Refused(400, OwnMessage.CONTINUE_CLIP_ID_INVALID)
            at = create.continue_at
            if (
                "continue_at" in spec.required
                and at is not None
                and source.duration_cs is not None
                and round(at * 100) > source.duration_cs
            ):
                raise _Refused(400, OwnMessage.CONTINUE_AT_BEYOND_END)
        if create.task_type == TaskType.PERSONA_MUSIC and (
            create.persona_id not in self.state.personas
        ):
            raise _Refused(400, OwnMessage.PERSONA_ID_INVALID)
        if not self.state.charge(api_key, spec.credits):
            log.info("credits_short", task_type=create.task_type, needed=spec.credits)
            raise _Refused(403, Message.INSUFFICIENT_CREDITS)
        task = self.state.add_task(
            api_key=api_key, request=create, source=source, base_url=self._base_url(request)
        )
        self.webhooks.start(task)
        return JSONResponse({"message": "success", "task_id": task.task_id})

    async def _fetch_upload(self, api_key: str, url: str) -> Upload:
        """Fetch an audio file from a loopback URL and make it an uploaded clip."""
        try:
            target = httpx.URL(url)
            host = target.host
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except (httpx.InvalidURL, ValueError):
            loopback = False
        if not loopback or target.scheme not in ("http", "https"):
            log.info("upload_refused", reason="not_loopback")
            raise _Refused(400, OwnMessage.URL_NOT_ALLOWED)
        limit = self.config.upload_max_bytes
        try:
            async with self.http.stream("GET", url, follow_redirects=False) as answer:
                if answer.status_code != 200:
                    log.info("upload_refused", reason="status", status=answer.status_code)
                    raise _Refused(400, OwnMessage.URL_NOT_FETCHED)
                content = bytearray()
                async for chunk in answer.aiter_bytes():
                    content += chunk
                    if len(content) > limit:
                        raise _Refused(400, OwnMessage.URL_TOO_LARGE)
                content_type = answer.headers.get("content-type")
        except httpx.HTTPError as exc:
            log.info("upload_refused", reason="fetch_failed", error=type(exc).__name__)
            raise _Refused(400, OwnMessage.URL_NOT_FETCHED) from None
        data = bytes(content)
        if not media.looks_like_audio(data, content_type):
            log.info("upload_refused", reason="not_audio", content_type=content_type)
            raise _Refused(400, OwnMessage.URL_NOT_AUDIO)
        extension = media.audio_extension(data)
        upload = self.state.add_upload(
            api_key=api_key,
            url=url,
            content=data,
            content_type=content_type
            if content_type and content_type.startswith("audio/")
            else f"audio/{'mpeg' if extension == 'mp3' else extension}",
            extension=extension,
            duration_cs=media.wav_duration_cs(data),
        )
        log.info("upload_accepted", clip_id=upload.clip_id, size=len(data))
        return upload

    def _usable_or_404(self, clip_id: str) -> Source:
        source = self.state.usable(clip_id)
        if source is None:
            raise _Refused(404, OwnMessage.CLIP_NOT_FOUND)
        return source

    # --- the API ------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        api_key = self._api_key(request)
        create = CreateRequest.from_json(await self._body(request))
        is_upload = (create.continue_clip_id or "") in self.state.uploads
        return self._accept(request, api_key, create, source_is_upload=is_upload)

    async def get_music(self, request: Request) -> Response:
        api_key = self._api_key(request)
        task = self.state.task_for(request.path_params["task_id"], api_key)
        if task is None:
            raise _Refused(404, Message.TASK_NOT_FOUND)
        clips = self.state.render(task, task.state_at(self.clock.now()))  # links issued now
        return JSONResponse({"code": 200, "message": "success", "data": clips})

    async def upload(self, request: Request) -> Response:
        api_key = self._api_key(request)
        upload_request = UploadRequest.from_json(await self._body(request))
        if (message := validate_upload(upload_request)) is not None:
            raise _Refused(400, message)
        upload = await self._fetch_upload(api_key, upload_request.url)
        return JSONResponse({"code": 200, "message": "success", "clip_id": upload.clip_id})

    async def upload_extend(self, request: Request) -> Response:
        return await self._one_stop(request, TaskType.EXTEND_UPLOAD_MUSIC)

    async def upload_cover(self, request: Request) -> Response:
        return await self._one_stop(request, TaskType.COVER_UPLOAD_MUSIC)

    async def _one_stop(self, request: Request, task_type: TaskType) -> Response:
        api_key = self._api_key(request)
        one_stop = UploadTaskRequest.from_json(await self._body(request), task_type=task_type)
        if (message := validate_upload_task(one_stop)) is not None:
            raise _Refused(400, message)
        # Refuse a task the key cannot pay for before fetching anything.
        if self.state.balances[api_key] < TASKS[task_type].credits:
            raise _Refused(403, Message.INSUFFICIENT_CREDITS)
        upload = await self._fetch_upload(api_key, one_stop.url)
        create = replace(one_stop.request, continue_clip_id=upload.clip_id)
        return self._accept(request, api_key, create, source_is_upload=True)

    async def create_persona(self, request: Request) -> Response:
        api_key = self._api_key(request)
        persona_request = PersonaRequest.from_json(await self._body(request))
        if (message := validate_persona(persona_request)) is not None:
            raise _Refused(400, message)
        if self.state.usable(persona_request.continue_clip_id) is None:
            raise _Refused(400, OwnMessage.CONTINUE_CLIP_ID_INVALID)
        persona = self.state.add_persona(
            api_key=api_key,
            clip_id=persona_request.continue_clip_id,
            name=persona_request.name,
            description=persona_request.description,
        )
        log.info("persona_created", persona_id=persona.persona_id, clip_id=persona.clip_id)
        return JSONResponse({"code": 200, "message": "success", "persona_id": persona.persona_id})

    async def get_bpm(self, request: Request) -> Response:
        self._api_key(request)
        bpm_request = BpmRequest.from_json(await self._body(request))
        if (message := validate_bpm(bpm_request)) is not None:
            raise _Refused(400, message)
        tempo = float(self._usable_or_404(bpm_request.clip_id).bpm)
        # The sandbox plays one steady tempo, so the three agree.
        data = {"avg_bpm": tempo, "max_bpm": tempo, "min_bpm": tempo}
        return JSONResponse({"code": 200, "message": "success", "data": data})

    async def get_vox(self, request: Request) -> Response:
        self._api_key(request)
        vox = VoxRequest.from_json(await self._body(request))
        if (message := validate_vox(vox)) is not None:
            raise _Refused(400, message)
        source = self._usable_or_404(vox.clip_id)
        length = source.duration_cs or 3_000  # an mp3 upload's length is not known: 30 s
        start = round((vox.vocal_start_s or 0.0) * 100)
        end = min(length, round(vox.vocal_end_s * 100) if vox.vocal_end_s is not None else length)
        if start >= end:
            raise _Refused(400, OwnMessage.VOX_RANGE_INVALID)
        base = f"{self._base_url(request)}/media/vox/{source.clip_id}"
        window = f"start_cs={start}&end_cs={end}"
        data = {
            "clip_id": source.clip_id,
            "vocal_start_s": start / 100,
            "vocal_end_s": end / 100,
            "vocal_url": f"{base}/vocals.wav?{window}",
            "instrumental_url": f"{base}/instrumental.wav?{window}",
        }
        log.info("vox_extracted", clip_id=source.clip_id, start_cs=start, end_cs=end)
        return JSONResponse({"code": 200, "message": "success", "data": data})

    # --- media --------------------------------------------------------------------------------

    def _media_fault(self, clip_id: str) -> MediaFault | None:
        api_key = self.state.key_of_clip(clip_id)
        if api_key is None:
            return None
        fault = self.state.faults.for_key(api_key).media
        if fault is None or not self.state.faults.strikes(fault.rate, "media", clip_id):
            return None
        self.state.media_requests[clip_id] += 1
        if fault.times is not None and self.state.media_requests[clip_id] > fault.times:
            return None
        log.info("media_fault", clip_id=clip_id, kind=fault.kind)
        return fault

    def _serve(
        self, request: Request, clip_id: str, content: bytes, kind: str, *, linked: bool = False
    ) -> Response:
        """``content`` with the clip's media faults; ``linked``: at a link answers give, which
        the link faults may have expired."""
        if linked and (refusal := self._link_refusal(request, clip_id)) is not None:
            return refusal
        return media.media_response(
            request, content, kind, fault=self._media_fault(clip_id), clock=self.clock
        )

    def _link_refusal(self, request: Request, clip_id: str) -> Response | None:
        reason = self.state.link_refusal(clip_id, request.query_params)
        if reason is None:
            return None
        log.info("media_link_refused", clip_id=clip_id, reason=reason)
        return media.expired_link(reason)

    def _clip_in(self, name: str, states: set[ClipState]) -> ClipPlan:
        clip_id = name.rsplit(".", 1)[0]
        plan = self.state.clips.get(clip_id)
        if plan is None or self.state.clip_state(clip_id) not in states:
            raise _Refused(404, OwnMessage.CLIP_NOT_FOUND)
        return plan

    def _wav(
        self, plan: ClipPlan | Upload, *, start_cs: int = 0, length_cs: int | None = None
    ) -> bytes:
        """A WAV of ``plan``'s audio from ``start_cs``, ``length_cs`` long (to its end)."""
        rate = self.config.sample_rate
        total = plan.duration_cs if plan.duration_cs is not None else 3_000
        length = max(0, total - start_cs) if length_cs is None else length_cs
        return media.wav_bytes(self._pcm(plan, start_cs, length), rate)

    def _pcm(self, plan: ClipPlan | Upload, start_cs: int, length_cs: int) -> bytes:
        """``length_cs`` of ``plan``'s samples from ``start_cs``: a clip's own click track
        (on its song's beat grid), a concat's parts one after another, an upload's own
        samples when they are mono 16-bit at the sandbox's rate (else silence)."""
        rate = self.config.sample_rate
        if isinstance(plan, Upload):
            own = media.pcm_of(plan.content, rate)
            if own is None:
                return bytes(media.frames_for(length_cs, rate) * 2)
            first = media.frames_for(start_cs, rate) * 2
            wanted = media.frames_for(length_cs, rate) * 2
            return own[first : first + wanted].ljust(wanted, b"\0")
        if plan.parts:
            song = b"".join(
                self._pcm(self._source(clip_id), start, length)
                for clip_id, start, length in plan.parts
            )
            first = media.frames_for(start_cs, rate) * 2
            return song[first : first + media.frames_for(length_cs, rate) * 2]
        track = media.click_track(length_cs, float(plan.bpm), rate,
                                  start_cs=plan.start_cs + start_cs)
        return media.pcm_of(track, rate) or b""

    def _source(self, clip_id: str) -> ClipPlan | Upload:
        found = self.state.clips.get(clip_id) or self.state.uploads.get(clip_id)
        if found is None:  # pragma: no cover - parts only name clips that exist
            raise KeyError(clip_id)
        return found

    async def audio(self, request: Request) -> Response:
        self.state.settle_due()
        name = request.path_params["name"]
        clip_id = name.rsplit(".", 1)[0]
        if (upload := self.state.uploads.get(clip_id)) is not None:
            return self._serve(request, clip_id, upload.content, upload.content_type)
        try:
            plan = self._clip_in(name, {ClipState.SUCCEEDED})
        except _Refused as exc:
            return _answer(exc.status, exc.message)
        return self._serve(request, clip_id, self._wav(plan), media.WAV, linked=True)

    async def stream(self, request: Request) -> Response:
        self.state.settle_due()
        try:
            plan = self._clip_in(
                request.path_params["name"], {ClipState.RUNNING, ClipState.SUCCEEDED}
            )
        except _Refused as exc:
            return _answer(exc.status, exc.message)
        if (refusal := self._link_refusal(request, plan.clip_id)) is not None:
            return refusal
        if (fault := self._media_fault(plan.clip_id)) is not None:
            return media.media_response(request, b"", media.WAV, fault=fault, clock=self.clock)
        return media.streaming_response(self._wav(plan), media.WAV)

    async def image(self, request: Request) -> Response:
        self.state.settle_due()
        name = request.path_params["name"]
        clip_id = name.rsplit(".", 1)[0]
        rgb: tuple[int, int, int]
        if clip_id in self.state.uploads:
            rgb = (90, 90, 90)
        else:
            try:
                rgb = self._clip_in(name, {ClipState.RUNNING, ClipState.SUCCEEDED}).rgb
            except _Refused as exc:
                return _answer(exc.status, exc.message)
        return self._serve(request, clip_id, media.cover_png(rgb), media.PNG,
                           linked=clip_id not in self.state.uploads)

    async def vox_media(self, request: Request) -> Response:
        self.state.settle_due()
        clip_id = request.path_params["clip_id"]
        stem = request.path_params["stem"].removesuffix(".wav")
        source = self.state.usable(clip_id)
        try:
            start = int(request.query_params.get("start_cs", "0"))
            end = int(request.query_params.get("end_cs", "0"))
        except ValueError:
            start = end = 0
        if source is None or stem not in ("vocals", "instrumental") or not 0 <= start < end:
            return _answer(404, OwnMessage.CLIP_NOT_FOUND)
        rate = self.config.sample_rate
        content = (
            self._wav(source, start_cs=start, length_cs=end - start)
            if stem == "vocals"
            else media.silence(end - start, rate)
        )
        return self._serve(request, clip_id, content, media.WAV)

    # --- controls -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {
                "ok": True,
                "speed": str(self.config.speed),
                "tasks": len(self.state.tasks),
                "webhooks_in_flight": self.webhooks.busy,
            }
        )

    async def list_keys(self, request: Request) -> Response:
        return JSONResponse(
            {
                "keys": {
                    key: {
                        "credits": credits,
                        "legacy_signature": self.config.legacy_signature
                        or key in self.state.legacy_keys,
                    }
                    for key, credits in self.state.balances.items()
                }
            }
        )

    async def put_key(self, request: Request) -> Response:
        key = request.path_params["key"]
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _Refused(400, OwnMessage.BODY_INVALID)
        credits = body.get("credits", self.state.balances.get(key, 0))
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise _Refused(400, "credits must be a non-negative integer")
        self.state.balances[key] = credits
        legacy = body.get("legacy_signature")
        if legacy is True:
            self.state.legacy_keys.add(key)
        elif legacy is False:
            self.state.legacy_keys.discard(key)
        log.info("key_set", credits=credits, legacy_signature=key in self.state.legacy_keys)
        return await self.list_keys(request)

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.state.faults.to_json())

    async def put_faults(self, request: Request) -> Response:
        """The whole setup, in the shape GET answers and ``--faults`` takes."""
        if "key" in request.query_params:
            raise _Refused(400, f"PUT takes the whole setup, {SETUP}; no ?key")
        body = await self._body(request)
        try:
            self.state.faults.load(body)
        except FaultConfigError as exc:
            raise _Refused(400, str(exc)) from None
        answer = self.state.faults.to_json()
        log.info("faults_updated", scope="all", faults=answer)
        return JSONResponse(answer)

    async def delete_faults(self, request: Request) -> Response:
        key = request.query_params.get("key")
        if key:
            self.state.faults.by_key.pop(key, None)
        else:
            self.state.faults.global_config = FaultConfig()
        log.info("faults_updated", scope="key" if key else "global", faults=None)
        return JSONResponse(self.state.faults.to_json())

    async def deliveries(self, request: Request) -> Response:
        query = request.query_params
        wanted = {
            name: query[name] for name in ("task_id", "event", "outcome", "delivery_id")
            if name in query
        }
        rows = [
            record.to_json()
            for record in self.webhooks.log
            if all(str(getattr(record, name)) == value for name, value in wanted.items())
        ]
        return JSONResponse({"deliveries": rows})

    async def inspect_task(self, request: Request) -> Response:
        task = self.state.tasks.get(request.path_params["task_id"])
        if task is None:
            raise _Refused(404, Message.TASK_NOT_FOUND)
        now = self.clock.now()
        return JSONResponse(
            {
                "task_id": task.task_id,
                "ordinal": task.ordinal,
                "task_type": str(task.request.task_type),
                "provider": task.provider,
                "state": str(task.state_at(now)),
                "fails": task.fails,
                "credits": task.credits,
                "seeded": task.seeded,
                "webhook_url": task.request.webhook_url,
                "created_at": task.timeline.created_at,
                "running_at": task.timeline.running_at,
                "settled_at": task.timeline.settled_at,
                "events": [
                    str(WebhookEvent.STREAMING),
                    str(WebhookEvent.FAILED if task.fails else WebhookEvent.COMPLETED),
                ],
                "clips": [
                    {"clip_id": c.clip_id, "duration_cs": c.duration_cs, "bpm": c.bpm}
                    for c in task.clips
                ],
            }
        )

    async def seed(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _Refused(400, OwnMessage.BODY_INVALID)
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= 100_000:
            raise _Refused(400, "count must be an integer in 1..100000")
        api_key = body.get("api_key") or next(iter(self.state.balances), None)
        if api_key not in self.state.balances:
            raise _Refused(400, "api_key is not a sandbox key")
        state = body.get("state", "succeeded")
        if state not in ("succeeded", "failed"):
            raise _Refused(400, "state must be succeeded or failed")
        try:
            mv = Model(body.get("mv", Model.SONIC_V4_5))
        except ValueError:
            raise _Refused(400, Message.MV_INVALID) from None
        ids = self.state.seed_tasks(
            count=count,
            api_key=api_key,
            base_url=self._base_url(request),
            fail=state == "failed",
            mv=mv,
        )
        return JSONResponse({"task_ids": ids})


def create_sandbox_app(
    config: SandboxConfig | None = None,
    *,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
    paths: ApiPaths | None = None,
) -> Starlette:
    """A sandbox app. ``clock`` moves tasks and paces webhooks (default: the wall clock);
    ``http`` sends webhooks and fetches uploads (default: one made and closed by the app's
    lifespan). The :class:`Sandbox` is at ``app.state.sandbox``."""
    sandbox = Sandbox(config or SandboxConfig(), clock=clock or SystemClock(), http=http)
    app = Starlette(routes=sandbox.routes(paths or ApiPaths()), lifespan=sandbox.lifespan)
    app.state.sandbox = sandbox
    return app
