"""The other providers the sandbox plays (:mod:`receiver.providers`), each under a path prefix of
its own, over the same tasks, clips, media, credits and faults as Sonic's API: what differs is
how a task is created and polled, and how its callbacks look, are staged, signed and timed.

``/sunoapi``, ``/kie``, ``/apibox`` (sunoapi.org's shape)::

    POST {prefix}/api/v1/generate          {customMode, instrumental, model, prompt, style,
                                            title, callBackUrl}  → {code, msg, data: {taskId}}
    POST {prefix}/api/v1/generate/extend   {audioId, continueAt, ..., callBackUrl}
    POST {prefix}/api/v1/generate/concat   {audioId, callBackUrl} (the sandbox's own: the
                                            provider's docs name no concat endpoint)
    GET  {prefix}/api/v1/generate/record-info?taskId=   → {code, msg, data: {status, response:
                                            {sunoData: [clip]}, errorCode, errorMessage}}

  callbacks ``text`` when the task starts running, ``first`` halfway to settling (the first
  clip playable by its stream URL), then ``complete``, or the failure stage (``error``;
  apibox ``failed``) with :attr:`SandboxConfig.failure_code`; no id header. sunoapi.org and
  apibox sign nothing; kie.ai signs ``{task_id}.{timestamp}`` with ``kie_hmac_key`` when the
  sandbox has one, and its media links last 20 minutes (get record-info for fresh ones).
  Answers put the refusal in the body's ``code`` (429: too few credits).

``/piapi``::

    POST {prefix}/api/v1/task   {model, task_type, input, config: {webhook_config: {endpoint,
                                 secret}}} (x-api-key)  → {code, data: {task_id, ...}, message}
    GET  {prefix}/api/v1/task/{task_id}                  → {code, data: {task}, message}

  callbacks ``processing`` when running, then ``completed`` or ``failed``, each with the
  task's secret in ``x-webhook-secret``.

``/aimlapi``::

    POST {prefix}/v2/generate/audio   {model, prompt, webhook_url}  → {id, status}
    GET  {prefix}/v2/generate/audio?generation_id=                  → the generation

  one callback when the job ends, signed by Standard Webhooks with ``aimlapi_secret``.

Every callback is retried as Sonic's are (``webhook_attempts``, doubling backoff), and the
faults apply: drops (a stage by its event: ``song.streaming`` for the progress stages,
``song.completed``, ``song.failed``), duplicates, delays, a bad signature (a wrong secret or
key, where the provider signs), failing tasks, media faults and links.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.signatures import sign_kie, sign_standard
from receiver.sonic.contract import (
    TASKS,
    ClipState,
    CreateRequest,
    Model,
    TaskType,
    WebhookEvent,
)
from receiver.sonic.sandbox.state import Task

if TYPE_CHECKING:
    from receiver.sonic.sandbox.app import Sandbox

log = structlog.get_logger("receiver.sonic.sandbox")

SUNO_FAMILY = ("sunoapi", "kie", "apibox")
PROVIDERS = (*SUNO_FAMILY, "piapi", "aimlapi")
# The provider's model names → the sandbox's
MODELS: dict[str, Model] = {
    "V3_5": Model.SONIC_V3_5, "V4": Model.SONIC_V4, "V4_5": Model.SONIC_V4_5,
    "V4_5PLUS": Model.SONIC_V4_5_PLUS, "V4_5ALL": Model.SONIC_V4_5_ALL, "V5": Model.SONIC_V5,
}
# sunoapi.org's callback codes, in its words
FAILURES: dict[int, str] = {
    400: "Lyrics contained copyrighted material",
    408: "Timeout",
    413: "Uploaded audio matches existing work of art",
    500: "An unexpected error occurred while processing the request",
    501: "Audio generation failed.",
    531: "Sorry, the generation failed due to an issue. Your credits have been refunded. "
         "Please try again",
}
_EVENT_STATE = {WebhookEvent.STREAMING: ClipState.RUNNING,
                WebhookEvent.COMPLETED: ClipState.SUCCEEDED,
                WebhookEvent.FAILED: ClipState.FAILED}

Handler = Callable[[Request], Awaitable[Response]]
Stage = tuple[float, WebhookEvent, str]  # when, the receiver's event, the provider's name


class Refused(Exception):
    """A refusal, answered in the provider's shape."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Flavour:
    """How one provider's callbacks look: their stages, bodies and headers."""

    name = "sonic"

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def stages(self, task: Task) -> list[Stage]:
        raise NotImplementedError

    def body(self, task: Task, event: WebhookEvent, stage: str, issued_at: float) -> bytes:
        raise NotImplementedError

    def headers(self, task: Task, body: bytes, wid: str, timestamp: int, *, bad: bool
                ) -> dict[str, str]:
        return {}

    def clips(self, task: Task, state: ClipState, issued_at: float) -> list[dict[str, Any]]:
        return self.sandbox.state.render(task, state, issued_at=issued_at)


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class SunoFlavour(Flavour):
    """sunoapi.org's shape (kie.ai's, apibox's)."""

    def __init__(self, sandbox: Sandbox, name: str) -> None:
        super().__init__(sandbox)
        self.name = name

    def stages(self, task: Task) -> list[Stage]:
        t = task.timeline
        stages: list[Stage] = [(t.running_at, WebhookEvent.STREAMING, "text")]
        if not task.fails:
            stages.append(((t.running_at + t.settled_at) / 2, WebhookEvent.STREAMING, "first"))
            stages.append((t.settled_at, WebhookEvent.COMPLETED, "complete"))
        else:
            stages.append((t.settled_at, WebhookEvent.FAILED,
                           "failed" if self.name == "apibox" else "error"))
        return stages

    def body(self, task: Task, event: WebhookEvent, stage: str, issued_at: float) -> bytes:
        if event is WebhookEvent.FAILED:
            code = self.sandbox.config.failure_code
            return _dumps({"code": code, "msg": FAILURES.get(code, "failed"), "data": {
                "callbackType": stage, "task_id": task.task_id, "data": None}})
        state = _EVENT_STATE[event]
        clips = [self.clip(c, stage, index) for index, c in
                 enumerate(self.clips(task, state, issued_at))]
        words = {"text": "Text generation completed successfully.",
                 "first": "First audio generated successfully."}
        return _dumps({"code": 200, "msg": words.get(stage, "All generated successfully."),
                       "data": {"callbackType": stage, "task_id": task.task_id,
                                "data": clips}})

    @staticmethod
    def clip(clip: Mapping[str, Any], stage: str, index: int, *, camel: bool = False
             ) -> dict[str, Any]:
        """A Sonic clip as the provider writes one at ``stage`` (``complete`` for a poll)."""
        audio, stream, image = clip["audio_url"] or "", "", clip["image_url"] or ""
        if stage in ("text", "first"):  # running: Sonic's audio_url is its stream
            stream, audio = (audio if stage == "first" and index == 0 else ""), ""
            image = image if stage == "first" else ""
        elif audio:
            stream = audio.replace("/media/audio/", "/media/stream/").split("?", 1)[0]
        duration = clip["duration"]
        model = str(clip["mv"] or "")
        item = {
            "id": clip["clip_id"], "audio_url": audio, "stream_audio_url": stream,
            "image_url": image, "prompt": clip["lyrics"],
            "model_name": "chirp-" + model.removeprefix("sonic-").removeprefix("chirp-"),
            "title": clip["title"], "tags": clip["tags"], "createTime": clip["created_at"],
            "duration": float(duration) if duration is not None else None,
        }
        if camel:
            return {"id": item["id"], "audioUrl": audio, "streamAudioUrl": stream,
                    "imageUrl": image, "prompt": item["prompt"],
                    "modelName": item["model_name"], "title": item["title"],
                    "tags": item["tags"], "createTime": item["createTime"],
                    "duration": item["duration"]}
        return {**item, "source_audio_url": audio, "source_stream_audio_url": stream,
                "source_image_url": image}

    def headers(self, task: Task, body: bytes, wid: str, timestamp: int, *, bad: bool
                ) -> dict[str, str]:
        key = self.sandbox.config.kie_hmac_key
        if self.name != "kie" or key is None:
            return {}  # sunoapi.org and apibox sign nothing
        return sign_kie(key + (":not-the-key" if bad else ""), task.task_id, timestamp)

    def record_info(self, task: Task, now: float) -> dict[str, Any]:
        t = task.timeline
        if now < t.running_at:
            status, state, stage = "PENDING", None, None
        elif now < t.settled_at:
            halfway = now >= (t.running_at + t.settled_at) / 2
            status = "FIRST_SUCCESS" if halfway else "TEXT_SUCCESS"
            state, stage = ClipState.RUNNING, "first" if halfway else "text"
        elif task.fails:
            status, state, stage = "GENERATE_AUDIO_FAILED", None, None
        else:
            status, state, stage = "SUCCESS", ClipState.SUCCEEDED, "complete"
        clips = [] if state is None or stage is None else [
            self.clip(c, stage, i, camel=True) for i, c in
            enumerate(self.clips(task, state, now))]
        code = self.sandbox.config.failure_code if task.fails and status != "PENDING" else None
        return {"code": 200, "msg": "success", "data": {
            "taskId": task.task_id, "parentMusicId": "", "param": "{}",
            "response": {"taskId": task.task_id, "sunoData": clips},
            "status": status, "type": "GENERATE", "errorCode": code,
            "errorMessage": FAILURES.get(code, "failed") if code else None}}


