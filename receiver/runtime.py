"""The runtime: the open I/O edges (store, HTTP client, Sonic client) with the router and the
handler registry, shared by the web app's lifespan and the ``worker`` command. What is passed
in belongs to the caller; what is built here is closed here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import structlog

from receiver.clock import Clock
from receiver.context import HandlerContext
from receiver.jobs import Job
from receiver.registry import Registry
from receiver.routing import Router
from receiver.settings import Settings
from receiver.sonic.client import SonicClient
from receiver.storage import Store, store_for
from receiver.worker import Worker


@dataclass
class Runtime:
    """What a running receiver holds."""

    settings: Settings
    store: Store
    clock: Clock
    http: httpx.AsyncClient
    router: Router
    registry: Registry
    sonic: SonicClient | None
    worker: Worker | None = None

    def context_for(self, job: Job) -> HandlerContext:
        """The context a job's handler runs with: its stored options (and its table) as the
        handler declared them."""
        spec = self.registry.spec(job.handler)
        return HandlerContext(
            options=spec.options_from(job.options),
            table=spec.table_from(job.handler, self.settings.config),
            http=self.http, sonic=self.sonic, settings=self.settings, clock=self.clock,
            log=structlog.get_logger("receiver.handler"), store=self.store, router=self.router,
            job=job,
        )

    def make_worker(self, *, poll_s: float, listen: bool = False) -> Worker:
        return Worker(
            store=self.store, registry=self.registry, contexts=self.context_for,
            clock=self.clock, policy=self.settings.retry,
            concurrency=self.settings.worker_concurrency, lease_s=self.settings.worker_lease_s,
            poll_s=poll_s, listen=listen,
        )


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    clock: Clock,
    router: Router,
    registry: Registry,
    store: Store | None = None,
    http: httpx.AsyncClient | None = None,
    sonic: SonicClient | None = None,
) -> AsyncIterator[Runtime]:
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(store_for(settings, clock=clock))
        if http is None:
            http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
            )
        if sonic is None and settings.sonic_api_base_url and settings.sonic_api_key:
            sonic = SonicClient(settings.sonic_api_base_url, settings.sonic_api_key, http=http)
        yield Runtime(settings=settings, store=store, clock=clock, http=http, router=router,
                      registry=registry, sonic=sonic)
