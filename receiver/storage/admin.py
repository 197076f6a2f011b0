"""The administration role: what operators and scripts read and do. Cursor-paged lists of
tasks, deliveries, jobs and the audit log, a delivery with what it did, a job's attempts,
"every job matching a filter" (counted, then requeued in one statement), the reconcile
selection, raw deliveries for replay, turns among processes, retention, the numbers of the
overview and of ``/metrics``, and the console's sessions (open, found, touched, listed, ended:
kept here so that every process agrees on which are open).

Every list is a :class:`Page` in a stable order (newest first, ties broken by id) with an opaque
cursor: the base64 of the last item's sort key. Paging never repeats or skips a row that existed
when the first page was read, however many arrive meanwhile (new ones sort first).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from receiver.errors import ReceiverError
from receiver.jobs import AttemptOutcome, Job, JobState
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
from receiver.storage.connector import Tx
from receiver.storage.records import Row, loads, record
from receiver.storage.tasks import TaskReads, job_params

log = structlog.get_logger("receiver.storage")

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
    """One run of a job: ``outcome`` None while it runs (or when its worker died)."""

    job_id: int
    attempt: int
    owner: str
    started_at: float
    finished_at: float | None
    outcome: AttemptOutcome | None
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
    pending_downloads: int  # jobs of the download handler not finished
    expiring_downloads: int  # of those, the ones created more than ``expiry_warn_s`` ago


@dataclass(frozen=True, kw_only=True)
class Totals:
    """Cumulative counts for /metrics, computed from the database at scrape time (so they are
    right however many processes write)."""

    deliveries: Mapping[tuple[str, str, str], int]  # (outcome, scheme, provider) -> n
    duplicates: Mapping[tuple[str, str], int]  # (scheme, provider) -> repeats received
    transitions: Mapping[tuple[str, str], int]  # (entity, to_state) -> n
    jobs: Mapping[tuple[str, str], int]  # (state, handler) -> n
    oldest_queued_at: float | None
    bytes_downloaded: int
    recoveries: int  # task transitions recorded from a poll (reconciliation)
    # (category, provider) -> n
    failed_by_category: Mapping[tuple[str, str], int] = field(default_factory=dict)
    overdue: int = 0  # open tasks past their deadline
    alerts: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # rule -> fired, open


@dataclass(frozen=True, kw_only=True)
class ConsoleSession:
    """A console login kept in the store: the cookie carries a secret whose hash is
    ``secret_hash``; ``token_hash`` ties it to the token it was opened with."""

    id: int
    operator: str
    token_hash: str
    created_at: float
    seen_at: float
    expires_at: float
    client: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, kw_only=True)
class PruneReport:
    """What retention removed (or, in a dry run, would remove)."""

    bodies: int
    jobs: int
    delivery_ids: int
    dry_run: bool


class Admin(TaskReads):
    """What operators and scripts read and do."""

    # -- replay and the schedules ------------------------------------------------------------

    async def tasks_to_reconcile(
        self, *, stale_before: float | None = None, since: float | None = None,
        limit: int = 1_000_000,
    ) -> list[str]:
        """Tasks not yet terminal whose last event is older than ``stale_before``, or every
        task first seen at or after ``since``."""

        async def work(tx: Tx) -> list[str]:
            found: list[str] = []
            if stale_before is not None:
                found += [r["task_id"] for r in await tx.rows(
                    "stale_tasks", {"before": stale_before, "limit": limit})]
            if since is not None:
                found += [r["task_id"] for r in await tx.rows(
                    "tasks_since", {"since": since, "limit": limit})]
            return found

        return list(dict.fromkeys(await self.db.read(work)))[:limit]

    async def raw_deliveries(
        self, *, since: float | None = None, until: float | None = None,
        task_id: str | None = None, outcome: Outcome | None = None, limit: int = 1_000_000,
    ) -> list[RawDelivery]:
        """Stored deliveries with their headers and bodies (pruned ones left out), oldest
        first."""
        params = {"since": since, "until": until, "task_id": task_id,
                  "outcome": outcome.value if outcome else None, "limit": limit}
        rows = await self.db.read(lambda tx: tx.rows("raw_deliveries", params))
        return [_raw(r) for r in rows]

    async def find_jobs(self, where: JobFilter, *, limit: int = 1_000_000) -> list[Job]:
        """The newest ``limit`` jobs matching ``where``, oldest first."""
        rows = await self.db.read(lambda tx: tx.rows("find_jobs", job_params(where, limit=limit)))
        return [record(Job, r) for r in reversed(rows)]

    async def requeue_jobs(self, job_ids: Sequence[int], *, now: float) -> int:
        """Queue finished (done or dead) jobs again, attempts reset; returns how many."""

        async def work(tx: Tx) -> int:
            changed = 0
            for start in range(0, len(job_ids), _CHUNK):
                chunk = [int(i) for i in job_ids[start:start + _CHUNK]]
                changed += await tx.run("requeue_jobs", {"ids": json.dumps(chunk), "now": now})
            if changed:
                tx.jobs_written()
            return changed

        return await self.db.write(work)

    async def take_turn(self, name: str, *, owner: str, hold_s: float) -> bool:
        """Whether ``owner`` has the turn at ``name`` for the next ``hold_s`` seconds: among
        several processes running the same schedule (reconcile, prune), one does each round."""
        now = self.db.clock.now()
        params = {"name": name, "owner": owner, "until": now + hold_s, "now": now}
        return await self.db.write(lambda tx: tx.run("take_turn", params)) == 1

    async def release_turn(self, name: str, *, owner: str) -> None:
        """Give back ``owner``'s turn at ``name`` (it is stopping): the next asker takes it."""
        await self.db.write(lambda tx: tx.run("release_turn", {"name": name, "owner": owner}))

    async def audit(
        self, *, actor: str, action: str, target: str | None, detail: Mapping[str, Any]
    ) -> None:
        """Keep who did what to what, and when (operators' actions)."""
        params = {"at": self.db.clock.now(), "actor": actor, "action": action, "target": target,
                  "detail": json.dumps(dict(detail), sort_keys=True, default=str)}
        await self.db.write(lambda tx: tx.run("insert_audit", params))

    async def prune(
        self, *, older_than_s: float, keep_ids_s: float, dry_run: bool = False
    ) -> PruneReport:
        """Retention: raw bodies of deliveries of finished tasks, and finished jobs (with their
        attempts), older than ``older_than_s``; the delivery rows themselves (the ids that
        deduplication needs) only after ``keep_ids_s``. Alert messages sent (or given up)
        before it go too. Tasks, clips, transitions, files, results, quarantined deliveries and
        the alerts themselves are kept."""
        if keep_ids_s < older_than_s:
            raise ValueError("delivery ids must be kept at least as long as bodies")
        now = self.db.clock.now()
        before, ids_before = now - older_than_s, now - keep_ids_s

        async def count(tx: Tx) -> PruneReport:
            async def n(statement: str, horizon: float) -> int:
                row = await tx.one(statement, {"before": horizon})
                return int(row["n"]) if row is not None else 0

            return PruneReport(bodies=await n("count_prunable_bodies", before),
                               jobs=await n("count_prunable_jobs", before),
                               delivery_ids=await n("count_prunable_ids", ids_before),
                               dry_run=True)

        if dry_run:
            return await self.db.read(count)

        async def work(tx: Tx) -> PruneReport:
            bodies = await tx.run("prune_bodies", {"before": before, "now": now, "empty": b""})
            await tx.run("prune_attempts", {"before": before})
            jobs = await tx.run("prune_jobs", {"before": before})
            ids = await tx.run("prune_ids", {"before": ids_before})
            await tx.run("prune_alert_messages", {"before": before})
            return PruneReport(bodies=bodies, jobs=jobs, delivery_ids=ids, dry_run=False)

        report = await self.db.write(work)
        log.info("store_pruned", bodies=report.bodies, jobs=report.jobs,
                 delivery_ids=report.delivery_ids)
        return report

    async def counts(self) -> Mapping[str, int]:
        """Row counts by table (operations and tests)."""
        row = await self.db.read(lambda tx: tx.one("row_counts"))
        return {table: int(row[table]) if row is not None else 0 for table in TABLES}

    # -- the console -------------------------------------------------------------------------

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
        rows = await self.db.read(lambda tx: tx.rows("list_tasks", params))
        items = [TaskRow(task=record(Task, r), title=r["title"], clips=int(r["clips"]))
                 for r in rows[:limit]]
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
        rows = await self.db.read(lambda tx: tx.rows("list_deliveries", params))
        items = [record(DeliveryRow, r) for r in rows[:limit]]
        return Page(items=tuple(items), next_cursor=encode_cursor([items[-1].id])
                    if items and len(rows) > limit else None)

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail | None:
        async def work(tx: Tx) -> DeliveryDetail | None:
            r = await tx.one("get_delivery", {"delivery_id": delivery_id})
            if r is None:
                return None
            row = record(DeliveryRow, r)
            transitions = await tx.rows("delivery_transitions", {
                "delivery_id": delivery_id, "task_id": row.task_id}) if row.task_id else []
            return DeliveryDetail(row=row, raw=_raw(r), pruned_at=r["pruned_at"],
                                  transitions=tuple(record(Transition, t) for t in transitions))

        return await self.db.read(work)

    async def list_jobs_page(
        self, where: JobFilter, *, limit: int, cursor: str | None = None
    ) -> Page[Job]:
        key = decode_cursor(cursor, 1)
        params = job_params(where, limit=limit + 1, cursor=int(key[0]) if key else None)
        rows = await self.db.read(lambda tx: tx.rows("find_jobs", params))
        items = [record(Job, r) for r in rows[:limit]]
        return Page(items=tuple(items), next_cursor=encode_cursor([items[-1].id])
                    if items and len(rows) > limit else None)

    async def get_job(self, job_id: int) -> Job | None:
        row = await self.db.read(lambda tx: tx.one("get_job", {"id": job_id}))
        return record(Job, row) if row is not None else None

    async def job_attempts(self, job_id: int) -> list[JobAttempt]:
        """Every attempt of a job, oldest first."""
        rows = await self.db.read(lambda tx: tx.rows("job_attempts", {"job_id": job_id}))
        return [record(JobAttempt, r) for r in rows]

    async def count_jobs(self, where: JobFilter) -> int:
        params = _filter_params(where)
        row = await self.db.read(lambda tx: tx.one("count_matching_jobs", params))
        return int(row["n"]) if row is not None else 0

    async def requeue_matching(self, where: JobFilter, *, now: float) -> int:
        """Queue again every finished (done or dead) job matching ``where``, in one statement,
        attempts reset; returns how many. A second call finds them queued: it changes
        nothing."""
        params = {**_filter_params(where), "now": now}

        async def work(tx: Tx) -> int:
            changed = await tx.run("requeue_matching", params)
            if changed:
                tx.jobs_written()
            return changed

        return await self.db.write(work)

    async def list_audit(self, *, limit: int, cursor: str | None = None) -> Page[AuditEntry]:
        key = decode_cursor(cursor, 1)
        params = {"c_id": int(key[0]) if key else None, "limit": limit + 1}
        rows = await self.db.read(lambda tx: tx.rows("list_audit", params))
        items = [record(AuditEntry, r) for r in rows[:limit]]
        return Page(items=tuple(items), next_cursor=encode_cursor([items[-1].id])
                    if items and len(rows) > limit else None)

    async def overview(self, *, now: float, expiry_warn_s: float,
                       download_handler: str) -> Overview:
        """The overview's numbers at ``now``: deliveries a minute over the last hour, and jobs
        of ``download_handler`` still unfinished after ``expiry_warn_s`` (their links may
        expire)."""
        first = int(now // 60) - 59

        async def work(tx: Tx) -> Overview:
            minutes = {int(r["minute"]): int(r["n"]) for r in await tx.rows(
                "deliveries_per_minute", {"since": first * 60})}
            outcomes: dict[str, int] = {}
            duplicates = 0
            for r in await tx.rows("deliveries_by_outcome"):
                outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + int(r["n"])
                duplicates += int(r["repeats"])
            jobs: dict[str, int] = {}
            for r in await tx.rows("jobs_by_state_handler"):
                jobs[r["state"]] = jobs.get(r["state"], 0) + int(r["n"])
            oldest = await tx.one("oldest_queued", {"now": now})
            pending = await tx.one("pending_jobs", {"warn_before": now - expiry_warn_s,
                                                    "handler": download_handler})
            return Overview(
                now=now,
                deliveries_per_minute=tuple((float(m * 60), minutes.get(m, 0))
                                            for m in range(first, first + 60)),
                outcomes=outcomes,
                tasks_by_state={r["state"]: int(r["n"])
                                for r in await tx.rows("tasks_by_state")},
                jobs_by_state=jobs, oldest_queued_at=oldest["due"] if oldest else None,
                dead_jobs=jobs.get(JobState.DEAD.value, 0),
                quarantined=outcomes.get(Outcome.QUARANTINED.value, 0),
                duplicates=duplicates,
                pending_downloads=int(pending["n"]) if pending else 0,
                expiring_downloads=int(pending["old"]) if pending else 0,
            )

        return await self.db.read(work)

    async def totals(self, *, now: float) -> Totals:
        """Cumulative counts for ``/metrics``, from the database at scrape time ``now``."""

        async def work(tx: Tx) -> Totals:
            deliveries: dict[tuple[str, str, str], int] = {}
            duplicates: dict[tuple[str, str], int] = {}
            for r in await tx.rows("deliveries_by_outcome"):
                deliveries[(r["outcome"], r["scheme"], r["provider"])] = int(r["n"])
                key = (r["scheme"], r["provider"])
                duplicates[key] = duplicates.get(key, 0) + int(r["repeats"])
            oldest = await tx.one("oldest_queued", {"now": now})
            kept = await tx.one("bytes_kept")
            recoveries = await tx.one("recoveries")
            overdue = await tx.one("overdue_open")
            return Totals(
                deliveries=deliveries, duplicates=duplicates,
                transitions={(r["entity"], r["to_state"]): int(r["n"])
                             for r in await tx.rows("transitions_by_state")},
                jobs={(r["state"], r["handler"]): int(r["n"])
                      for r in await tx.rows("jobs_by_state_handler")},
                oldest_queued_at=oldest["due"] if oldest else None,
                bytes_downloaded=int(kept["n"]) if kept else 0,
                recoveries=int(recoveries["n"]) if recoveries else 0,
                failed_by_category={(r["category"], r["provider"]): int(r["n"])
                                    for r in await tx.rows("failed_by_category")},
                overdue=int(overdue["n"]) if overdue else 0,
                alerts={r["rule"]: (int(r["fired"]), int(r["active"] or 0))
                        for r in await tx.rows("alerts_by_rule")},
            )

        return await self.db.read(work)


    # -- what the console's rows show of other tasks ------------------------------------------

    async def titles_of(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """Each task's clip titles, in its clips' order, repeats left out."""
        if not task_ids:
            return {}
        rows = await self.db.read(lambda tx: tx.rows(
            "titles_of_tasks", {"task_ids": json.dumps(list(task_ids))}))
        found: dict[str, list[str]] = {}
        for r in rows:
            titles = found.setdefault(r["task_id"], [])
            if r["title"] not in titles:
                titles.append(r["title"])
        return found

    async def states_of(self, task_ids: Sequence[str]) -> dict[str, State]:
        """The state of each task of ``task_ids`` this receiver knows."""
        if not task_ids:
            return {}
        rows = await self.db.read(lambda tx: tx.rows(
            "states_of_tasks", {"task_ids": json.dumps(list(task_ids))}))
        return {r["task_id"]: State(r["state"]) for r in rows}

    # -- the console's sessions -----------------------------------------------------------

    async def open_session(self, *, secret_hash: str, operator: str, token_hash: str,
                           now: float, max_s: float, client: str | None,
                           user_agent: str | None) -> None:
        """Keep a new session (and forget sessions over for a week)."""

        async def work(tx: Tx) -> None:
            await tx.run("forget_sessions", {"before": now - SESSION_MEMORY_S})
            await tx.run("insert_session", {
                "secret_hash": secret_hash, "operator": operator, "token_hash": token_hash,
                "now": now, "expires_at": now + max_s, "client": client,
                "user_agent": (user_agent or "")[:300] or None})

        await self.db.write(work)

    async def find_session(self, secret_hash: str, *, now: float,
                           idle_s: float) -> ConsoleSession | None:
        """The open session whose cookie's secret hashes to ``secret_hash``, or None."""
        row = await self.db.read(lambda tx: tx.one("find_session", {
            "secret_hash": secret_hash, "now": now, "idle_before": now - idle_s}))
        return record(ConsoleSession, row) if row is not None else None

    async def touch_session(self, session_id: int, *, now: float) -> None:
        """The session was used at ``now`` (its idle limit counts from here)."""
        await self.db.write(lambda tx: tx.run("touch_session", {"id": session_id, "now": now}))

    async def end_session(self, session_id: int, *, now: float, by: str) -> bool:
        """End a session (logout, or an operator ending it); whether it was open."""
        changed = await self.db.write(lambda tx: tx.run(
            "end_session", {"id": session_id, "now": now, "ended_by": by}))
        return changed == 1

    async def list_sessions(self, *, now: float, idle_s: float,
                            limit: int = MAX_LIMIT) -> list[ConsoleSession]:
        """The open sessions, the most recently used first."""
        rows = await self.db.read(lambda tx: tx.rows("list_sessions", {
            "now": now, "idle_before": now - idle_s, "limit": limit}))
        return [record(ConsoleSession, r) for r in rows]


SESSION_MEMORY_S = 7 * 86400.0  # how long a session's row outlives its end
TABLES = ("deliveries", "tasks", "clips", "transitions", "jobs", "files", "children")
_CHUNK = 500


def _filter_params(where: JobFilter) -> dict[str, Any]:
    return {"state": where.state.value if where.state else None, "handler": where.handler,
            "task_id": where.task_id, "since": where.since, "until": where.until}


def _raw(row: Row) -> RawDelivery:
    return RawDelivery(stored=record(StoredDelivery, row), headers=loads(row["headers"]),
                       body=bytes(row["body"]))