class PiapiFlavour(Flavour):
    name = "piapi"

    def stages(self, task: Task) -> list[Stage]:
        t = task.timeline
        terminal = WebhookEvent.FAILED if task.fails else WebhookEvent.COMPLETED
        return [(t.running_at, WebhookEvent.STREAMING, "processing"),
                (t.settled_at, terminal, "failed" if task.fails else "completed")]

    def body(self, task: Task, event: WebhookEvent, stage: str, issued_at: float) -> bytes:
        return _dumps({"timestamp": int(issued_at),
                       "data": self.task_json(task, _EVENT_STATE[event], issued_at)})

    def task_json(self, task: Task, state: ClipState | None, at: float) -> dict[str, Any]:
        status = {None: "pending", ClipState.RUNNING: "processing",
                  ClipState.SUCCEEDED: "completed", ClipState.FAILED: "failed"}[state]
        clips = {} if state is None else {
            c["clip_id"]: {
                "id": c["clip_id"], "status": {ClipState.RUNNING: "streaming",
                                               ClipState.SUCCEEDED: "complete"}.get(
                                                   state, "error"),
                "audio_url": c["audio_url"] or "", "image_url": c["image_url"] or "",
                "video_url": "", "model_name": c["mv"], "title": c["title"],
                "metadata": {"tags": c["tags"], "prompt": c["lyrics"],
                             "duration": c["duration"]}}
            for c in self.clips(task, state, at)}
        failed = state is ClipState.FAILED
        return {"task_id": task.task_id, "model": "music-s", "task_type": "generate_music",
                "status": status, "input": {}, "output": {"clips": clips} if clips else {},
                "error": {"code": 10000 if failed else 0,
                          "message": "generation failed" if failed else ""}}

    def headers(self, task: Task, body: bytes, wid: str, timestamp: int, *, bad: bool
                ) -> dict[str, str]:
        secret = task.request.webhook_secret or ""
        return {"x-webhook-secret": secret + ("x" if bad else "")}


