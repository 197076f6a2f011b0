"""Running handlers for real in tests: a runtime on a real SQLite file with chosen handlers and
routes, deliveries recorded through the same path as webhooks, and the worker driven one step
at a time with :meth:`receiver.worker.Worker.run_once`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from receiver.clock import Clock, FakeClock
from receiver.config import check
from receiver.models import RecordResult
from receiver.registry import Handler, Registry
from receiver.routing import Router, routes_from_config
from receiver.runtime import Runtime, open_runtime
from receiver.signatures import Scheme, Verified
from receiver.storage.roles import Storage
from receiver.webhook import make_delivery
from tests.support import settings_for


@asynccontextmanager
async def handler_runtime(
    tmp_path: Path,
    *,
    handlers: Mapping[str, Handler],
    routes: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
    http: httpx.AsyncClient | None = None,
    clock: Clock | None = None,
    sonic: Any = None,
    **settings: Any,
) -> AsyncIterator[Runtime]:
    """A runtime whose worker runs only ``handlers`` for ``routes`` (``[[routes]]`` tables),
    once the whole config is checked against them as start-up checks it."""
    loaded = settings_for(tmp_path, config={**(config or {}), "routes": list(routes)}, **settings)
    registry = Registry()
    for name, handler in handlers.items():
        registry.register(name, handler, origin="test")
    check(loaded.config, registry)
    router = Router(routes_from_config(loaded.config), policy=loaded.retry)
    registry.check(router.handler_names)
    async with open_runtime(
        loaded, clock=clock or FakeClock(), router=router, registry=registry, http=http,
        sonic=sonic,
    ) as runtime:
        runtime.worker = runtime.make_worker(poll_s=0.05)
        yield runtime


async def deliver(
    runtime: Runtime,
    body: bytes,
    *,
    event: str | None = None,
    delivery_id: str | None = None,
    task_id_hint: str | None = None,
) -> RecordResult:
    """Record ``body`` exactly as the webhook endpoint would after verification."""
    return await deliver_to(runtime.storage, runtime.router, body, event=event,
                            delivery_id=delivery_id, task_id_hint=task_id_hint,
                            at=runtime.clock.now())


async def deliver_to(
    store: Storage,
    router: Router | None,
    body: bytes,
    *,
    event: str | None = None,
    delivery_id: str | None = None,
    task_id_hint: str | None = None,
    at: float | None = None,
) -> RecordResult:
    """Record ``body`` into ``store`` through the webhook path, jobs planned by ``router``."""
    headers = {}
    if event:
        headers["x-webhook-event"] = event
    if delivery_id:
        headers["x-webhook-id"] = delivery_id
    delivery = make_delivery(
        body=body,
        headers=headers,
        verified=Verified(scheme=Scheme.NONE, timestamp=None, signed_content=body),
        task_id_hint=task_id_hint,
        received_at=time.time() if at is None else at,
    )
    return await store.ingest.record_delivery(delivery, router=router)
