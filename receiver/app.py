"""The ASGI app: ``create_app(settings, *, storage=None, clock=None, http=None)`` assembles the
receiver from its parts and serves nothing of its own.

Every I/O edge comes in through the factory: what is not passed is built (and closed) by the
app's lifespan, what is passed belongs to the caller; the lifespan puts the open
:class:`receiver.runtime.Runtime` at ``app.state.runtime``, where the endpoints read it. Nothing
happens at import.

The route table: ``POST /webhooks/sonic`` (:mod:`receiver.webhook`), ``POST
/webhooks/<provider>[/<token>]`` for each provider a ``[providers.<name>]`` table enables
(:mod:`receiver.providers`), the probes ``GET /healthz``
and ``GET /readyz`` (:mod:`receiver.probes`), and the admin surface: ``POST /tasks``
(:mod:`receiver.creation`) and the operator's console (:mod:`receiver.console`: the read API,
kept files, its actions, ``/metrics``, ``/openapi.json`` and the dashboard at ``/ui``). The
admin surface is one ``Mount`` behind :class:`receiver.console.session.ConsoleAuth`
(:class:`receiver.auth.AdminAuth` extended with the dashboard's session: a Bearer token, the
session cookie, or an explicit opt-out); the probes stay open so that orchestrators can call
them. Request bodies are read under :class:`receiver.connections.BodyTimeout`. Deliveries skip
Starlette's middleware and router (:class:`ReceiverApp`): the webhook is the route that takes
load (the other providers' too, after Sonic's path). Every response carries
:mod:`receiver.headers`' headers, deliveries' too; the client,
scheme and host a trusted proxy forwarded are applied before anything else reads them
(:mod:`receiver.proxies`).

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
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.alerts import Alerting, check_targets
from receiver.auth import Throttle
from receiver.clock import Clock, SystemClock
from receiver.connections import BodyTimeout
from receiver.console import console_routes
from receiver.console.session import ConsoleAuth, Sessions
from receiver.console.shapes import Error, ShapeResponse
from receiver.console.ui import not_found_page
from receiver.creation import creation_routes
from receiver.headers import SecurityHeaders
from receiver.probes import probe_routes
from receiver.providers.registry import adapters as provider_adapters
from receiver.proxies import ForwardedHeaders
from receiver.registry import Registry, load_registry
from receiver.routing import router_for
from receiver.runtime import open_runtime
from receiver.schedules import deadlines_every, prune_every, reconcile_every, turn_owner
from receiver.settings import Settings
from receiver.signatures import Verifier
from receiver.sonic.client import SonicClient
from receiver.storage.roles import Storage
from receiver.tallies import Tally
from receiver.webhook import ProviderEndpoint, WebhookEndpoint

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
    registry = registry if registry is not None else load_registry(settings.config)
    if settings.alert_targets:
        check_targets(settings.alert_targets)
    router = router_for(settings.config, registry, policy=settings.retry)
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
    # Served from the start (503 until the lifespan opens it with the store).
    refusals = Tally()  # refused deliveries, counted for the alerts
    endpoint = WebhookEndpoint(verifier=verifier, clock=clock,
                               max_body_bytes=settings.max_body_bytes, router=router,
                               refusals=refusals)
    adapters = provider_adapters(settings, clock=clock)
    providers = ProviderEndpoint(adapters=adapters, clock=clock,
                                 max_body_bytes=settings.max_body_bytes, router=router,
                                 refusals=refusals) if adapters else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_runtime(
            settings, storage=storage, clock=clock, http=http, router=router, registry=registry,
            sonic=sonic, adapters=adapters,
        ) as opened:
            # what the endpoints read (request.app.state.runtime); None again once closed
            app.state.runtime = opened
            worker_task: asyncio.Task[None] | None = None
            background: list[asyncio.Task[None]] = []
            if settings.worker == "inprocess":
                # In-process the worker is woken by each commit; the poll only catches jobs
                # written by others (replay, a second process) and due retries.
                worker = opened.make_worker(poll_s=max(1.0, settings.worker_poll_s))
                worker_task = asyncio.create_task(worker.run(), name="worker")
            poller = opened.poller
            if settings.reconcile_every_s is not None and poller is None:
                log.warning("reconcile_disabled", reason="no Sonic client configured")
            if settings.reconcile_every_s is not None and poller is not None:
                background.append(asyncio.create_task(reconcile_every(
                    settings.reconcile_every_s, settings.reconcile_stale_s,
                    admin=opened.storage.admin, ingest=opened.storage.ingest,
                    sonic=poller, router=router, clock=clock,
                ), name="reconcile"))
            if settings.deadlines.enabled:
                background.append(asyncio.create_task(deadlines_every(
                    settings.deadlines, admin=opened.storage.admin, watch=opened.storage.watch,
                    ingest=opened.storage.ingest, sonic=poller, router=router,
                    clock=clock,
                ), name="deadlines"))
            alerting = Alerting(
                table=settings.alerts, targets=settings.alert_targets,
                watch=opened.storage.watch, admin=opened.storage.admin, clock=clock,
                owner=turn_owner(), refusals=refusals,
                db_path=settings.db_path if settings.db_url is None else None,
                media_dir=settings.media_dir if settings.media_url is None else None,
                keepers=registry.providers({"files"}) & router.handler_names,
                base_url=settings.public_url,
            )
            app.state.alerting = alerting
            background.append(asyncio.create_task(alerting.run(), name="alerts"))
            if settings.retention_s is not None:
                background.append(asyncio.create_task(prune_every(
                    settings.retention_every_s, admin=opened.storage.admin, clock=clock,
                    older_than_s=settings.retention_s,
                    keep_ids_s=settings.retention_keep_ids_s,
                ), name="retention"))
            endpoint.open(opened.storage.ingest)
            if providers is not None:
                providers.open(opened.storage.ingest)
            log.info(
                "receiver_started",
                db=opened.storage.describe(),
                providers=["sonic", *adapters],
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
                if providers is not None:
                    providers.close()
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if opened.worker is not None and worker_task is not None:
                    await opened.worker.stop(deadline_s=settings.worker_drain_s)
                    await worker_task
                app.state.runtime = None

    admin = [
        *creation_routes(),
        # the operator's console: read API, kept files, actions, /metrics, /openapi.json, /ui
        *console_routes(),
    ]
    sessions = Sessions(settings, throttle=Throttle(clock),
                        open_key=next(iter(settings.webhook_secrets), None))
    every_method = ["POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"]
    provider_routes = [] if providers is None else [
        Route("/webhooks/{provider}", providers, name="provider_webhook", methods=every_method),
        Route("/webhooks/{provider}/{secret}", providers, methods=every_method),
    ]
    app = ReceiverApp(
        webhook=SecurityHeaders(BodyTimeout(endpoint, timeout_s=settings.body_timeout_s)),
        providers=None if providers is None else SecurityHeaders(
            BodyTimeout(providers, timeout_s=settings.body_timeout_s)),
        routes=[
            # Every method, so that a GET is told 405 here rather than taken by the admin Mount.
            # (Served by ReceiverApp's shortcut; the route names it and serves a root_path.)
            Route(WEBHOOK_PATH, endpoint, name="webhook", methods=every_method),
            *provider_routes,
            *probe_routes(),
            # Everything else, unknown paths included, is the admin surface.
            Mount("", routes=admin, middleware=[
                Middleware(ConsoleAuth, settings=settings, sessions=sessions),
                Middleware(NoNulInURL)]),
        ],
        middleware=[Middleware(ForwardedHeaders, trusted=settings.trusted_proxies),
                    Middleware(SecurityHeaders),
                    Middleware(BodyTimeout, timeout_s=settings.body_timeout_s)],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.console_sessions = sessions
    return app


WEBHOOK_PATH = "/webhooks/sonic"
PROVIDER_PATHS = "/webhooks/"


class ReceiverApp(Starlette):
    """Starlette with one shortcut: a request for :data:`WEBHOOK_PATH` (the route that takes
    load) goes straight to ``webhook`` (its endpoint under :class:`BodyTimeout`), not through
    Starlette's error and exception middleware and router, which cost about as much again as
    BodyTimeout and the endpoint's own HTTP work; so does one under ``/webhooks/`` to
    ``providers``, when other providers are enabled (checked after Sonic's path, which pays
    nothing for it). The endpoints answer every outcome themselves; an error escaping one is
    answered 500 and logged by the server, as Starlette's ``ServerErrorMiddleware`` would.
    Middleware given to the app does not see deliveries."""

    def __init__(self, *, webhook: ASGIApp, providers: ASGIApp | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.webhook = webhook
        self.providers = providers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and not scope.get(
                "root_path"):
            scope["app"] = self
            await self.webhook(scope, receive, send)
        elif (self.providers is not None and scope["type"] == "http"
              and scope["path"].startswith(PROVIDER_PATHS) and not scope.get("root_path")):
            scope["app"] = self
            await self.providers(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class NoNulInURL:
    """An admin URL whose path holds a NUL (``%00``) is not found (nothing stored holds one:
    :func:`receiver.clips.is_text`), and one whose query does is a bad query (400, as the
    API answers any); PostgreSQL refuses a NUL even as a query's parameter (a 500, and a
    read failure taken for the database going away)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if "\x00" in scope["path"]:
                raise HTTPException(404)
            if b"%00" in scope.get("query_string", b""):
                await ShapeResponse(Error(error="a query parameter holds a NUL character"),
                                    400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer JSON, like every other error of the API; an unknown
    page of the console (once let in) answers the console's own page."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404 and request.url.path.startswith("/ui"):
        return not_found_page(request)
    name = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    headers = getattr(exc, "headers", None)
    return ShapeResponse(Error(error=name), status, headers=headers)
