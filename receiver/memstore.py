"""The in-memory twin of :class:`receiver.store.SQLiteStore`, for unit tests of code that
needs a store but not a file. It runs the same :func:`receiver.recording.record`, and the
store contract tests run against both, so the twin cannot drift from the real engine.

A transaction works on a copy of the state and swaps it in on success: all or nothing, like
the real one.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from receiver.jobs import CLAIMABLE, Job, JobSpec, JobState
from receiver.models import (
    ChildState,
    ChildTask,
    Clip,
    Delivery,
    JobFilter,
    Outcome,
    RawDelivery,
    RecordResult,
    Result,
    StoredDelivery,
    StoredFile,
    Task,
    TaskView,
    Transition,
)
from receiver.payloads import ClipReport
from receiver.recording import plan_jobs, record
from receiver.routing import Router, TaskFacts, split_tags
from receiver.states import TERMINAL, Entity, State


@dataclass
class _Tables:
    deliveries: dict[str, tuple[StoredDelivery, Delivery]] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    clips: dict[tuple[str, str], Clip] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    jobs: dict[int, Job] = field(default_factory=dict)
    files: dict[tuple[str, str, str], StoredFile] = field(default_factory=dict)
    results: dict[tuple[str, str, str], Result] = field(default_factory=dict)
    children: dict[str, ChildTask] = field(default_factory=dict)


class MemoryStore:
    """A :class:`receiver.store.Store` held in dicts."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        async with self._lock:
            work = copy.copy(self._tables)
            work.deliveries = dict(work.deliveries)
            work.tasks = dict(work.tasks)
            work.clips = dict(work.clips)
            work.transitions = list(work.transitions)
            work.jobs = dict(work.jobs)
            work.files = dict(work.files)
            work.results = dict(work.results)
            work.children = dict(work.children)
            yield MemoryTransaction(work)
            self._tables = work

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        async with self.transaction() as tx:
            return await record(tx, delivery, router=router)

    async def get_task(self, task_id: str) -> TaskView | None:
        tables = self._tables
        task = tables.tasks.get(task_id)
        if task is None:
            return None
        clips = sorted(
            (c for (t, _), c in tables.clips.items() if t == task_id),
            key=lambda c: (c.created_at or "", c.clip_id),
        )
        history = tuple(t for t in tables.transitions if t.task_id == task_id)
        return TaskView(task=task, clips=tuple(clips), transitions=history)

    async def check_writable(self) -> None:
        return None

    async def counts(self) -> Mapping[str, int]:
        t = self._tables
        return {
            "deliveries": len(t.deliveries),
            "tasks": len(t.tasks),
            "clips": len(t.clips),
            "transitions": len(t.transitions),
            "jobs": len(t.jobs),
            "files": len(t.files),
            "children": len(t.children),
        }

    async def close(self) -> None:
        return None

    # -- jobs

    async def _update_job(self, job_id: int, owner: str, **changes: object) -> bool:
        async with self.transaction() as tx:
            job = tx.tables.jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.lease_owner != owner:
                return False
            if changes.pop("refund", False):
                changes["attempts"] = job.attempts - 1
            tx.tables.jobs[job_id] = replace(job, **changes)  # type: ignore[arg-type]
            return True

    async def claim_jobs(self, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
        def due(job: Job) -> bool:
            if job.state in CLAIMABLE:
                return job.run_after <= now
            return job.state is JobState.RUNNING and (job.lease_expires_at or 0) <= now

        async with self.transaction() as tx:
            ready = sorted((j for j in tx.tables.jobs.values() if due(j)),
                           key=lambda j: (j.run_after, j.id))[:limit]
            claimed = []
            for job in ready:
                taken = replace(job, state=JobState.RUNNING, attempts=job.attempts + 1,
                                lease_owner=owner, lease_expires_at=now + lease_s,
                                updated_at=now)
                tx.tables.jobs[job.id] = taken
                claimed.append(taken)
            return claimed

    async def renew_lease(self, job_id: int, *, owner: str, until: float, now: float) -> bool:
        return await self._update_job(job_id, owner, lease_expires_at=until, updated_at=now)

    async def finish_job(self, job_id: int, *, owner: str, now: float) -> bool:
        return await self._update_job(job_id, owner, state=JobState.DONE, lease_owner=None,
                                      lease_expires_at=None, updated_at=now)

    async def retry_job(
        self, job_id: int, *, owner: str, error: str, run_after: float, now: float,
        count_attempt: bool = True,
    ) -> bool:
        return await self._update_job(job_id, owner, state=JobState.RETRYING, lease_owner=None,
                                      lease_expires_at=None, last_error=error,
                                      run_after=run_after, updated_at=now,
                                      refund=not count_attempt)

    async def kill_job(self, job_id: int, *, owner: str, error: str, now: float) -> bool:
        return await self._update_job(job_id, owner, state=JobState.DEAD, lease_owner=None,
                                      lease_expires_at=None, last_error=error, updated_at=now)

    async def release_jobs(self, *, owner: str, now: float) -> int:
        async with self.transaction() as tx:
            mine = [j for j in tx.tables.jobs.values()
                    if j.state is JobState.RUNNING and j.lease_owner == owner]
            for job in mine:
                tx.tables.jobs[job.id] = replace(
                    job, state=JobState.QUEUED, lease_owner=None, lease_expires_at=None,
                    attempts=max(job.attempts - 1, 0), run_after=now, updated_at=now)
            return len(mine)

    async def next_due(self) -> float | None:
        times = [
            (j.lease_expires_at or 0.0) if j.state is JobState.RUNNING else j.run_after
            for j in self._tables.jobs.values()
            if j.state in CLAIMABLE or j.state is JobState.RUNNING
        ]
        return min(times) if times else None

    async def list_jobs(
        self, *, state: JobState | None = None, task_id: str | None = None, limit: int = 500
    ) -> list[Job]:
        jobs = [
            j for _, j in sorted(self._tables.jobs.items())
            if (state is None or j.state is state) and (task_id is None or j.task_id == task_id)
        ]
        return jobs[:limit]

    # -- what handlers leave behind

    async def record_file(self, file: StoredFile) -> None:
        key = (file.task_id, file.clip_id, file.kind)
        async with self.transaction() as tx:
            old = tx.tables.files.get(key)
            tx.tables.files[key] = replace(file, created_at=old.created_at) if old else file

    async def list_files(self, task_id: str) -> list[StoredFile]:
        return [f for k, f in sorted(self._tables.files.items()) if k[0] == task_id]

    async def record_result(self, result: Result) -> None:
        key = (result.task_id, result.clip_id, result.kind)
        async with self.transaction() as tx:
            old = tx.tables.results.get(key)
            tx.tables.results[key] = replace(result, created_at=old.created_at) if old else result

    async def list_results(self, task_id: str) -> list[Result]:
        return [r for k, r in sorted(self._tables.results.items()) if k[0] == task_id]

    async def claim_child(self, child: ChildTask) -> tuple[ChildTask, bool]:
        async with self.transaction() as tx:
            existing = tx.tables.children.get(child.trigger_key)
            if existing is not None:
                return existing, False
            tx.tables.children[child.trigger_key] = child
            return child, True

    async def register_task(
        self, task_id: str, *, task_type: str, now: float, router: Router | None = None
    ) -> None:
        async with self.transaction() as tx:
            await tx.register_task(task_id, task_type=task_type, parent=None, at=now,
                                   router=router)

    async def update_child(
        self, trigger_key: str, *, state: ChildState, child_task_id: str | None = None,
        error: str | None = None, now: float, router: Router | None = None,
    ) -> ChildTask:
        async with self.transaction() as tx:
            old = tx.tables.children[trigger_key]
            child = replace(old, state=state, child_task_id=child_task_id or old.child_task_id,
                            error=error, updated_at=now)
            tx.tables.children[trigger_key] = child
            if child_task_id is not None:
                await tx.register_task(child_task_id, task_type=child.task_type,
                                       parent=child.parent_task_id, at=now, router=router)
        return child

    async def child_of(self, task_id: str) -> ChildTask | None:
        return next((c for c in self._tables.children.values() if c.child_task_id == task_id),
                    None)

    async def list_children(self, parent_task_id: str) -> list[ChildTask]:
        found = [c for c in self._tables.children.values() if c.parent_task_id == parent_task_id]
        return sorted(found, key=lambda c: (c.created_at, c.trigger_key))

    async def credits_under(self, root_task_id: str) -> int:
        return sum(c.credits for c in self._tables.children.values()
                   if c.root_task_id == root_task_id and c.state is not ChildState.FAILED)


    # -- replay

    async def tasks_to_reconcile(
        self, *, stale_before: float | None = None, since: float | None = None,
        limit: int = 1_000_000,
    ) -> list[str]:
        tasks = self._tables.tasks.values()
        found: list[str] = []
        if stale_before is not None:
            stale = [t for t in tasks if t.state not in TERMINAL and t.last_event_at < stale_before]
            found += [t.task_id for t in sorted(stale, key=lambda t: t.last_event_at)]
        if since is not None:
            recent = [t for t in tasks if t.first_seen_at >= since]
            found += [t.task_id for t in sorted(recent, key=lambda t: t.first_seen_at)]
        return list(dict.fromkeys(found))[:limit]

    async def preview_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        async with self._lock:
            work = copy.deepcopy(self._tables)  # thrown away: nothing is written
            return await record(MemoryTransaction(work), delivery, router=router)

    async def rerecord_quarantined(
        self, delivery: Delivery, *, router: Router | None = None, preview: bool = False
    ) -> RecordResult:
        if preview:
            async with self._lock:
                tx = MemoryTransaction(copy.deepcopy(self._tables))  # thrown away
                return await self._rerecord(tx, delivery, router)
        async with self.transaction() as tx:
            return await self._rerecord(tx, delivery, router)

    @staticmethod
    async def _rerecord(
        tx: MemoryTransaction, delivery: Delivery, router: Router | None
    ) -> RecordResult:
        found = tx.tables.deliveries.get(delivery.delivery_id)
        if found and found[0].outcome is Outcome.QUARANTINED:
            del tx.tables.deliveries[delivery.delivery_id]
        return await record(tx, delivery, router=router)

    async def raw_deliveries(
        self, *, since: float | None = None, until: float | None = None,
        task_id: str | None = None, outcome: Outcome | None = None, limit: int = 1_000_000,
    ) -> list[RawDelivery]:
        found = [
            RawDelivery(stored=stored, headers=dict(d.headers), body=d.body)
            for stored, d in self._tables.deliveries.values()
            if (since is None or stored.received_at >= since)
            and (until is None or stored.received_at < until)
            and (task_id is None or stored.task_id == task_id)
            and (outcome is None or stored.outcome is outcome)
        ]
        return found[:limit]

    async def find_jobs(self, where: JobFilter, *, limit: int = 1_000_000) -> list[Job]:
        found = [
            j for _, j in sorted(self._tables.jobs.items())
            if (where.state is None or j.state is where.state)
            and (where.handler is None or j.handler == where.handler)
            and (where.task_id is None or j.task_id == where.task_id)
            and (where.since is None or j.created_at >= where.since)
            and (where.until is None or j.created_at < where.until)
            and (where.delivery_ids is None or j.delivery_id in where.delivery_ids)
        ]
        return found[:limit]

    async def requeue_jobs(self, job_ids: Sequence[int], *, now: float) -> int:
        async with self.transaction() as tx:
            changed = 0
            for job_id in job_ids:
                job = tx.tables.jobs.get(job_id)
                if job is not None and job.state in (JobState.DONE, JobState.DEAD):
                    tx.tables.jobs[job_id] = replace(job, state=JobState.QUEUED, attempts=0,
                                                     run_after=now, last_error=None,
                                                     updated_at=now)
                    changed += 1
            return changed


class MemoryTransaction:
    def __init__(self, tables: _Tables) -> None:
        self._t = tables

    @property
    def tables(self) -> _Tables:
        return self._t

    async def register_task(
        self, task_id: str, *, task_type: str, parent: str | None, at: float,
        router: Router | None,
    ) -> None:
        self._register(task_id, task_type=task_type, parent=parent, at=at)
        earlier = [t for t in self._t.transitions
                   if t.task_id == task_id and t.entity is Entity.TASK]
        await plan_jobs(self, router, task_id, earlier, at=at)

    def _register(self, task_id: str, *, task_type: str, parent: str | None, at: float) -> None:
        old = self._t.tasks.get(task_id)
        if old is None:
            self._t.tasks[task_id] = Task(
                task_id=task_id, state=State.PENDING, platform=None, error=None,
                first_seen_at=at, updated_at=at, last_event_at=at, last_delivery_id=None,
                task_type=task_type, parent_task_id=parent)
        else:
            self._t.tasks[task_id] = replace(
                old, task_type=old.task_type or task_type,
                parent_task_id=old.parent_task_id or parent)

    async def task_facts(self, task_id: str) -> TaskFacts:
        task = self._t.tasks.get(task_id)
        tags = [c.tags for (t, _), c in self._t.clips.items() if t == task_id]
        return TaskFacts(task_id=task_id, task_type=task.task_type if task else None,
                         platform=task.platform if task else None, tags=split_tags(tags))

    async def insert_jobs(self, specs: Sequence[JobSpec], *, at: float) -> int:
        keys = {j.key for j in self._t.jobs.values()}
        inserted = 0
        for spec in specs:
            if spec.key in keys:
                continue
            keys.add(spec.key)
            job_id = max(self._t.jobs, default=0) + 1
            self._t.jobs[job_id] = Job(
                id=job_id, key=spec.key, handler=spec.handler, route=spec.route,
                options=dict(spec.options), task_id=spec.task_id, trigger=spec.trigger,
                delivery_id=spec.delivery_id, state=JobState.QUEUED, attempts=0,
                max_attempts=spec.max_attempts, run_after=at, lease_owner=None,
                lease_expires_at=None, last_error=None, created_at=at, updated_at=at)
            inserted += 1
        return inserted

    async def find_delivery(self, delivery_id: str) -> StoredDelivery | None:
        found = self._t.deliveries.get(delivery_id)
        return found[0] if found else None

    async def insert_delivery(
        self, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
    ) -> None:
        stored = StoredDelivery(
            delivery_id=delivery.delivery_id,
            source=delivery.source,
            scheme=delivery.scheme,
            event=delivery.event,
            task_id=task_id,
            outcome=outcome,
            reason=reason,
            received_at=delivery.received_at,
        )
        self._t.deliveries[delivery.delivery_id] = (stored, delivery)

    async def task_for_clips(self, clip_ids: Sequence[str]) -> str | None:
        wanted = set(clip_ids)
        return next((t for (t, c) in self._t.clips if c in wanted), None)

    async def task_state(self, task_id: str) -> State | None:
        task = self._t.tasks.get(task_id)
        return task.state if task else None

    async def clip_states(self, task_id: str) -> Mapping[str, State]:
        return {c: clip.state for (t, c), clip in self._t.clips.items() if t == task_id}

    async def upsert_task(
        self,
        task_id: str,
        *,
        state: State,
        platform: str | None,
        error: str | None,
        delivery_id: str,
        at: float,
    ) -> None:
        old = self._t.tasks.get(task_id)
        if old is None:
            self._t.tasks[task_id] = Task(
                task_id=task_id,
                state=state,
                platform=platform,
                error=error,
                first_seen_at=at,
                updated_at=at,
                last_event_at=at,
                last_delivery_id=delivery_id,
            )
            return
        self._t.tasks[task_id] = replace(
            old,
            state=state,
            updated_at=old.updated_at if old.state == state else at,
            platform=platform or old.platform,
            error=error or old.error,
            last_event_at=max(old.last_event_at, at),
            last_delivery_id=delivery_id,
        )

    async def upsert_clips(
        self, task_id: str, clips: Sequence[tuple[ClipReport, State]], *, at: float
    ) -> None:
        for report, state in clips:
            old = self._t.clips.get((task_id, report.clip_id))

            def pick(new: str | None, previous: str | None) -> str | None:
                return new if new is not None else previous

            self._t.clips[(task_id, report.clip_id)] = Clip(
                task_id=task_id,
                clip_id=report.clip_id,
                state=state,
                title=pick(report.title, old.title if old else None),
                tags=pick(report.tags, old.tags if old else None),
                lyrics=pick(report.lyrics, old.lyrics if old else None),
                audio_url=pick(report.audio_url, old.audio_url if old else None),
                image_url=pick(report.image_url, old.image_url if old else None),
                video_url=pick(report.video_url, old.video_url if old else None),
                duration=report.duration if report.duration is not None else (
                    old.duration if old else None
                ),
                mv=pick(report.mv, old.mv if old else None),
                created_at=pick(report.created_at, old.created_at if old else None),
                updated_at=at,
                data=dict(report.raw),
            )

    async def insert_transitions(self, transitions: Sequence[Transition]) -> None:
        seen = {(t.task_id, t.entity, t.entity_id, t.to_state) for t in self._t.transitions}
        for t in transitions:
            key = (t.task_id, t.entity, t.entity_id, t.to_state)
            if key in seen:
                # the UNIQUE constraint of the SQLite schema
                raise ValueError(f"transition {key} recorded twice")
            seen.add(key)
            self._t.transitions.append(t)
