"""The ASGI app: ``create_app(settings, *, store=None, clock=None, http=None)``.

Every I/O edge comes in through the factory: what is not passed is built (and closed) by the
app's lifespan, what is passed belongs to the caller. Nothing happens at import.

Routes: ``POST /webhooks/sonic`` (:mod:`receiver.webhook`), ``GET /tasks/{task_id}``,
``GET /healthz`` (alive) and ``GET /readyz`` (the database takes a write). When
``RECEIVER_ADMIN_TOKEN`` is set, ``/tasks`` needs it as a Bearer token; the probes stay open
so that orchestrators can call them.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.clock import Clock, SystemClock
from receiver.errors import StoreError
from receiver.models import Clip, Task, TaskView, Transition
from receiver.settings import Settings
from receiver.signatures import Verifier
from receiver.store import SQLiteStore, Store
from receiver.webhook import WebhookEndpoint

log = structlog.get_logger("receiver.app")


@dataclass
class Runtime:
    """What the running app holds; built in the lifespan."""

    settings: Settings
    store: Store
    clock: Clock
    http: httpx.AsyncClient


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
    http: httpx.AsyncClient | None = None,
) -> Starlette:
    """The receiver as an ASGI app. ``store`` and ``http``, when given, must be open and are
    not closed by the app."""
    clock = clock or SystemClock()
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
    endpoint: WebhookEndpoint | None = None

    def current() -> Runtime:
        if runtime is None:
            raise RuntimeError("the app's lifespan has not started")
        return runtime

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal runtime, endpoint
        async with contextlib.AsyncExitStack() as stack:
            own_store = store
            if own_store is None:
                sqlite = SQLiteStore(
                    settings.db_path, clock=clock, synchronous=settings.db_synchronous
                )
                await sqlite.connect()
                stack.push_async_callback(sqlite.close)
                own_store = sqlite
            own_http = http
            if own_http is None:
                own_http = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
                )
            runtime = app.state.runtime = Runtime(
                settings=settings, store=own_store, clock=clock, http=own_http
            )
            endpoint = WebhookEndpoint(
                store=own_store,
                verifier=verifier,
                clock=clock,
                max_body_bytes=settings.max_body_bytes,
            )
            log.info(
                "receiver_started",
                db=str(settings.db_path) if store is None else type(own_store).__name__,
                schemes=[s.value for s in settings.schemes],
                verify=verifier is not None,
            )
            try:
                yield
            finally:
                log.info("receiver_stopping")
                runtime = endpoint = None

    async def webhook(request: Request) -> JSONResponse:
        if endpoint is None:
            return JSONResponse({"error": "store_unavailable"}, 503)
        return await endpoint(request)

    async def get_task(request: Request) -> JSONResponse:
        if (denied := _check_admin(request, settings)) is not None:
            return denied
        view = await current().store.get_task(request.path_params["task_id"])
        if view is None:
            return JSONResponse({"error": "task_not_found"}, 404)
        return JSONResponse(task_view_json(view))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await current().store.check_writable()
        except (StoreError, RuntimeError) as exc:
            log.warning("not_ready", error=str(exc))
            return JSONResponse({"status": "unavailable", "error": "store_unavailable"}, 503)
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/webhooks/sonic", webhook, methods=["POST"]),
            Route("/tasks/{task_id:str}", get_task, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _check_admin(request: Request, settings: Settings) -> JSONResponse | None:
    if settings.admin_token is None:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), settings.admin_token.encode()
    ):
        return None
    return JSONResponse(
        {"error": "unauthorized"}, 401, headers={"WWW-Authenticate": 'Bearer realm="receiver"'}
    )


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
