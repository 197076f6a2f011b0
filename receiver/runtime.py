"""The runtime: the open I/O edges (storage, media store, HTTP client, Sonic client and the
other providers' clients) with the router, the handler registry and what the config gives
handlers (the network policy, each handler's table, parsed once), shared by the web app's
lifespan and the ``worker`` command. What is passed in belongs to the caller; what is built
here is closed here. A worker made here is woken by every commit of this process that queues
jobs. With other providers than Sonic enabled, handlers and recovery call a task's provider
through :class:`receiver.providers.calls.ProviderCalls` (``calls``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from starlette.requests import HTTPConnection

from receiver.clock import Clock
from receiver.context import HandlerContext
from receiver.fetching import NetPolicy
from receiver.jobs import Job
from receiver.media import MediaStore, open_media
from receiver.providers import Adapter, Poller, TaskApi
from receiver.providers.calls import ProviderCalls
from receiver.providers.registry import adapters as provider_adapters
from receiver.registry import Registry
from receiver.routing import Router
from receiver.settings import Settings
from receiver.sonic.client import SonicClient
from receiver.storage.roles import Storage, storage_for
from receiver.worker import Worker


@dataclass
class Runtime:
    """What a running receiver holds."""

    settings: Settings
    storage: Storage
    clock: Clock
    http: httpx.AsyncClient
    router: Router
    registry: Registry
    sonic: SonicClient | None
    media: MediaStore
    network: NetPolicy
    worker: Worker | None = None
    adapters: dict[str, Adapter] = field(default_factory=dict)
    calls: ProviderCalls | None = None  # with other providers enabled
    _tables: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def poller(self) -> Poller | None:
        """What polls a task at its provider (reconcile, deadlines), if anything can."""
        return self.calls if self.calls is not None else self.sonic

    def api_for(self, task_id: str) -> TaskApi | None:
        """What a handler of ``task_id`` calls (``ctx.sonic``)."""
        return self.calls.bound(task_id) if self.calls is not None else self.sonic

    def context_for(self, job: Job) -> HandlerContext:
        """The context a job's handler runs with: its stored options as the handler declared
        them (:class:`receiver.registry.UnfitOptions` when they no longer fit), its table."""
        spec = self.registry.spec(job.handler)
        if job.handler not in self._tables:
            self._tables[job.handler] = spec.table_from(job.handler, self.settings.config)
        return HandlerContext(
            options=spec.options_from(job.options), table=self._tables[job.handler],
            http=self.http, sonic=self.api_for(job.task_id), settings=self.settings,
            clock=self.clock,
            log=structlog.get_logger("receiver.handler"), store=self.storage.outputs,
            media=self.media, network=self.network, router=self.router, job=job,
        )

    def make_worker(self, *, poll_s: float, listen: bool = False) -> Worker:
        """This process's worker (``self.worker``), woken by this process's commits that
        queue jobs; ``listen``: also by other processes' (a worker process of its own)."""
        worker = Worker(
            queue=self.storage.jobs, registry=self.registry, contexts=self.context_for,
            clock=self.clock, policy=self.settings.retry,
            concurrency=self.settings.worker_concurrency, lease_s=self.settings.worker_lease_s,
            poll_s=poll_s, listen=listen,
        )
        self.storage.db.on_jobs(worker.wake)
        self.worker = worker
        return worker


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    clock: Clock,
    router: Router,
    registry: Registry,
    storage: Storage | None = None,
    http: httpx.AsyncClient | None = None,
    sonic: SonicClient | None = None,
    media: MediaStore | None = None,
    adapters: dict[str, Adapter] | None = None,
) -> AsyncIterator[Runtime]:
    """Open what was not passed in, and close it again on the way out. The media store is
    opened first: a media location that cannot be used stops start-up, not a job later.
    ``adapters``: the enabled providers' (default: made from the settings)."""
    async with contextlib.AsyncExitStack() as stack:
        if media is None:
            media = open_media(settings)
        if storage is None:
            storage = await stack.enter_async_context(storage_for(settings, clock=clock))
        if http is None:
            http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
            )
        if sonic is None and settings.sonic_api_base_url and settings.sonic_api_key:
            sonic = SonicClient(settings.sonic_api_base_url, settings.sonic_api_key, http=http)
        if adapters is None:
            adapters = provider_adapters(settings, clock=clock)
        calls = None
        if adapters:
            clients = {name: client for name, adapter in adapters.items()
                       if (client := adapter.client(http)) is not None}
            calls = ProviderCalls(settings=settings, adapters=adapters, clients=clients,
                                  sonic=sonic, ingest=storage.ingest, clock=clock)
        yield Runtime(settings=settings, storage=storage, clock=clock, http=http,
                      router=router, registry=registry, sonic=sonic, media=media,
                      network=NetPolicy.from_config(settings.config), adapters=adapters,
                      calls=calls)


def runtime_of(request: HTTPConnection) -> Runtime:
    """The runtime the app's lifespan opened (``app.state.runtime``); RuntimeError before it
    has, and after it closed."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise RuntimeError("the app's lifespan has not started")
    return runtime