class AimlapiFlavour(Flavour):
    name = "aimlapi"

    def stages(self, task: Task) -> list[Stage]:
        terminal = WebhookEvent.FAILED if task.fails else WebhookEvent.COMPLETED
        return [(task.timeline.settled_at, terminal, "error" if task.fails else "completed")]

    def body(self, task: Task, event: WebhookEvent, stage: str, issued_at: float) -> bytes:
        generation = self.generation(task, _EVENT_STATE[event], issued_at)
        return _dumps({"type": f"generation.{generation['status']}", "data": generation})

    def generation(self, task: Task, state: ClipState | None, at: float) -> dict[str, Any]:
        status = {None: "queued", ClipState.RUNNING: "generating",
                  ClipState.SUCCEEDED: "completed", ClipState.FAILED: "error"}[state]
        found: dict[str, Any] = {"id": task.task_id, "status": status}
        if state is ClipState.SUCCEEDED:
            clip = self.clips(task, state, at)[0]
            found["audio_file"] = {"url": clip["audio_url"], "content_type": "audio/wav"}
        if state is ClipState.FAILED:
            found["error"] = {"message": "generation failed"}
        return found

    def headers(self, task: Task, body: bytes, wid: str, timestamp: int, *, bad: bool
                ) -> dict[str, str]:
        secret = self.sandbox.config.aimlapi_secret + ("x" if bad else "")
        return sign_standard(secret, wid, body, timestamp)


