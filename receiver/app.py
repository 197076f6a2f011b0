"""The ASGI app: ``create_app(settings, *, storage=None, clock=None, http=None)``.

Every I/O edge comes in through the factory: what is not passed is built (and closed) by the
app's lifespan, what is passed belongs to the caller. Nothing happens at import.

Routes: ``POST /webhooks/sonic`` (:mod:`receiver.webhook`), ``POST /tasks``
(:mod:`receiver.creation`), ``GET /files/{task_id}/{clip_id}/{kind}`` (a kept file: Range from
a local folder, a presigned redirect from an object store), ``GET /healthz`` (alive) and
``GET /readyz`` (the database takes a write), and the operator's console
(:mod:`receiver.console`: the read API, its actions, ``/metrics``, ``/openapi.json`` and the
dashboard at ``/ui``). Everything but the webhook and the probes is the admin surface: one
``Mount`` behind :class:`receiver.console.session.ConsoleAuth` (:class:`receiver.auth.AdminAuth`
extended with the dashboard's session: a Bearer token, the session cookie, or an explicit
opt-out); the probes stay open so that orchestrators can call them. Request bodies are read
under :class:`receiver.connections.BodyTimeout`. Deliveries skip Starlette's middleware and
router (:class:`ReceiverApp`): the webhook is the route that takes load.

Handlers are loaded and routes checked here, in the factory, so that a route naming an unknown
handler stops start-up before the server binds. With ``RECEIVER_WORKER=inprocess`` (the
default) the lifespan runs a :class:`receiver.worker.Worker`, woken by every commit that
queues jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.clock import Clock, SystemClock
from receiver.connections import BodyTimeout
from receiver.console import console_routes
from receiver.console.session import ConsoleAuth, Sessions
from receiver.creation import create_task
from receiver.errors import BodyTooLarge, StoreError
from receiver.jobs import Job
from receiver.media import file_response, open_media
from receiver.models import ChildTask, Clip, Result, StoredFile, Task, TaskView, Transition
from receiver.registry import Registry, load_registry
from receiver.replay import reconcile_every, turn_owner
from receiver.routing import Router, routes_from_config
from receiver.runtime import Runtime, open_runtime
from receiver.settings import Settings
from receiver.signatures import Verifier
from receiver.sonic.client import SonicClient
from receiver.storage.admin import Admin
from receiver.storage.roles import Storage
from receiver.webhook import WebhookEndpoint, read_body

log = structlog.get_logger("receiver.app")


def create_app(
    settings: Settings,
    *,
    storage: Storage | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
    registry: Registry | None = None,
    sonic: SonicClient | None = None,
) -> Starlette:
    """The receiver as an ASGI app. ``storage``, ``http`` and ``sonic``, when given, must be open
    and are not closed by the app; ``registry`` defaults to every installed handler."""
    clock = clock or SystemClock()
    router = Router(routes_from_config(settings.config), policy=settings.retry)
    registry = registry if registry is not None else load_registry(settings.config)
    registry.check(router.handler_names)
    verifier = (
        None
        if settings.insecure_no_verify
        else Verifier(
            settings.webhook_secrets,
            settings.schemes,
            tolerance_s=settings.signature_tolerance_s,
            clock=clock,
        )
    )
    runtime: Runtime | None = None
    # Served from the start (503 until the lifespan opens it with the store).
    endpoint = WebhookEndpoint(verifier=verifier, clock=clock,
                               max_body_bytes=settings.max_body_bytes, router=router)

    def current() -> Runtime:
        if runtime is None:
            raise RuntimeError("the app's lifespan has not started")
        return runtime

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal runtime
        async with open_runtime(
            settings, storage=storage, clock=clock, http=http, router=router, registry=registry,
            sonic=sonic,
        ) as opened:
            runtime = app.state.runtime = opened
            worker_task: asyncio.Task[None] | None = None
            background: list[asyncio.Task[None]] = []
            if settings.worker == "inprocess":
                # In-process the worker is woken by each commit; the poll only catches jobs
                # written by others (replay, a second process) and due retries.
                worker = opened.make_worker(poll_s=max(1.0, settings.worker_poll_s))
                worker_task = asyncio.create_task(worker.run(), name="worker")
            if settings.reconcile_every_s is not None and opened.sonic is None:
                log.warning("reconcile_disabled", reason="no Sonic client configured")
            if settings.reconcile_every_s is not None and opened.sonic is not None:
                background.append(asyncio.create_task(reconcile_every(
                    settings.reconcile_every_s, settings.reconcile_stale_s,
                    admin=opened.storage.admin, ingest=opened.storage.ingest,
                    sonic=opened.sonic, router=router, clock=clock,
                ), name="reconcile"))
            if settings.retention_s is not None:
                background.append(asyncio.create_task(prune_every(
                    settings.retention_every_s, admin=opened.storage.admin, clock=clock,
                    older_than_s=settings.retention_s,
                    keep_ids_s=settings.retention_keep_ids_s,
                ), name="retention"))
            endpoint.open(opened.storage.ingest)
            log.info(
                "receiver_started",
                db=opened.storage.describe(),
                schemes=[s.value for s in settings.schemes],
                verify=verifier is not None,
                worker=settings.worker,
                handlers=registry.names,
            )
            try:
                yield
            finally:
                log.info("receiver_stopping")
                endpoint.close()
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if opened.worker is not None and worker_task is not None:
                    await opened.worker.stop(deadline_s=settings.worker_drain_s)
                    await worker_task
                runtime = None

    async def get_file(request: Request) -> Response:
        p = request.path_params
        found = next((f for f in await current().storage.admin.list_files(p["task_id"])
                      if f.clip_id == p["clip_id"] and f.kind == p["kind"]), None)
        if found is None:
            return JSONResponse({"error": "file_not_found"}, 404)
        return await file_response(open_media(settings), found, request)

    async def post_task(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, settings.max_body_bytes)
        except BodyTooLarge as exc:
            return JSONResponse({"error": "body_too_large", "limit": exc.limit}, 413)
        return await create_task(current(), body)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await current().storage.ingest.check_writable()
        except (StoreError, RuntimeError) as exc:
            log.warning("not_ready", error=str(exc))
            return JSONResponse({"status": "unavailable", "error": "store_unavailable"}, 503)
        return JSONResponse({"status": "ready"})

    admin = [
        Route("/tasks", post_task, methods=["POST"]),
        Route("/files/{task_id:str}/{clip_id:str}/{kind:str}", get_file, methods=["GET"]),
        # the operator's console: read API, actions, /metrics, /openapi.json and /ui
        *console_routes(),
    ]
    sessions = Sessions(settings.admin_token, open_key=next(iter(settings.webhook_secrets), None))
    app = ReceiverApp(
        webhook=BodyTimeout(endpoint, timeout_s=settings.body_timeout_s),
        routes=[
            # Every method, so that a GET is told 405 here rather than taken by the admin Mount.
            # (Served by ReceiverApp's shortcut; the route names it and serves a root_path.)
            Route(WEBHOOK_PATH, endpoint, name="webhook",
                  methods=["POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            # Everything else, unknown paths included, is the admin surface.
            Mount("", routes=admin, middleware=[
                Middleware(ConsoleAuth, settings=settings, sessions=sessions)]),
        ],
        middleware=[Middleware(BodyTimeout, timeout_s=settings.body_timeout_s)],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.console_sessions = sessions
    return app


WEBHOOK_PATH = "/webhooks/sonic"


class ReceiverApp(Starlette):
    """Starlette with one shortcut: a request for :data:`WEBHOOK_PATH` (the route that takes
    load) goes straight to ``webhook`` (its endpoint under :class:`BodyTimeout`), not through
    Starlette's error and exception middleware and router, which cost about as much again as
    BodyTimeout and the endpoint's own HTTP work. The endpoint answers every outcome itself;
    an error escaping it is answered 500 and logged by the server, as Starlette's
    ``ServerErrorMiddleware`` would. Middleware given to the app does not see deliveries."""

    def __init__(self, *, webhook: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and not scope.get(
                "root_path"):
            scope["app"] = self
            await self.webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


async def prune_every(
    every_s: float, *, admin: Admin, clock: Clock, older_than_s: float, keep_ids_s: float
) -> None:
    """The retention policy on a schedule (``[retention]``); a failed round is logged."""
    owner = turn_owner()
    while True:
        await clock.sleep(every_s)
        try:
            # several web processes run this schedule: one of them prunes each round
            if await admin.take_turn("prune", owner=owner, hold_s=every_s * 0.9):
                await admin.prune(older_than_s=older_than_s, keep_ids_s=keep_ids_s)
        except StoreError as exc:
            log.error("prune_failed", error=exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer JSON, like every other error of the API."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    name = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": name}, status, headers=headers)


def task_view_json(view: TaskView) -> dict[str, Any]:
    return {
        "task": task_json(view.task),
        "clips": [clip_json(c) for c in view.clips],
        "transitions": [transition_json(t) for t in view.transitions],
    }


def task_json(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "state": task.state.value,
        "platform": task.platform,
        "error": task.error,
        "first_seen_at": task.first_seen_at,
        "updated_at": task.updated_at,
        "last_event_at": task.last_event_at,
        "last_delivery_id": task.last_delivery_id,
        "task_type": task.task_type,
        "parent_task_id": task.parent_task_id,
    }


def clip_json(clip: Clip) -> dict[str, Any]:
    return {
        "clip_id": clip.clip_id,
        "state": clip.state.value,
        "title": clip.title,
        "tags": clip.tags,
        "lyrics": clip.lyrics,
        "audio_url": clip.audio_url,
        "image_url": clip.image_url,
        "video_url": clip.video_url,
        "duration": clip.duration,
        "mv": clip.mv,
        "created_at": clip.created_at,
        "updated_at": clip.updated_at,
        "data": dict(clip.data),
    }


def transition_json(t: Transition) -> dict[str, Any]:
    return {
        "entity": t.entity.value,
        "entity_id": t.entity_id,
        "from": t.from_state.value if t.from_state else None,
        "to": t.to_state.value,
        "delivery_id": t.delivery_id,
        "source": t.source.value,
        "at": t.at,
    }


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "key": job.key,
        "handler": job.handler,
        "route": job.route,
        "trigger": job.trigger,
        "task_id": job.task_id,
        "state": job.state.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_after": job.run_after,
        "last_error": job.last_error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def file_json(f: StoredFile) -> dict[str, Any]:
    return {
        "clip_id": f.clip_id,
        "kind": f.kind,
        "path": f.path,
        "size": f.size,
        "sha256": f.sha256,
        "url": f.url,
        "content_type": f.content_type,
    }


def child_json(c: ChildTask) -> dict[str, Any]:
    return {
        "child_task_id": c.child_task_id,
        "rule": c.rule,
        "task_type": c.task_type,
        "depth": c.depth,
        "credits": c.credits,
        "state": c.state.value,
        "error": c.error,
        "root_task_id": c.root_task_id,
    }


def result_json(r: Result) -> dict[str, Any]:
    return {"clip_id": r.clip_id, "kind": r.kind, "data": dict(r.data)}
