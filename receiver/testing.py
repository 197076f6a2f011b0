"""Running handlers for real in tests, for plugin authors and for this project alike.

:func:`handler_runtime` opens a runtime on a real SQLite file with the handlers and routes a
test names, its config checked as start-up checks it, on a :class:`FakeClock`; :func:`deliver`
records a callback through the webhook's own path (after verification), so its transitions plan
the routes' jobs; the worker runs what is due, one step at a time, with ``run_once``.
:class:`HandlerHarness` wraps the three for one handler::

    async with HandlerHarness(archive, folder=tmp_path, options={"bucket": "b"}) as harness:
        await harness.deliver("t-1", [clip("c1", "succeeded", title="Song")])
        [job] = await harness.run()
        assert job.state == "done"

:func:`clip` and :func:`callback` build callback bodies; :func:`signed_headers` signs one as
the service does. Nothing here mocks the store, the worker or the recording rules.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from receiver.clock import Clock, FakeClock
from receiver.jobs import FINISHED, Job
from receiver.models import RecordResult, Result, StoredFile, TaskView
from receiver.registry import Handler, Registry
from receiver.routing import Router, router_for
from receiver.runtime import Runtime, open_runtime
from receiver.schema import check
from receiver.settings import Settings
from receiver.signatures import Scheme, Verified, sign_musicapi
from receiver.storage.roles import Storage
from receiver.webhook import make_delivery

__all__ = ["FakeClock", "HandlerHarness", "callback", "clip", "deliver", "deliver_to",
           "handler_runtime", "settings_for", "signed_headers"]

SECRET = "test-secret-1"  # noqa: S105 -- the webhook secret of tests, nothing else


def clip(clip_id: str, state: str | None = None, **fields: Any) -> dict[str, Any]:
    """One clip of a callback's ``data``: ``clip("c1", "succeeded", audio_url=...)``."""
    item: dict[str, Any] = {"clip_id": clip_id, **fields}
    if state is not None:
        item["state"] = state
    return item


def callback(
    task_id: str | None, clips: Sequence[Mapping[str, Any]], event: str | None = None,
    **extra: Any,
) -> bytes:
    """A callback body as the service sends it (``{code, message, task_id, data}``)."""
    body: dict[str, Any] = {"code": 200, "message": "success", "data": list(clips), **extra}
    if task_id is not None:
        body["task_id"] = task_id
    if event is not None:
        body["event"] = event
    return json.dumps(body).encode()


def signed_headers(
    body: bytes, *, secret: str = SECRET, timestamp: int | None = None,
    delivery_id: str | None = None, event: str | None = None,
) -> dict[str, str]:
    """The headers the service signs ``body`` with (the ``musicapi`` scheme)."""
    headers = sign_musicapi(secret, body, int(time.time()) if timestamp is None else timestamp)
    if delivery_id is not None:
        headers["X-Webhook-Id"] = delivery_id
    if event is not None:
        headers["X-Webhook-Event"] = event
    return headers


def settings_for(folder: Path, **changes: Any) -> Settings:
    """Settings for a test: a SQLite file and a media folder in ``folder``, the admin API
    open (a test reads it without a token), no routes unless ``config`` has some."""
    base: dict[str, Any] = {
        "webhook_secrets": (SECRET,), "db_path": folder / "receiver.db",
        "media_dir": folder / "media", "config": {"routes": []}, "insecure_open_admin": True,
    }
    base.update(changes)
    return Settings(**base).validated()


@asynccontextmanager
async def handler_runtime(
    folder: Path,
    *,
    handlers: Mapping[str, Handler],
    routes: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
    http: httpx.AsyncClient | None = None,
    clock: Clock | None = None,
    sonic: Any = None,
    **settings: Any,
) -> AsyncIterator[Runtime]:
    """A runtime in ``folder`` whose worker runs only ``handlers`` for ``routes``
    (``[[routes]]`` tables), once the whole config (``config`` and the routes) is checked
    against them as start-up checks it. ``settings`` change :func:`settings_for`."""
    loaded = settings_for(folder, config={**(config or {}), "routes": list(routes)},
                           **settings)
    registry = Registry()
    for name, function in handlers.items():
        registry.register(name, function, origin="test")
    check(loaded.config, registry)
    router = router_for(loaded.config, registry, policy=loaded.retry)
    async with open_runtime(loaded, clock=clock or FakeClock(), router=router,
                            registry=registry, http=http, sonic=sonic) as runtime:
        runtime.make_worker(poll_s=0.05)
        yield runtime