class ProviderApis:
    """The provider routes of one sandbox, and the flavour of each provider's callbacks."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.flavours: dict[str, Flavour] = {
            **{name: SunoFlavour(sandbox, name) for name in SUNO_FAMILY},
            "piapi": PiapiFlavour(sandbox), "aimlapi": AimlapiFlavour(sandbox),
        }

    def routes(self) -> list[Route]:
        routes: list[Route] = []
        for name in SUNO_FAMILY:
            base = f"/{name}/api/v1/generate"
            routes += [
                Route(base, self._suno(name, self.suno_generate), methods=["POST"]),
                Route(base + "/extend", self._suno(name, self.suno_extend), methods=["POST"]),
                Route(base + "/concat", self._suno(name, self.suno_concat), methods=["POST"]),
                Route(base + "/record-info", self._suno(name, self.record_info),
                      methods=["GET"]),
            ]
        routes += [
            Route("/piapi/api/v1/task", self._guard(self.piapi_create), methods=["POST"]),
            Route("/piapi/api/v1/task/{task_id:path}", self._guard(self.piapi_get),
                  methods=["GET"]),
            Route("/aimlapi/v2/generate/audio", self._guard(self.aimlapi_create),
                  methods=["POST"]),
            Route("/aimlapi/v2/generate/audio", self._guard(self.aimlapi_get),
                  methods=["GET"]),
        ]
        return routes

    # --- shared ---------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            self.sandbox.state.settle_due()
            try:
                return await handler(request)
            except Refused as exc:
                return JSONResponse({"code": exc.code, "message": exc.message,
                                     "msg": exc.message}, status_code=exc.code)

        return guarded

    def _suno(self, name: str, handler: Callable[[Request, str], Awaitable[Response]]
              ) -> Handler:
        async def guarded(request: Request) -> Response:
            self.sandbox.state.settle_due()
            try:
                return await handler(request, name)
            except Refused as exc:  # sunoapi.org answers refusals in the body's code
                return JSONResponse({"code": exc.code, "msg": exc.message, "data": None})

        return guarded

    def _key(self, request: Request, *, header: str = "authorization") -> str:
        value = request.headers.get(header, "")
        if header == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                value = ""
        key = value.strip()
        if key not in self.sandbox.state.balances:
            raise Refused(401, "Unauthorized")
        return key

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body is not a JSON object")
        return body

    def _accept(self, request: Request, name: str, key: str, create: CreateRequest) -> Task:
        """Check the source clip, charge, start: what every provider's create does."""
        sandbox, state = self.sandbox, self.sandbox.state
        spec = TASKS[TaskType(create.task_type)]
        source = None
        if spec.needs_source_clip:
            source = state.usable(create.continue_clip_id or "")
            if source is None:
                raise Refused(400, "the clip to continue is not a usable clip")
        if not create.webhook_url:
            raise Refused(422, "Please enter callBackUrl.")
        if not state.charge(key, spec.credits):
            raise Refused(429, "The current credits are insufficient. Please top up.")
        task = state.add_task(api_key=key, request=create, source=source,
                              base_url=sandbox.base_url_of(request))
        task = replace(task, provider=name)
        state.tasks[task.task_id] = task
        sandbox.webhooks.start(task)
        return task

    def _task(self, task_id: str, key: str, name: str) -> Task:
        task = self.sandbox.state.task_for(task_id, key)
        if task is None or task.provider != name:
            raise Refused(404, "task not found")
        return task

    # --- sunoapi.org, kie.ai, apibox ------------------------------------------------------

    async def suno_generate(self, request: Request, name: str) -> Response:
        key = self._key(request)
        body = await self._json(request)
        custom = bool(body.get("customMode"))
        prompt = _text(body.get("prompt"))
        create = CreateRequest(
            task_type=TaskType.CREATE_MUSIC, custom_mode=custom, mv=_model(body.get("model")),
            title=_text(body.get("title")), tags=_text(body.get("style")),
            prompt=prompt if custom else None,
            gpt_description_prompt=None if custom else (prompt or "a song"),
            make_instrumental=bool(body.get("instrumental")),
            webhook_url=_text(body.get("callBackUrl")))
        return self._created(self._accept(request, name, key, create))

    async def suno_extend(self, request: Request, name: str) -> Response:
        key = self._key(request)
        body = await self._json(request)
        audio_id = _text(body.get("audioId"))
        if audio_id is None:
            raise Refused(400, "audioId is required")
        at = body.get("continueAt")
        create = CreateRequest(
            task_type=TaskType.EXTEND_MUSIC, continue_clip_id=audio_id, custom_mode=True,
            continue_at=float(at) if isinstance(at, int | float) else None,
            mv=_model(body.get("model")), prompt=_text(body.get("prompt")),
            tags=_text(body.get("style")), title=_text(body.get("title")),
            webhook_url=_text(body.get("callBackUrl")))
        return self._created(self._accept(request, name, key, create))

    async def suno_concat(self, request: Request, name: str) -> Response:
        key = self._key(request)
        body = await self._json(request)
        audio_id = _text(body.get("audioId"))
        if audio_id is None:
            raise Refused(400, "audioId is required")
        create = CreateRequest(task_type=TaskType.CONCAT_MUSIC, continue_clip_id=audio_id,
                               webhook_url=_text(body.get("callBackUrl")))
        return self._created(self._accept(request, name, key, create))

    @staticmethod
    def _created(task: Task) -> Response:
        return JSONResponse({"code": 200, "msg": "success", "data": {"taskId": task.task_id}})

    async def record_info(self, request: Request, name: str) -> Response:
        key = self._key(request)
        task = self._task(request.query_params.get("taskId", ""), key, name)
        flavour = self.flavours[name]
        assert isinstance(flavour, SunoFlavour)
        return JSONResponse(flavour.record_info(task, self.sandbox.clock.now()))

    # --- PiAPI ----------------------------------------------------------------------------

    async def piapi_create(self, request: Request) -> Response:
        key = self._key(request, header="x-api-key")
        body = await self._json(request)
        entry = _object(body.get("input"))
        hook = _object(_object(body.get("config")).get("webhook_config"))
        custom = body.get("task_type") == "generate_music_custom"
        source = _text(entry.get("continue_clip_id"))
        at = entry.get("continue_at")
        create = CreateRequest(
            task_type=TaskType.EXTEND_MUSIC if source else TaskType.CREATE_MUSIC,
            custom_mode=custom, mv=Model.SONIC_V4, continue_clip_id=source,
            continue_at=float(at) if isinstance(at, int | float) else None,
            prompt=_text(entry.get("prompt")) if custom else None,
            gpt_description_prompt=None if custom else (
                _text(entry.get("gpt_description_prompt")) or "a song"),
            tags=_text(entry.get("tags")), title=_text(entry.get("title")),
            make_instrumental=bool(entry.get("make_instrumental")),
            webhook_url=_text(hook.get("endpoint")), webhook_secret=_text(hook.get("secret")))
        task = self._accept(request, "piapi", key, create)
        flavour = self.flavours["piapi"]
        assert isinstance(flavour, PiapiFlavour)
        return JSONResponse({"code": 200, "message": "success",
                             "data": flavour.task_json(task, None, self.sandbox.clock.now())})

    async def piapi_get(self, request: Request) -> Response:
        key = self._key(request, header="x-api-key")
        task = self._task(request.path_params["task_id"], key, "piapi")
        flavour = self.flavours["piapi"]
        assert isinstance(flavour, PiapiFlavour)
        now = self.sandbox.clock.now()
        return JSONResponse({"code": 200, "message": "success",
                             "data": flavour.task_json(task, _now_state(task, now), now)})

    # --- AIMLAPI --------------------------------------------------------------------------

    async def aimlapi_create(self, request: Request) -> Response:
        key = self._key(request)
        body = await self._json(request)
        lyrics = _text(body.get("lyrics"))
        create = CreateRequest(
            task_type=TaskType.CREATE_MUSIC, custom_mode=lyrics is not None,
            mv=Model.SONIC_V4_5, prompt=lyrics,
            gpt_description_prompt=None if lyrics else (_text(body.get("prompt")) or "a song"),
            tags=_text(body.get("prompt")) if lyrics else None,
            webhook_url=_text(body.get("webhook_url")))
        task = self._accept(request, "aimlapi", key, create)
        return JSONResponse({"id": task.task_id, "status": "queued"})

    async def aimlapi_get(self, request: Request) -> Response:
        key = self._key(request)
        task = self._task(request.query_params.get("generation_id", ""), key, "aimlapi")
        flavour = self.flavours["aimlapi"]
        assert isinstance(flavour, AimlapiFlavour)
        now = self.sandbox.clock.now()
        return JSONResponse(flavour.generation(task, _now_state(task, now), now))


def _now_state(task: Task, now: float) -> ClipState | None:
    state = task.state_at(now)
    return None if state is ClipState.PENDING else state


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _model(value: object) -> Model:
    return MODELS.get(value, Model.SONIC_V4_5) if isinstance(value, str) else Model.SONIC_V4_5
