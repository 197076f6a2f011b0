"""What a handler is given: the :class:`Event` it acts on and a :class:`HandlerContext`.

A handler is ``async def handle(event: Event, ctx: HandlerContext) -> None``. It runs at least
once per job, so it must be idempotent: ``event.key`` is unique per (transition, route,
handler) and stays the same on every attempt. Raise :class:`receiver.jobs.Retry` to be run
again after a delay (counted as an attempt or not), :class:`receiver.jobs.PermanentError` to
give up at once; any other exception is retried with backoff until the job's attempts run out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from receiver.clock import Clock
from receiver.fetching import NetPolicy
from receiver.jobs import Job, PermanentError
from receiver.media import MediaStore
from receiver.models import ChildState, ChildTask, Result, Source, StoredFile, TaskView
from receiver.providers import TaskApi
from receiver.recovery import poll_delivery
from receiver.routing import Router
from receiver.settings import Settings
from receiver.storage.ingest import Ingest
from receiver.storage.tasks import HandlerOutput


@dataclass(frozen=True, kw_only=True)
class Event:
    """The transition a job was created for."""

    trigger: str  # task.streaming | task.succeeded | task.failed
    task_id: str
    route: str
    key: str  # the job's idempotency key: the same on every attempt
    job_id: int
    attempt: int  # 1 on the first run
    delivery_id: str | None


@dataclass(kw_only=True)
class HandlerContext:
    """Everything a handler may use.

    ``options`` are the route's options for this handler, parsed once: an instance of the
    Struct the handler declared (:func:`receiver.registry.handler`), or the mapping as written
    for a handler that declared none. ``table`` is the handler's own table of the config file
    (``[notify]``), as its declared Struct, or None. ``media`` is where files are kept (the
    local folder or the object store of ``RECEIVER_MEDIA``); ``network`` the policy every URL a
    callback named is fetched under (``[network]``); ``http`` the shared HTTP client; ``sonic``
    the API client of the task's provider (Sonic's, or another's through
    :class:`receiver.providers.calls.ProviderCalls`), when configured (then
    :meth:`refresh_task` asks it for the task again); ``settings`` the receiver's, read only.
    """

    options: Any
    http: httpx.AsyncClient
    sonic: TaskApi | None
    settings: Settings
    clock: Clock
    log: structlog.stdlib.BoundLogger
    store: HandlerOutput = field(repr=False)
    media: MediaStore = field(repr=False)
    network: NetPolicy = field(repr=False)
    router: Router | None = field(default=None, repr=False)
    job: Job = field(repr=False)
    table: Any = None
    # Where refresh_task records what the upstream says; None: the ingest role over the
    # handler output's database (the same database, the same recording rules).
    ingest: Ingest | None = field(default=None, repr=False)

    async def task(self) -> TaskView:
        """The task this job is about, with its clips and transitions, as stored now."""
        view = await self.store.get_task(self.job.task_id)
        if view is None:
            raise PermanentError(f"task {self.job.task_id} is not in the store")
        return view

    async def refresh_task(self) -> TaskView:
        """Ask the upstream for this job's task again (get-music, through ``sonic``) and record
        its answer the receiver's own way: as a delivery of source ``poll`` through the ingest
        path (:func:`receiver.recovery.poll_delivery`), exactly as reconciliation does. The
        clips' URLs are refreshed by the one set of recording rules (a placeholder never
        replaces a URL; a clip's data is refreshed only by a report of its state or a later
        one), any transition the answer brings plans its jobs, and the answer is kept, raw,
        like every delivery; an answer identical to one recorded before changes nothing.

        Returns the task as stored afterwards. Raises :class:`receiver.sonic.errors.SonicError`
        when get-music fails, and RuntimeError when no Sonic client is configured (check
        ``sonic`` first)."""
        return (await self.poll_task())[1]

    async def poll_task(self, *, source: Source = Source.POLL) -> tuple[str, TaskView]:
        """:meth:`refresh_task`, recorded as a delivery of ``source`` (``confirm`` for a
        confirmation, :mod:`receiver.confirmation`): that delivery's id, and the task as
        stored afterwards. The task's provider answers (``sonic`` routes the call)."""
        if self.sonic is None:
            raise RuntimeError("no Sonic client is configured: the task cannot be refreshed")
        music = await self.sonic.get_music(self.job.task_id)
        delivery = poll_delivery(self.job.task_id, music, received_at=self.clock.now(),
                                 source=source)
        result = await self.ingest_role().record_delivery(delivery, router=self.router)
        self.log.info("task_refreshed", task_id=self.job.task_id,
                      delivery_id=delivery.delivery_id, outcome=result.outcome.value,
                      transitions=len(result.transitions), source=source.value)
        return delivery.delivery_id, await self.task()

    def ingest_role(self) -> Ingest:
        """Where a poll's answer is recorded: ``ingest``, else the ingest role over the
        handler output's database (the same database, the same recording rules)."""
        return self.ingest if self.ingest is not None else Ingest(self.store.db)

    async def files(self) -> list[StoredFile]:
        return await self.store.list_files(self.job.task_id)

    async def record_file(
        self,
        *,
        clip_id: str,
        kind: str,
        path: Path | str,
        size: int,
        sha256: str,
        url: str | None,
        content_type: str | None,
    ) -> None:
        await self.store.record_file(
            StoredFile(
                task_id=self.job.task_id, clip_id=clip_id, kind=kind, path=str(path),
                size=size, sha256=sha256, url=url, content_type=content_type,
                job_key=self.job.key, created_at=self.clock.now(),
            )
        )

    async def record_result(self, *, clip_id: str, kind: str, data: Mapping[str, Any]) -> None:
        json.dumps(dict(data))  # refuse what the store could not keep, here, not later
        await self.store.record_result(
            Result(task_id=self.job.task_id, clip_id=clip_id, kind=kind, data=dict(data),
                   job_key=self.job.key, created_at=self.clock.now())
        )

    async def results(self) -> list[Result]:
        return await self.store.list_results(self.job.task_id)

    async def lineage(self) -> tuple[str, int]:
        """``(root task id, depth)`` of this job's task: depth 0 for a task this receiver did
        not create."""
        child = await self.store.child_of(self.job.task_id)
        if child is None:
            return self.job.task_id, 0
        return child.root_task_id, child.depth

    async def claim_child(
        self, *, rule: str, task_type: str, credits: int, request: Mapping[str, Any],
        suffix: str = "",
    ) -> tuple[ChildTask, bool]:
        """Record a follow-up task before creating it: ``(child, True)`` when this call wrote
        the record. Keyed by this job and ``rule`` (and ``suffix`` for a rule that makes
        several), so an attempt after a crash finds the record (``False``) instead of creating
        a second task."""
        root, depth = await self.lineage()
        now = self.clock.now()
        return await self.store.claim_child(
            ChildTask(
                trigger_key=f"{self.job.key}/{rule}{suffix}", parent_task_id=self.job.task_id,
                root_task_id=root, rule=rule, depth=depth + 1, task_type=task_type,
                credits=credits, request=dict(request), child_task_id=None,
                state=ChildState.REQUESTED, error=None, created_at=now, updated_at=now,
            )
        )

    async def child_created(self, child: ChildTask, task_id: str) -> ChildTask:
        """The service accepted ``child`` as ``task_id``: register the task (type, parent) and
        catch up on any of its events that arrived before this call returned."""
        return await self.store.update_child(
            child.trigger_key, state=ChildState.CREATED, child_task_id=task_id,
            now=self.clock.now(), router=self.router,
        )

    async def child_failed(self, child: ChildTask, error: str, *, unknown: bool = False) -> None:
        """The service refused ``child`` (or, ``unknown``, may have created it)."""
        await self.store.update_child(
            child.trigger_key, state=ChildState.UNKNOWN if unknown else ChildState.FAILED,
            error=error, now=self.clock.now(),
        )

    async def children(self) -> list[ChildTask]:
        return await self.store.list_children(self.job.task_id)

    async def credits_under_root(self) -> int:
        root, _ = await self.lineage()
        return await self.store.credits_under(root)