async def deliver(
    runtime: Runtime, body: bytes, *, event: str | None = None, delivery_id: str | None = None,
    task_id_hint: str | None = None,
) -> RecordResult:
    """Record ``body`` exactly as the webhook endpoint does after verification."""
    return await deliver_to(runtime.storage, runtime.router, body, event=event,
                            delivery_id=delivery_id, task_id_hint=task_id_hint,
                            at=runtime.clock.now())


async def deliver_to(
    storage: Storage, router: Router | None, body: bytes, *, event: str | None = None,
    delivery_id: str | None = None, task_id_hint: str | None = None, at: float | None = None,
) -> RecordResult:
    """Record ``body`` into ``storage`` through the webhook's path, jobs planned by
    ``router``."""
    headers = {}
    if event:
        headers["x-webhook-event"] = event
    if delivery_id:
        headers["x-webhook-id"] = delivery_id
    delivery = make_delivery(
        body=body, headers=headers,
        verified=Verified(scheme=Scheme.NONE, timestamp=None, signed_content=body),
        task_id_hint=task_id_hint, received_at=time.time() if at is None else at)
    return await storage.ingest.record_delivery(delivery, router=router)


class HandlerHarness:
    """One handler, run for real: on ``on`` (a trigger or several) it is routed with
    ``options``; its jobs run on a SQLite file in ``folder`` with a :class:`FakeClock`.
    ``config`` adds tables (the handler's own ``[<name>]``, ``[network]``...); ``http`` and
    ``sonic`` replace the HTTP and Sonic clients; ``settings`` change the settings."""

    def __init__(
        self,
        handler: Handler,
        *,
        folder: Path,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        on: str | Sequence[str] = ("task.succeeded", "task.failed"),
        config: Mapping[str, Any] | None = None,
        http: httpx.AsyncClient | None = None,
        sonic: Any = None,
        clock: FakeClock | None = None,
        **settings: Any,
    ) -> None:
        self.name = name or str(getattr(handler, "__name__", "handler"))
        self.clock = clock or FakeClock()
        route = {"on": [on] if isinstance(on, str) else list(on),
                 "handlers": [{"name": self.name, "options": dict(options or {})}]}
        self._open = handler_runtime(folder, handlers={self.name: handler}, routes=[route],
                                     config=config, http=http, clock=self.clock, sonic=sonic,
                                     **settings)
        self._stack = AsyncExitStack()
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("use the harness in `async with`")
        return self._runtime

    async def __aenter__(self) -> Self:
        self._runtime = await self._stack.enter_async_context(self._open)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self._runtime = None
        await self._stack.aclose()

    async def deliver(
        self, task_id: str, clips: Sequence[Mapping[str, Any]], *,
        event: str = "song.completed", delivery_id: str | None = None, **extra: Any,
    ) -> RecordResult:
        """A callback for ``task_id`` reporting ``clips``, recorded as a webhook would be."""
        return await deliver(self.runtime, callback(task_id, clips, event, **extra),
                             delivery_id=delivery_id)

    async def run(self, *, steps: int = 20) -> list[Job]:
        """Run the jobs that are due, and those that become due as the fake clock moves on to
        them (retries, waits), until every job is finished or ``steps`` rounds are done; the
        jobs, oldest first."""
        worker = self.runtime.worker
        assert worker is not None
        for _ in range(steps):
            await worker.run_once()
            waiting = [j for j in await self.jobs() if j.state not in FINISHED]
            if not waiting:
                break
            self.clock.set(max(self.clock.now(), min(j.run_after for j in waiting)))
        return await self.jobs()

    async def jobs(self, task_id: str | None = None) -> list[Job]:
        return await self.runtime.storage.admin.list_jobs(task_id=task_id)

    async def task(self, task_id: str) -> TaskView | None:
        return await self.runtime.storage.admin.get_task(task_id)

    async def files(self, task_id: str) -> list[StoredFile]:
        return await self.runtime.storage.admin.list_files(task_id)

    async def results(self, task_id: str) -> list[Result]:
        return await self.runtime.storage.admin.list_results(task_id)

