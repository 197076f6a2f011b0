""":class:`AdminReads` over the SQLite store's file, with its statements by name.

Provisional: it reads the store's tables with its own statements until the storage package
takes these queries into its shared logic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from receiver.console.reads import (
    AuditEntry,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryRow,
    JobAttempt,
    Overview,
    Page,
    TaskFilter,
    TaskRow,
    Totals,
    decode_cursor,
    encode_cursor,
)
from receiver.jobs import Job, JobState
from receiver.models import JobFilter, Outcome, RawDelivery, Source, StoredDelivery, Task
from receiver.states import State
from receiver.store import SQLiteStore, _job, _transition

AUDIT_TABLE = """
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
)
"""

TASK_COLUMNS = """t.task_id, t.state, t.platform, t.error, t.first_seen_at, t.updated_at,
t.last_event_at, t.last_delivery_id, t.task_type, t.parent_task_id,
(SELECT c.title FROM clips c WHERE c.task_id = t.task_id ORDER BY c.created_at, c.clip_id
 LIMIT 1),
(SELECT COUNT(*) FROM clips c WHERE c.task_id = t.task_id)"""
DELIVERY_COLUMNS = """id, delivery_id, source, scheme, event, task_id, outcome, reason,
received_at"""
JOB_COLUMNS = """id, key, handler, route, options, task_id, trigger, delivery_id, state, attempts,
max_attempts, run_after, lease_owner, lease_expires_at, last_error, created_at, updated_at"""

STATEMENTS = {
    "list_tasks": f"SELECT {TASK_COLUMNS} FROM tasks t WHERE {{where}} "
    "ORDER BY t.first_seen_at DESC, t.task_id DESC LIMIT :limit",
    "list_deliveries": f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {{where}} "
    "ORDER BY id DESC LIMIT :limit",
    "get_delivery": f"SELECT {DELIVERY_COLUMNS}, headers, body FROM deliveries "
    "WHERE delivery_id = :delivery_id",
    "delivery_transitions": "SELECT task_id, entity, entity_id, from_state, to_state, "
    "delivery_id, source, at FROM transitions WHERE delivery_id = :delivery_id ORDER BY id",
    "list_jobs": f"SELECT {JOB_COLUMNS} FROM jobs WHERE {{where}} ORDER BY id DESC LIMIT :limit",
    "get_job": f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id",
    "count_jobs": "SELECT COUNT(*) FROM jobs WHERE {where}",
    "requeue_matching": "UPDATE jobs SET state = 'queued', attempts = 0, run_after = :now, "
    "last_error = NULL, updated_at = :now WHERE {where} AND state IN ('dead', 'done')",
    "insert_audit": "INSERT INTO audit (at, actor, action, target, detail) "
    "VALUES (:at, :actor, :action, :target, :detail) RETURNING id",
    "list_audit": "SELECT id, at, actor, action, target, detail FROM audit WHERE {where} "
    "ORDER BY id DESC LIMIT :limit",
    "per_minute": "SELECT CAST(received_at / 60 AS INTEGER) AS minute, COUNT(*) FROM deliveries "
    "WHERE received_at >= :since GROUP BY minute ORDER BY minute",
    "outcomes": "SELECT outcome, COUNT(*) FROM deliveries GROUP BY outcome",
    "tasks_by_state": "SELECT state, COUNT(*) FROM tasks GROUP BY state",
    "jobs_by_state": "SELECT state, COUNT(*) FROM jobs GROUP BY state",
    "oldest_queued": "SELECT MIN(created_at) FROM jobs WHERE state IN ('queued', 'retrying')",
    "pending_downloads": "SELECT COUNT(*), COALESCE(SUM(CASE WHEN created_at < :warn_before "
    "THEN 1 ELSE 0 END), 0) FROM jobs WHERE handler = 'download_audio' "
    "AND state IN ('queued', 'running', 'retrying')",
    "deliveries_by_outcome_scheme": "SELECT outcome, scheme, COUNT(*) FROM deliveries "
    "GROUP BY outcome, scheme",
    "transitions_by_state": "SELECT entity, to_state, COUNT(*) FROM transitions "
    "GROUP BY entity, to_state",
    "jobs_by_state_handler": "SELECT state, handler, COUNT(*) FROM jobs GROUP BY state, handler",
    "bytes_downloaded": "SELECT COALESCE(SUM(size), 0) FROM files",
    "recoveries": "SELECT COUNT(*) FROM transitions WHERE entity = 'task' AND source = 'poll'",
}


def _job_where(where: JobFilter, params: dict[str, Any]) -> str:
    clauses = ["1 = 1"]
    for column, value in (("state", where.state.value if where.state else None),
                          ("handler", where.handler), ("task_id", where.task_id)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if where.since is not None:
        clauses.append("created_at >= :since")
        params["since"] = where.since
    if where.until is not None:
        clauses.append("created_at < :until")
        params["until"] = where.until
    return " AND ".join(clauses)


class SQLiteAdminReads:
    """The console's reads on an open :class:`SQLiteStore`."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._ready = False

    async def _fetch(self, name: str, params: Mapping[str, Any], where: str = "") -> list[Any]:
        await self._prepare()
        statement = STATEMENTS[name].format(where=where or "1 = 1")
        return await self.store._fetch(statement, dict(params))

    async def _prepare(self) -> None:
        if not self._ready:
            await self.store._write(AUDIT_TABLE)
            self._ready = True

    async def list_tasks(
        self, where: TaskFilter, *, limit: int, cursor: str | None = None
    ) -> Page[TaskRow]:
        params: dict[str, Any] = {"limit": limit + 1}
        clauses = ["1 = 1"]
        for column, value in (("t.state", where.state.value if where.state else None),
                              ("t.task_type", where.task_type),
                              ("t.parent_task_id", where.parent)):
            if value is not None:
                name = column.removeprefix("t.")
                clauses.append(f"{column} = :{name}")
                params[name] = value
        if where.since is not None:
            clauses.append("t.first_seen_at >= :since")
            params["since"] = where.since
        if where.until is not None:
            clauses.append("t.first_seen_at < :until")
            params["until"] = where.until
        if where.text:
            clauses.append("EXISTS (SELECT 1 FROM clips c WHERE c.task_id = t.task_id "
                           "AND LOWER(c.title) LIKE :text)")
            params["text"] = f"%{where.text.lower()}%"
        if where.tag:
            clauses.append("EXISTS (SELECT 1 FROM clips c WHERE c.task_id = t.task_id "
                           "AND LOWER(c.tags) LIKE :tag)")
            params["tag"] = f"%{where.tag.lower()}%"
        key = decode_cursor(cursor, 2)
        if key is not None:
            clauses.append("(t.first_seen_at < :c_at OR "
                           "(t.first_seen_at = :c_at AND t.task_id < :c_id))")
            params["c_at"], params["c_id"] = key
        rows = await self._fetch("list_tasks", params, " AND ".join(clauses))
        items = [
            TaskRow(
                task=Task(task_id=r[0], state=State(r[1]), platform=r[2], error=r[3],
                          first_seen_at=r[4], updated_at=r[5], last_event_at=r[6],
                          last_delivery_id=r[7], task_type=r[8], parent_task_id=r[9]),
                title=r[10], clips=int(r[11]),
            )
            for r in rows[:limit]
        ]
        more = len(rows) > limit
        last = items[-1].task if items else None
        return Page(items=tuple(items), next_cursor=encode_cursor(
            [last.first_seen_at, last.task_id]) if more and last else None)

    async def list_deliveries(
        self, where: DeliveryFilter, *, limit: int, cursor: str | None = None
    ) -> Page[DeliveryRow]:
        params: dict[str, Any] = {"limit": limit + 1}
        clauses = ["1 = 1"]
        if where.outcome is Outcome.DUPLICATE:
            clauses.append("0 = 1")  # repeats are not counted by this store yet
        elif where.outcome is not None:
            clauses.append("outcome = :outcome")
            params["outcome"] = where.outcome.value
        for column, value in (("event", where.event), ("task_id", where.task_id),
                              ("source", where.source.value if where.source else None)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if where.since is not None:
            clauses.append("received_at >= :since")
            params["since"] = where.since
        key = decode_cursor(cursor, 1)
        if key is not None:
            clauses.append("id < :c_id")
            params["c_id"] = key[0]
        rows = await self._fetch("list_deliveries", params, " AND ".join(clauses))
        items = [_delivery_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=tuple(items),
                    next_cursor=encode_cursor([items[-1].id]) if more and items else None)

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail | None:
        rows = await self._fetch("get_delivery", {"delivery_id": delivery_id})
        if not rows:
            return None
        r = rows[0]
        row = _delivery_row(r)
        raw = RawDelivery(
            stored=StoredDelivery(delivery_id=row.delivery_id, source=row.source,
                                  scheme=row.scheme, event=row.event, task_id=row.task_id,
                                  outcome=row.outcome, reason=row.reason,
                                  received_at=row.received_at),
            headers=json.loads(r[9]), body=bytes(r[10]),
        )
        transitions = await self._fetch("delivery_transitions", {"delivery_id": delivery_id})
        return DeliveryDetail(row=row, raw=raw,
                              transitions=tuple(_transition(t) for t in transitions))

    async def list_jobs_page(
        self, where: JobFilter, *, limit: int, cursor: str | None = None
    ) -> Page[Job]:
        params: dict[str, Any] = {"limit": limit + 1}
        clause = _job_where(where, params)
        key = decode_cursor(cursor, 1)
        if key is not None:
            clause += " AND id < :c_id"
            params["c_id"] = key[0]
        rows = await self._fetch("list_jobs", params, clause)
        items = [_job(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=tuple(items),
                    next_cursor=encode_cursor([items[-1].id]) if more and items else None)

    async def get_job(self, job_id: int) -> Job | None:
        rows = await self._fetch("get_job", {"id": job_id})
        return _job(rows[0]) if rows else None

    async def job_attempts(self, job_id: int) -> list[JobAttempt]:
        # Only the last error is kept by this store: one attempt stands for all of them.
        job = await self.get_job(job_id)
        if job is None or job.last_error is None:
            return []
        outcome = "dead" if job.state is JobState.DEAD else "retrying"
        return [JobAttempt(job_id=job.id, attempt=job.attempts, outcome=outcome,
                           error=job.last_error, at=job.updated_at)]

    async def count_jobs(self, where: JobFilter) -> int:
        params: dict[str, Any] = {}
        clause = _job_where(where, params)
        rows = await self._fetch("count_jobs", params, clause)
        return int(rows[0][0])

    async def requeue_matching(self, where: JobFilter, *, now: float) -> int:
        await self._prepare()
        params: dict[str, Any] = {"now": now}
        clause = _job_where(where, params)
        return await self.store._write(STATEMENTS["requeue_matching"].format(where=clause),
                                       params)

    async def write_audit(
        self, *, at: float, actor: str, action: str, target: str, detail: Mapping[str, Any]
    ) -> int:
        await self._prepare()
        async with self.store.transaction() as tx:
            rows = list(await tx.conn.execute_fetchall(STATEMENTS["insert_audit"], {
                "at": at, "actor": actor, "action": action, "target": target,
                "detail": json.dumps(dict(detail), sort_keys=True, default=str)}))
        return int(rows[0][0])

    async def list_audit(self, *, limit: int, cursor: str | None = None) -> Page[AuditEntry]:
        params: dict[str, Any] = {"limit": limit + 1}
        clause = "1 = 1"
        key = decode_cursor(cursor, 1)
        if key is not None:
            clause = "id < :c_id"
            params["c_id"] = key[0]
        rows = await self._fetch("list_audit", params, clause)
        items = [AuditEntry(id=r[0], at=r[1], actor=r[2], action=r[3], target=r[4],
                            detail=json.loads(r[5])) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=tuple(items),
                    next_cursor=encode_cursor([items[-1].id]) if more and items else None)

    async def overview(self, *, now: float, expiry_warn_s: float) -> Overview:
        since = (int(now // 60) - 59) * 60
        minutes = dict((int(r[0]), int(r[1])) for r in await self._fetch(
            "per_minute", {"since": since}))
        per_minute = tuple((float(m * 60), minutes.get(m, 0))
                           for m in range(since // 60, since // 60 + 60))
        outcomes = _pairs(await self._fetch("outcomes", {}))
        jobs = _pairs(await self._fetch("jobs_by_state", {}))
        oldest = (await self._fetch("oldest_queued", {}))[0][0]
        pending = (await self._fetch("pending_downloads", {"warn_before": now - expiry_warn_s}))
        return Overview(
            now=now, deliveries_per_minute=per_minute, outcomes=outcomes,
            tasks_by_state=_pairs(await self._fetch("tasks_by_state", {})),
            jobs_by_state=jobs, oldest_queued_at=oldest, dead_jobs=jobs.get("dead", 0),
            quarantined=outcomes.get("quarantined", 0), duplicates=0,
            pending_downloads=int(pending[0][0]), expiring_downloads=int(pending[0][1]),
        )

    async def totals(self) -> Totals:
        deliveries = {(r[0], r[1]): int(r[2])
                      for r in await self._fetch("deliveries_by_outcome_scheme", {})}
        return Totals(
            deliveries=deliveries,
            duplicates={},
            transitions={(r[0], r[1]): int(r[2])
                         for r in await self._fetch("transitions_by_state", {})},
            jobs={(r[0], r[1]): int(r[2])
                  for r in await self._fetch("jobs_by_state_handler", {})},
            oldest_queued_at=(await self._fetch("oldest_queued", {}))[0][0],
            bytes_downloaded=int((await self._fetch("bytes_downloaded", {}))[0][0]),
            recoveries=int((await self._fetch("recoveries", {}))[0][0]),
        )


def _pairs(rows: list[Any]) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in rows}


def _delivery_row(r: Any) -> DeliveryRow:
    return DeliveryRow(id=r[0], delivery_id=r[1], source=Source(r[2]), scheme=r[3], event=r[4],
                       task_id=r[5], outcome=Outcome(r[6]), reason=r[7], received_at=r[8])
