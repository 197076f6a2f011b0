"""The administration queries the console needs, once for every backend: cursor-paged lists of
tasks, deliveries, jobs and the audit log, a delivery with what it did, a job's attempts,
"every job matching a filter" (counted, then requeued in one statement), and the numbers of the
overview and of ``/metrics``.

Every list is a :class:`Page` in a stable order (newest first, ties broken by id) with an opaque
cursor: the base64 of the last item's sort key. Paging never repeats or skips a row that existed
when the first page was read, however many arrive meanwhile (new ones sort first).

:class:`AdminQueries` is mixed into :class:`receiver.storage.store.Store`; it uses only the
store's ``read`` and ``write`` and the named statements of :mod:`receiver.storage.statements`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from receiver.errors import ReceiverError
from receiver.jobs import Job, JobState
from receiver.models import (
    JobFilter,
    Outcome,
    RawDelivery,
    Source,
    StoredDelivery,
    Task,
    Transition,
)
from receiver.states import State
from receiver.storage import rows as records
from receiver.storage.connector import Row, Tx, Work
from receiver.storage.statements import Q

MAX_LIMIT = 500
JOB_STATES = tuple(s.value for s in JobState)


class BadCursor(ReceiverError):
    """The cursor was not made by this receiver."""


def encode_cursor(key: Sequence[Any]) -> str:
    """An opaque cursor for the sort key ``key`` (JSON values)."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int) -> list[Any] | None:
    """The sort key in ``cursor`` (``arity`` values), None without one; :class:`BadCursor`."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("cursor is not one this receiver made") from exc
    if not isinstance(key, list) or len(key) != arity or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in key
    ):
        raise BadCursor("cursor is not one this receiver made")
    return key


T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class TaskFilter:
    """Which tasks a list shows; None matches anything. ``text`` is searched in clip titles,
    ``tag`` in clip tags; times are unix seconds on ``first_seen_at``."""

    state: State | None = None
    task_type: str | None = None
    tag: str | None = None
    parent: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None


@dataclass(frozen=True, kw_only=True)
class TaskRow:
    """A task as a list shows it: the task, its first clip's title, its clip count."""

    task: Task
    title: str | None
    clips: int


@dataclass(frozen=True, kw_only=True)
class DeliveryFilter:
    """``outcome`` ``duplicate`` matches deliveries that were received more than once."""

    outcome: Outcome | None = None
    event: str | None = None
    source: Source | None = None
    since: float | None = None
    task_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryRow:
    """A stored delivery with how often a copy of it came again (``duplicates``)."""

    id: int
    delivery_id: str
    source: Source
    scheme: str
    event: str | None
    task_id: str | None
    outcome: Outcome
    reason: str | None
    received_at: float
    duplicates: int = 0
    last_duplicate_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryDetail:
    """A delivery with what it carried (empty once retention pruned it: ``pruned_at``) and
    the transitions it made."""

    row: DeliveryRow
    raw: RawDelivery
    transitions: tuple[Transition, ...]
    pruned_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class JobAttempt:
    """One run of a job: ``outcome`` is done, retry, later (RetryLater), dead or released,
    None while it runs."""

    job_id: int
    attempt: int
    owner: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    error: str | None


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Overview:
    """The numbers the dashboard's first page shows, at ``now``."""

    now: float
    deliveries_per_minute: tuple[tuple[float, int], ...]  # (minute start, count), last hour
    outcomes: Mapping[str, int]
    tasks_by_state: Mapping[str, int]
    jobs_by_state: Mapping[str, int]
    oldest_queued_at: float | None  # when the longest-waiting due job became due
    dead_jobs: int
    quarantined: int
    duplicates: int
    pending_downloads: int  # download jobs not done for clips whose audio URL is known
    expiring_downloads: int  # of those, the ones first seen more than ``expiry_warn_s`` ago


@dataclass(frozen=True, kw_only=True)
class Totals:
    """Cumulative counts for /metrics, computed from the database at scrape time (so they are
    right however many processes write)."""

    deliveries: Mapping[tuple[str, str], int]  # (outcome, scheme) -> n
    duplicates: Mapping[str, int]  # scheme -> repeats received
    transitions: Mapping[tuple[str, str], int]  # (entity, to_state) -> n
    jobs: Mapping[tuple[str, str], int]  # (state, handler) -> n
    oldest_queued_at: float | None
    bytes_downloaded: int
    recoveries: int  # task transitions recorded from a poll (reconciliation)




