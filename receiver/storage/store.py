"""The storage logic, once, above any backend: :class:`Store`.

Every rule about what is kept lives here or in :mod:`receiver.recording` (which this module
runs): deduplication, state transitions, jobs and their leases and attempts, child tasks,
files and results, the reconcile selection, retention and the audit log. A backend
(:mod:`receiver.storage.sqlite`, :mod:`receiver.storage.postgres`) only runs units of work in
transactions with its named statements.

Writes go through group commit: every write that arrives while a transaction runs waits for
the next one, which records them all together, each in its own savepoint (one bad unit cannot
fail the others), and answers them all after its single commit. Under load that turns N
commits into one; alone, a write is its own batch and pays nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog

from receiver.clock import Clock, SystemClock
from receiver.errors import StoreError
from receiver.jobs import Job, JobSpec, JobState
from receiver.models import (
    ChildState,
    ChildTask,
    Delivery,
    JobFilter,
    Outcome,
    RawDelivery,
    RecordResult,
    Result,
    StoredDelivery,
    StoredFile,
    TaskView,
    Transition,
)
from receiver.payloads import ClipReport
from receiver.recording import TaskBefore, plan_jobs, record
from receiver.routing import Router, TaskFacts, split_tags
from receiver.states import State
from receiver.storage import rows as records
from receiver.storage.admin import AdminQueries
from receiver.storage.connector import Connector, Tx, Unit, Work
from receiver.storage.statements import COUNTS, Q

log = structlog.get_logger("receiver.storage")

T = TypeVar("T")
MAX_BATCH = 128
_CHUNK = 500


@dataclass(frozen=True, kw_only=True)
class PruneReport:
    """What retention removed (or, in a dry run, would remove)."""

    bodies: int
    jobs: int
    delivery_ids: int
    dry_run: bool


class Store(AdminQueries):
    """Everything the receiver keeps, by intent, over ``connector``. It implements every role
    of :mod:`receiver.storage.roles`; callers should depend on the role they use. The
    console's queries come from :class:`receiver.storage.admin.AdminQueries`."""

    def __init__(self, connector: Connector, *, clock: Clock | None = None) -> None:
        self.connector = connector
        self.clock = clock or SystemClock()
        self._queue: list[tuple[Unit, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def open(self) -> Store:
        await self.connector.open()
        return self

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self.connector.close()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def describe(self) -> str:
        return self.connector.describe()

    # -- group commit ------------------------------------------------------------------------

    async def write(
        self, work: Work[T], *, keep: bool = True, locks: tuple[str, ...] = ()
    ) -> T:
        """Run ``work`` in a transaction shared with the writes queued beside it (its own
        savepoint), and return once that transaction committed (or, not ``keep``, once its
        savepoint was rolled back: a preview). ``locks``: the tasks ``work`` will lock, when
        known (see :class:`receiver.storage.connector.Unit`)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((Unit(work=work, keep=keep, locks=locks), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="store-writer")
        return await future

    async def _flush(self) -> None:
        # One turn of the loop first: requests whose bytes arrived in the same turn reach their
        # write() and join this batch, instead of the next (at c=8 end to end, most batches had
        # 1-5 units without it, 8 with it: fewer commits, and fewer WAL pages a delivery).
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            units = [unit for unit, _ in batch]
            try:
                await self.connector.write(units)
            except BaseException as exc:
                failure = exc if isinstance(exc, StoreError) else StoreError(
                    f"transaction failed: {type(exc).__name__}: {exc}")
                # Whoever queued meanwhile would wait on the same lock or the same full disk:
                # answer them now too, instead of making each wait its turn for a timeout.
                waiting, self._queue = self._queue, []
                for _, future in (*batch, *waiting):
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for unit, future in batch:
                if future.done():
                    continue  # its caller went away; the work is done all the same
                if unit.error is not None:
                    future.set_exception(unit.error)
                else:
                    future.set_result(unit.result)

    async def read(self, work: Work[T]) -> T:
        return await self.connector.read(work)

    # -- ingest ------------------------------------------------------------------------------

    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        """Record one verified delivery and the jobs ``router`` plans for it, atomically (see
        :mod:`receiver.recording`)."""
        return await self.write(lambda tx: _record(tx, delivery, router),
                                locks=_task_locks(delivery))

    async def preview_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult:
        """What :meth:`record_delivery` would do, with nothing written (rolled back)."""
        return await self.write(lambda tx: _record(tx, delivery, router), keep=False,
                                locks=_task_locks(delivery))

    async def rerecord_quarantined(
        self, delivery: Delivery, *, router: Router | None = None, preview: bool = False
    ) -> RecordResult:
        """Record a quarantined delivery again (after a fix, or once its task is known): the
        quarantined row is replaced by whatever recording it now gives, in one transaction."""

        async def work(tx: Tx) -> RecordResult:
            await tx.run(Q.DELETE_QUARANTINED, {"delivery_id": delivery.delivery_id})
            return await _record(tx, delivery, router)

        return await self.write(work, keep=not preview, locks=_task_locks(delivery))

    async def check_writable(self) -> None:
        """Raise :class:`StoreError` unless a delivery can be committed now."""
        await self.connector.check_space()

        async def probe(tx: Tx) -> None:
            await tx.run(Q.PROBE_WRITE, {"name": "ready", "at": self.clock.now()})

        await self.write(probe)

    # -- reading a task ----------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskView | None:
        """A task with its clips and transitions, or None."""

        async def work(tx: Tx) -> TaskView | None:
            row = await tx.one(Q.GET_TASK, {"task_id": task_id})
            if row is None:
                return None
            clips = await tx.rows(Q.GET_CLIPS, {"task_id": task_id})
            transitions = await tx.rows(Q.GET_TRANSITIONS, {"task_id": task_id})
            return TaskView(task=records.task(row), clips=tuple(records.clip(r) for r in clips),
                            transitions=tuple(records.transition(r) for r in transitions))

        return await self.read(work)

    # -- the job queue: every change to a claimed job checks the lease owner, so a worker
    #    that lost its lease (too slow; another took the job over) changes nothing ------------

    async def claim_jobs(self, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
        """Take up to ``limit`` due jobs (or jobs whose lease expired) for ``owner``."""
        return await self.write(lambda tx: self._claim(tx, owner=owner, limit=limit, now=now,
                                                       lease_s=lease_s))

    async def finish_and_claim(
        self, *, owner: str, finished: Sequence[int], limit: int, now: float, lease_s: float
    ) -> tuple[frozenset[int], list[Job]]:
        """Finish the jobs ``finished`` (done; as :meth:`finish_job`, only those ``owner``
        still holds, which are returned) and claim up to ``limit`` more, in one unit of work:
        a worker's outcomes ride with its next claim instead of costing a write each."""

        async def work(tx: Tx) -> tuple[frozenset[int], list[Job]]:
            done: frozenset[int] = frozenset()
            if finished:
                rows = await tx.rows(Q.FINISH_JOBS, {
                    "ids": json.dumps(sorted(finished)), "owner": owner, "now": now})
                done = frozenset(int(r[0]) for r in rows)
                await tx.run_many(Q.END_ATTEMPT, [
                    {"job_id": job_id, "owner": owner, "now": now, "outcome": "done",
                     "error": None} for job_id in sorted(done)
                ])
            claimed = await self._claim(tx, owner=owner, limit=limit, now=now,
                                        lease_s=lease_s) if limit > 0 else []
            return done, claimed

        return await self.write(work)

    @staticmethod
    async def _claim(tx: Tx, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
        # window: the first due jobs of each kind that the claim considers (Q.CLAIM_JOBS),
        # with room for those concurrent claims on PostgreSQL hold locked and skip
        rows = await tx.rows(Q.CLAIM_JOBS, {"owner": owner, "until": now + lease_s, "now": now,
                                            "limit": limit, "window": limit + 64})
        jobs = sorted((records.job(r) for r in rows), key=lambda j: (j.run_after, j.id))
        await tx.run_many(Q.START_ATTEMPT, [
            {"job_id": j.id, "attempt": j.attempts, "owner": owner, "now": now} for j in jobs
        ])
        return jobs

    async def renew_lease(self, job_id: int, *, owner: str, until: float, now: float) -> bool:
        params = {"id": job_id, "owner": owner, "until": until, "now": now}
        return await self._write_one(Q.RENEW_LEASE, params) == 1

    async def finish_job(self, job_id: int, *, owner: str, now: float) -> bool:
        done, _ = await self.finish_and_claim(owner=owner, finished=[job_id], limit=0, now=now,
                                              lease_s=0.0)
        return job_id in done

    async def retry_job(
        self, job_id: int, *, owner: str, error: str, run_after: float, now: float,
        count_attempt: bool = True,
    ) -> bool:
        return await self._end(
            Q.RETRY_JOB, "retry" if count_attempt else "later", job_id, owner=owner, now=now,
            error=error, run_after=run_after, refund=0 if count_attempt else 1,
        )

    async def kill_job(self, job_id: int, *, owner: str, error: str, now: float) -> bool:
        return await self._end(Q.KILL_JOB, "dead", job_id, owner=owner, now=now, error=error)

    async def _end(
        self, q: Q, outcome: str, job_id: int, *, owner: str, now: float,
        error: str | None = None, **extra: Any,
    ) -> bool:
        async def work(tx: Tx) -> bool:
            params = {"id": job_id, "owner": owner, "now": now, "error": error, **extra}
            if await tx.run(q, params) != 1:
                return False
            await tx.run(Q.END_ATTEMPT, {"job_id": job_id, "owner": owner, "now": now,
                                         "outcome": outcome, "error": error})
            return True

        return await self.write(work)

    async def release_jobs(self, *, owner: str, now: float) -> int:
        """Hand ``owner``'s running jobs back (graceful stop), without charging the attempt."""

        async def work(tx: Tx) -> int:
            released = await tx.rows(Q.RELEASE_JOBS, {"owner": owner, "now": now})
            await tx.run_many(Q.END_ATTEMPT, [
                {"job_id": r[0], "owner": owner, "now": now, "outcome": "released",
                 "error": None} for r in released
            ])
            return len(released)

        return await self.write(work)

    async def next_due(self) -> float | None:
        """When the next job becomes claimable (a run_after or a lease expiry), if any."""
        row = await self.read(lambda tx: tx.one(Q.NEXT_DUE))
        return float(row[0]) if row is not None and row[0] is not None else None

    async def wait_for_jobs(self, wait_s: float) -> None:
        """Return when another process may have queued jobs, or after ``wait_s``."""
        await self.connector.wait_for_jobs(wait_s)

    async def list_jobs(
        self, *, state: JobState | None = None, task_id: str | None = None, limit: int = 500
    ) -> list[Job]:
        return await self.find_jobs(JobFilter(state=state, task_id=task_id), limit=limit)

    async def find_jobs(self, where: JobFilter, *, limit: int = 1_000_000) -> list[Job]:
        params: dict[str, Any] = {
            "state": where.state.value if where.state else None, "handler": where.handler,
            "task_id": where.task_id, "since": where.since, "until": where.until,
            "limit": limit,
        }
        if where.delivery_ids is None:
            found = await self.read(lambda tx: tx.rows(Q.FIND_JOBS, params))
            return [records.job(r) for r in found]
        params["delivery_ids"] = json.dumps(sorted(where.delivery_ids))
        rows = await self.read(lambda tx: tx.rows(Q.FIND_JOBS_OF_DELIVERIES, params))
        return [records.job(r) for r in rows]

    async def requeue_jobs(self, job_ids: Sequence[int], *, now: float) -> int:
        """Queue finished (done or dead) jobs again, attempts reset; returns how many."""

        async def work(tx: Tx) -> int:
            changed = 0
            for start in range(0, len(job_ids), _CHUNK):
                chunk = [int(i) for i in job_ids[start:start + _CHUNK]]
                changed += await tx.run(Q.REQUEUE_JOBS, {"ids": json.dumps(chunk), "now": now})
            if changed:
                tx.jobs_written()
            return changed

        return await self.write(work)

    # -- what handlers leave behind ----------------------------------------------------------

    async def record_file(self, file: StoredFile) -> None:
        await self._write_one(Q.UPSERT_FILE, {
            "task_id": file.task_id, "clip_id": file.clip_id, "kind": file.kind,
            "path": file.path, "size": file.size, "sha256": file.sha256, "url": file.url,
            "content_type": file.content_type, "job_key": file.job_key,
            "created_at": file.created_at,
        })

    async def list_files(self, task_id: str) -> list[StoredFile]:
        rows = await self.read(lambda tx: tx.rows(Q.LIST_FILES, {"task_id": task_id}))
        return [records.file(r) for r in rows]

    async def record_result(self, result: Result) -> None:
        await self._write_one(Q.UPSERT_RESULT, {
            "task_id": result.task_id, "clip_id": result.clip_id, "kind": result.kind,
            "data": json.dumps(dict(result.data)), "job_key": result.job_key,
            "created_at": result.created_at,
        })

    async def list_results(self, task_id: str) -> list[Result]:
        rows = await self.read(lambda tx: tx.rows(Q.LIST_RESULTS, {"task_id": task_id}))
        return [Result(task_id=r[0], clip_id=r[1], kind=r[2], data=json.loads(r[3]),
                       job_key=r[4], created_at=r[5]) for r in rows]

    async def claim_child(self, child: ChildTask) -> tuple[ChildTask, bool]:
        """Record a follow-up before it is created: ``(child, True)``. An existing one for the
        same trigger key is returned instead, ``(existing, False)``: never two children for
        one trigger."""

        async def work(tx: Tx) -> tuple[ChildTask, bool]:
            inserted = await tx.run(Q.INSERT_CHILD, {
                "trigger_key": child.trigger_key, "parent_task_id": child.parent_task_id,
                "root_task_id": child.root_task_id, "rule": child.rule, "depth": child.depth,
                "task_type": child.task_type, "credits": child.credits,
                "request": json.dumps(dict(child.request), sort_keys=True),
                "child_task_id": child.child_task_id, "state": child.state.value,
                "error": child.error, "created_at": child.created_at,
                "updated_at": child.updated_at,
            }) == 1
            row = await tx.one(Q.GET_CHILD, {"trigger_key": child.trigger_key})
            if row is None:
                raise StoreError(f"child task for trigger {child.trigger_key!r} vanished")
            return records.child(row), inserted

        return await self.write(work)

    async def register_task(
        self, task_id: str, *, task_type: str, now: float, router: Router | None = None
    ) -> None:
        """Record a task this receiver created itself (a root), with its type, and write the
        jobs its already-recorded transitions owe."""
        await self.write(lambda tx: _register(tx, task_id, task_type=task_type, parent=None,
                                              at=now, router=router))

    async def update_child(
        self, trigger_key: str, *, state: ChildState, child_task_id: str | None = None,
        error: str | None = None, now: float, router: Router | None = None,
    ) -> ChildTask:
        """Move a child on. With a ``child_task_id``, the task is registered with its type and
        parent, and the jobs its already-recorded transitions owe are written (its webhook may
        have arrived before the create call returned)."""

        async def work(tx: Tx) -> ChildTask:
            await tx.run(Q.UPDATE_CHILD, {"state": state.value, "child_task_id": child_task_id,
                                          "error": error, "now": now,
                                          "trigger_key": trigger_key})
            row = await tx.one(Q.GET_CHILD, {"trigger_key": trigger_key})
            if row is None:
                raise StoreError(f"no child task for trigger {trigger_key!r}")
            child = records.child(row)
            if child_task_id is not None:
                await _register(tx, child_task_id, task_type=child.task_type,
                                parent=child.parent_task_id, at=now, router=router)
            return child

        return await self.write(work)

    async def child_of(self, task_id: str) -> ChildTask | None:
        """The child record that created ``task_id``, if this receiver created it."""
        row = await self.read(lambda tx: tx.one(Q.CHILD_BY_TASK, {"task_id": task_id}))
        return records.child(row) if row is not None else None

    async def list_children(self, parent_task_id: str) -> list[ChildTask]:
        rows = await self.read(lambda tx: tx.rows(Q.LIST_CHILDREN, {"task_id": parent_task_id}))
        return [records.child(r) for r in rows]

    async def credits_under(self, root_task_id: str) -> int:
        """Credits of every follow-up under ``root_task_id`` that was not refused."""
        row = await self.read(lambda tx: tx.one(Q.CREDITS_UNDER_ROOT, {"task_id": root_task_id}))
        return int(row[0]) if row is not None else 0

    # -- replay and administration -----------------------------------------------------------

    async def tasks_to_reconcile(
        self, *, stale_before: float | None = None, since: float | None = None,
        limit: int = 1_000_000,
    ) -> list[str]:
        """Tasks not yet terminal whose last event is older than ``stale_before``, or every
        task first seen at or after ``since``."""

        async def work(tx: Tx) -> list[str]:
            found: list[str] = []
            if stale_before is not None:
                found += [r[0] for r in await tx.rows(
                    Q.STALE_TASKS, {"before": stale_before, "limit": limit})]
            if since is not None:
                found += [r[0] for r in await tx.rows(
                    Q.TASKS_SINCE, {"since": since, "limit": limit})]
            return found

        return list(dict.fromkeys(await self.read(work)))[:limit]

    async def raw_deliveries(
        self, *, since: float | None = None, until: float | None = None,
        task_id: str | None = None, outcome: Outcome | None = None, limit: int = 1_000_000,
    ) -> list[RawDelivery]:
        """Stored deliveries with their headers and bodies (pruned ones left out), oldest
        first."""
        params = {"since": since, "until": until, "task_id": task_id,
                  "outcome": outcome.value if outcome else None, "limit": limit}
        rows = await self.read(lambda tx: tx.rows(Q.RAW_DELIVERIES, params))
        return [RawDelivery(stored=records.delivery(r), headers=json.loads(r[8]), body=bytes(r[9]))
                for r in rows]

    async def take_turn(self, name: str, *, owner: str, hold_s: float) -> bool:
        """Whether ``owner`` has the turn at ``name`` for the next ``hold_s`` seconds: among
        several processes running the same schedule (reconcile, prune), one does each round."""
        now = self.clock.now()
        params = {"name": name, "owner": owner, "until": now + hold_s, "now": now}
        return await self._write_one(Q.TAKE_TURN, params) == 1

    async def audit(
        self, *, actor: str, action: str, target: str | None, detail: Mapping[str, Any]
    ) -> None:
        """Keep who did what to what, and when (operators' actions)."""
        await self._write_one(Q.INSERT_AUDIT, {
            "at": self.clock.now(), "actor": actor, "action": action, "target": target,
            "detail": json.dumps(dict(detail), sort_keys=True, default=str),
        })

    async def prune(
        self, *, older_than_s: float, keep_ids_s: float, dry_run: bool = False
    ) -> PruneReport:
        """Retention: raw bodies of deliveries of finished tasks, and finished jobs (with their
        attempts), older than ``older_than_s``; the delivery rows themselves (the ids that
        deduplication needs) only after ``keep_ids_s``. Tasks, clips, transitions, files,
        results and quarantined deliveries are kept."""
        if keep_ids_s < older_than_s:
            raise ValueError("delivery ids must be kept at least as long as bodies")
        now = self.clock.now()
        before, ids_before = now - older_than_s, now - keep_ids_s

        async def count(tx: Tx) -> PruneReport:
            async def n(q: Q, horizon: float) -> int:
                row = await tx.one(q, {"before": horizon})
                return int(row[0]) if row is not None else 0

            return PruneReport(bodies=await n(Q.COUNT_PRUNABLE_BODIES, before),
                               jobs=await n(Q.COUNT_PRUNABLE_JOBS, before),
                               delivery_ids=await n(Q.COUNT_PRUNABLE_IDS, ids_before),
                               dry_run=True)

        if dry_run:
            return await self.read(count)

        async def work(tx: Tx) -> PruneReport:
            bodies = await tx.run(Q.PRUNE_BODIES, {"before": before, "now": now, "empty": b""})
            await tx.run(Q.PRUNE_ATTEMPTS, {"before": before})
            jobs = await tx.run(Q.PRUNE_JOBS, {"before": before})
            ids = await tx.run(Q.PRUNE_IDS, {"before": ids_before})
            return PruneReport(bodies=bodies, jobs=jobs, delivery_ids=ids, dry_run=False)

        report = await self.write(work)
        log.info("store_pruned", bodies=report.bodies, jobs=report.jobs,
                 delivery_ids=report.delivery_ids)
        return report

    async def counts(self) -> Mapping[str, int]:
        """Row counts by table (operations and tests)."""

        async def work(tx: Tx) -> dict[str, int]:
            result = {}
            for table, q in COUNTS.items():
                row = await tx.one(q)
                result[table] = int(row[0]) if row is not None else 0
            return result

        return await self.read(work)

    async def _write_one(self, q: Q, params: Mapping[str, Any]) -> int:
        return await self.write(lambda tx: tx.run(q, params))


# -- the units of work of recording ------------------------------------------------------------


def _task_locks(delivery: Delivery) -> tuple[str, ...]:
    """The task recording ``delivery`` will lock, when its body names it (one named only by
    its clips' ids is found, and locked, inside the unit)."""
    callback = delivery.callback
    return (callback.task_id,) if callback is not None and callback.task_id else ()


async def _record(tx: Tx, delivery: Delivery, router: Router | None) -> RecordResult:
    result = await record(RecordingTx(tx), delivery, router=router)
    if result.outcome is Outcome.DUPLICATE:
        await tx.run(Q.COUNT_DUPLICATE, {"delivery_id": delivery.delivery_id,
                                         "at": delivery.received_at})
    return result


async def _register(
    tx: Tx, task_id: str, *, task_type: str, parent: str | None, at: float,
    router: Router | None,
) -> None:
    """Upsert a task we created (type, parent) and catch up on the jobs its recorded
    transitions owe: its webhook may have come before the create call returned. (When it is
    being recorded right now in another process, the two upserts of the task row make one
    transaction wait for the other's commit, so one of them sees the other's writes.)"""
    await tx.run(Q.REGISTER_TASK, {"task_id": task_id, "at": at, "task_type": task_type,
                                   "parent": parent})
    earlier = await tx.rows(Q.TASK_TRANSITIONS, {"task_id": task_id})
    await plan_jobs(RecordingTx(tx), router, task_id,
                    [records.transition(r) for r in earlier], at=at)


class RecordingTx:
    """:class:`receiver.recording.Transaction` over named statements: the one implementation
    for every backend."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    async def find_delivery(self, delivery_id: str) -> StoredDelivery | None:
        row = await self.tx.one(Q.FIND_DELIVERY, {"delivery_id": delivery_id})
        return records.delivery(row) if row is not None else None

    async def insert_delivery(
        self, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
    ) -> bool:
        inserted = await self.tx.run(Q.INSERT_DELIVERY, {
            "delivery_id": delivery.delivery_id, "source": delivery.source.value,
            "scheme": delivery.scheme, "event": delivery.event, "task_id": task_id,
            "outcome": outcome.value, "reason": reason,
            "headers": _dumps(dict(delivery.headers), sort=True),
            "body": delivery.body, "received_at": delivery.received_at,
        })
        return inserted == 1

    async def task_for_clips(self, clip_ids: Sequence[str]) -> str | None:
        if not clip_ids:
            return None
        row = await self.tx.one(Q.TASK_FOR_CLIPS, {"clip_ids": json.dumps(list(clip_ids))})
        return str(row[0]) if row is not None else None

    async def lock_task(self, task_id: str) -> None:
        await self.tx.send(Q.LOCK_TASK, {"task_id": task_id})

    async def task_state(self, task_id: str) -> State | None:
        row = await self.tx.one(Q.TASK_STATE, {"task_id": task_id})
        return State(row[0]) if row is not None else None

    async def task_before(self, task_id: str) -> TaskBefore:
        task: State | None = None
        clips: dict[str, State] = {}
        for clip_id, state in await self.tx.rows(Q.TASK_BEFORE, {"task_id": task_id}):
            if clip_id is None:
                task = State(state)
            else:
                clips[clip_id] = State(state)
        return TaskBefore(state=task, clips=clips)

    async def upsert_task(
        self, task_id: str, *, state: State, platform: str | None, error: str | None,
        delivery_id: str, at: float,
    ) -> None:
        await self.tx.send(Q.UPSERT_TASK, {"task_id": task_id, "state": state.value,
                                          "platform": platform, "error": error, "at": at,
                                          "delivery_id": delivery_id})

    async def upsert_clips(
        self, task_id: str, clips: Sequence[tuple[ClipReport, State]], *, at: float
    ) -> None:
        if clips:
            await self.tx.send_many(Q.UPSERT_CLIP, [_clip_params(task_id, c, state, at)
                                                   for c, state in clips])

    async def insert_transitions(self, transitions: Sequence[Transition]) -> None:
        if transitions:
            await self.tx.send_many(Q.INSERT_TRANSITION, [
                {"task_id": t.task_id, "entity": t.entity.value, "entity_id": t.entity_id,
                 "from_state": t.from_state.value if t.from_state else None,
                 "to_state": t.to_state.value, "delivery_id": t.delivery_id,
                 "source": t.source.value, "at": t.at}
                for t in transitions
            ])

    async def task_facts(self, task_id: str) -> TaskFacts:
        rows = await self.tx.rows(Q.TASK_FACTS, {"task_id": task_id})
        task = next((r for r in rows if r[0] == "task"), None)
        return TaskFacts(task_id=task_id, task_type=task[1] if task else None,
                         platform=task[2] if task else None,
                         tags=split_tags(r[1] for r in rows if r[0] == "clip"))

    async def insert_jobs(self, specs: Sequence[JobSpec], *, at: float) -> int:
        inserted = await self.tx.run_many(Q.INSERT_JOB, [
            {"key": s.key, "handler": s.handler, "route": s.route,
             "options": _dumps(dict(s.options)), "task_id": s.task_id,
             "trigger": s.trigger, "delivery_id": s.delivery_id,
             "max_attempts": s.max_attempts, "at": at}
            for s in specs
        ])
        if inserted:
            self.tx.jobs_written()
        return inserted


# -- rows to records ---------------------------------------------------------------------------


def _dumps(value: Any, *, sort: bool = False) -> str:
    """JSON text of ``value``, by orjson on the ingest path (several times cheaper than
    ``json.dumps``); what orjson refuses (an integer past 64 bits) goes through ``json``."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else 0).decode()
    except TypeError:
        return json.dumps(value, sort_keys=sort)


def _clip_params(task_id: str, clip: ClipReport, state: State, at: float) -> dict[str, Any]:
    return {
        "task_id": task_id, "clip_id": clip.clip_id, "state": state.value, "title": clip.title,
        "tags": clip.tags, "lyrics": clip.lyrics, "audio_url": clip.audio_url,
        "image_url": clip.image_url, "video_url": clip.video_url, "duration": clip.duration,
        "mv": clip.mv, "created_at": clip.created_at,
        "data": _dumps(dict(clip.raw), sort=True), "at": at,
    }