class AdminQueries:
    """The console's queries, as methods of the store (a mixin: it needs ``read``/``write``)."""

    read: Callable[[Work[Any]], Awaitable[Any]]
    write: Callable[..., Awaitable[Any]]

    async def list_tasks(
        self, where: TaskFilter, *, limit: int, cursor: str | None = None
    ) -> Page[TaskRow]:
        key = decode_cursor(cursor, 2)
        params = {
            "state": where.state.value if where.state else None, "task_type": where.task_type,
            "parent": where.parent, "since": where.since, "until": where.until,
            "text": f"%{where.text.lower()}%" if where.text else None,
            "tag": f"%{where.tag.lower()}%" if where.tag else None,
            "c_at": float(key[0]) if key else None, "c_id": str(key[1]) if key else None,
            "limit": limit + 1,
        }
        rows: list[Row] = await self.read(lambda tx: tx.rows(Q.LIST_TASKS, params))
        items = [TaskRow(task=records.task(r), title=r[10], clips=int(r[11])) for r in rows[:limit]]
        last = items[-1].task if items and len(rows) > limit else None
        return Page(items=tuple(items), next_cursor=encode_cursor(
            [last.first_seen_at, last.task_id]) if last else None)

    async def list_deliveries(
        self, where: DeliveryFilter, *, limit: int, cursor: str | None = None
    ) -> Page[DeliveryRow]:
        """``outcome=duplicate``: deliveries received more than once (the first copy is the
        row; the repeats are counted on it)."""
        key = decode_cursor(cursor, 1)
        duplicates = where.outcome is Outcome.DUPLICATE
        params = {
            "outcome": None if duplicates or where.outcome is None else where.outcome.value,
            "only_duplicates": 1 if duplicates else 0, "event": where.event,
            "source": where.source.value if where.source else None, "task_id": where.task_id,
            "since": where.since, "c_id": int(key[0]) if key else None, "limit": limit + 1,
        }
        rows: list[Row] = await self.read(lambda tx: tx.rows(Q.LIST_DELIVERIES, params))
        items = [_delivery_row(r) for r in rows[:limit]]
        return Page(items=tuple(items), next_cursor=encode_cursor([items[-1].id])
                    if items and len(rows) > limit else None)

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail | None:
        async def work(tx: Tx) -> DeliveryDetail | None:
            r = await tx.one(Q.GET_DELIVERY, {"delivery_id": delivery_id})
            if r is None:
                return None
            row = _delivery_row(r)
            transitions = await tx.rows(Q.DELIVERY_TRANSITIONS, {
                "delivery_id": delivery_id, "task_id": row.task_id}) if row.task_id else []
            raw = RawDelivery(
                stored=StoredDelivery(
                    delivery_id=row.delivery_id, source=row.source, scheme=row.scheme,
                    event=row.event, task_id=row.task_id, outcome=row.outcome,
                    reason=row.reason, received_at=row.received_at),
                headers=json.loads(r[11]), body=bytes(r[12]))
            return DeliveryDetail(row=row, raw=raw, pruned_at=r[13],
                                  transitions=tuple(records.transition(t) for t in transitions))

        result: DeliveryDetail | None = await self.read(work)
        return result

    async def list_jobs_page(
        self, where: JobFilter, *, limit: int, cursor: str | None = None
    ) -> Page[Job]:
        key = decode_cursor(cursor, 1)
        params = {**_job_params(where), "c_id": int(key[0]) if key else None,
                  "limit": limit + 1}
        rows: list[Row] = await self.read(lambda tx: tx.rows(Q.LIST_JOBS_PAGE, params))
        items = [records.job(r) for r in rows[:limit]]
        return Page(items=tuple(items), next_cursor=encode_cursor([items[-1].id])
                    if items and len(rows) > limit else None)

    async def get_job(self, job_id: int) -> Job | None:
        row: Row | None = await self.read(lambda tx: tx.one(Q.GET_JOB, {"id": job_id}))
        return records.job(row) if row is not None else None

    async def job_attempts(self, job_id: int) -> list[JobAttempt]:
        """Every attempt of a job, oldest first (a requeued job starts counting again at 1:
        its new attempts replace the old rows of the same number)."""
        rows: list[Row] = await self.read(lambda tx: tx.rows(Q.JOB_ATTEMPTS, {"job_id": job_id}))
        return [JobAttempt(job_id=job_id, attempt=r[0], owner=r[1], started_at=r[2],
                           outcome=r[3], error=r[4], finished_at=r[5]) for r in rows]

    async def count_jobs(self, where: JobFilter) -> int:
        params = _job_params(where)
        row: Row | None = await self.read(lambda tx: tx.one(Q.COUNT_MATCHING_JOBS, params))
        return int(row[0]) if row is not None else 0

    async def requeue_matching(self, where: JobFilter, *, now: float) -> int:
        """Queue again every finished (done or dead) job matching ``where``, in one statement,
        attempts reset; returns how many. A second call finds them queued: it changes
        nothing."""
        params = {**_job_params(where), "now": now}

        async def work(tx: Tx) -> int:
            changed = await tx.run(Q.REQUEUE_MATCHING, params)
            if changed:
                tx.jobs_written()
            return changed

        changed: int = await self.write(work)
        return changed

    async def list_audit(self, *, limit: int, cursor: str | None = None) -> Page[AuditEntry]:
        key = decode_cursor(cursor, 1)
        params = {"c_id": int(key[0]) if key else None, "limit": limit + 1}
        rows: list[Row] = await self.read(lambda tx: tx.rows(Q.LIST_AUDIT, params))
        items = [AuditEntry(id=r[0], at=r[1], actor=r[2], action=r[3], target=r[4],
                            detail=json.loads(r[5])) for r in rows[:limit]]
        return Page(items=tuple(items), next_cursor=encode_cursor([items[-1].id])
                    if items and len(rows) > limit else None)

    async def overview(self, *, now: float, expiry_warn_s: float) -> Overview:
        """The overview's numbers at ``now``: deliveries a minute over the last hour, and
        download jobs still pending after ``expiry_warn_s`` (their CDN links may expire)."""
        first = int(now // 60) - 59

        async def work(tx: Tx) -> Overview:
            minutes = {int(r[0]): int(r[1]) for r in await tx.rows(
                Q.DELIVERIES_PER_MINUTE, {"since": first * 60})}
            outcomes: dict[str, int] = {}
            duplicates = 0
            for outcome, _scheme, n, repeats in await tx.rows(Q.DELIVERIES_BY_OUTCOME):
                outcomes[outcome] = outcomes.get(outcome, 0) + int(n)
                duplicates += int(repeats)
            jobs: dict[str, int] = {}
            for state, _handler, n in await tx.rows(Q.JOBS_BY_STATE_HANDLER):
                jobs[state] = jobs.get(state, 0) + int(n)
            oldest = await tx.one(Q.OLDEST_QUEUED, {"now": now})
            pending = await tx.one(Q.PENDING_DOWNLOADS, {"warn_before": now - expiry_warn_s})
            return Overview(
                now=now,
                deliveries_per_minute=tuple((float(m * 60), minutes.get(m, 0))
                                            for m in range(first, first + 60)),
                outcomes=outcomes,
                tasks_by_state={r[0]: int(r[1]) for r in await tx.rows(Q.TASKS_BY_STATE)},
                jobs_by_state=jobs, oldest_queued_at=oldest[0] if oldest else None,
                dead_jobs=jobs.get("dead", 0), quarantined=outcomes.get("quarantined", 0),
                duplicates=duplicates,
                pending_downloads=int(pending[0]) if pending else 0,
                expiring_downloads=int(pending[1]) if pending else 0,
            )

        result: Overview = await self.read(work)
        return result

    async def totals(self, *, now: float) -> Totals:
        """Cumulative counts for ``/metrics``, from the database at scrape time ``now``."""

        async def work(tx: Tx) -> Totals:
            deliveries: dict[tuple[str, str], int] = {}
            duplicates: dict[str, int] = {}
            for outcome, scheme, n, repeats in await tx.rows(Q.DELIVERIES_BY_OUTCOME):
                deliveries[(outcome, scheme)] = int(n)
                duplicates[scheme] = duplicates.get(scheme, 0) + int(repeats)
            oldest = await tx.one(Q.OLDEST_QUEUED, {"now": now})
            kept = await tx.one(Q.BYTES_KEPT)
            recoveries = await tx.one(Q.RECOVERIES)
            return Totals(
                deliveries=deliveries, duplicates=duplicates,
                transitions={(r[0], r[1]): int(r[2])
                             for r in await tx.rows(Q.TRANSITIONS_BY_STATE)},
                jobs={(r[0], r[1]): int(r[2]) for r in await tx.rows(Q.JOBS_BY_STATE_HANDLER)},
                oldest_queued_at=oldest[0] if oldest else None,
                bytes_downloaded=int(kept[0]) if kept else 0,
                recoveries=int(recoveries[0]) if recoveries else 0,
            )

        result: Totals = await self.read(work)
        return result


def _job_params(where: JobFilter) -> dict[str, Any]:
    return {"state": where.state.value if where.state else None, "handler": where.handler,
            "task_id": where.task_id, "since": where.since, "until": where.until}


def _delivery_row(r: Row) -> DeliveryRow:
    return DeliveryRow(id=int(r[0]), delivery_id=r[1], source=Source(r[2]), scheme=r[3],
                       event=r[4], task_id=r[5], outcome=Outcome(r[6]), reason=r[7],
                       received_at=r[8], duplicates=int(r[9]), last_duplicate_at=r[10])
