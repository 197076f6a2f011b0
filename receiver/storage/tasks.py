"""The handler output role: what a task holds and what handlers leave behind.

:class:`TaskReads` reads a task with its clips and transitions, its jobs, files, results and
child tasks (handlers and the console share it); :class:`HandlerOutput` adds what handlers
write: files, results, and child tasks, each recorded before the effect it describes can be
repeated (a child before its create call).
"""

from __future__ import annotations

import json
from typing import Any

from receiver.errors import StoreError
from receiver.jobs import Job, JobState
from receiver.models import (
    ChildState,
    ChildTask,
    Clip,
    JobFilter,
    Result,
    StoredFile,
    Task,
    TaskView,
    Transition,
)
from receiver.recording import register
from receiver.routing import Router
from receiver.storage.connector import Tx
from receiver.storage.database import Database
from receiver.storage.records import record


class TaskReads:
    """A task and what became of it, as stored now."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_task(self, task_id: str) -> TaskView | None:
        """A task with its clips and transitions, or None."""

        async def work(tx: Tx) -> TaskView | None:
            row = await tx.one("get_task", {"task_id": task_id})
            if row is None:
                return None
            clips = await tx.rows("get_clips", {"task_id": task_id})
            transitions = await tx.rows("get_transitions", {"task_id": task_id})
            return TaskView(task=record(Task, row), clips=tuple(record(Clip, r) for r in clips),
                            transitions=tuple(record(Transition, r) for r in transitions))

        return await self.db.read(work)

    async def list_jobs(
        self, *, state: JobState | None = None, task_id: str | None = None, limit: int = 500
    ) -> list[Job]:
        """The newest ``limit`` jobs, oldest first."""
        rows = await self.db.read(lambda tx: tx.rows(
            "find_jobs", job_params(JobFilter(state=state, task_id=task_id), limit=limit)))
        return [record(Job, r) for r in reversed(rows)]

    async def list_files(self, task_id: str) -> list[StoredFile]:
        rows = await self.db.read(lambda tx: tx.rows("list_files", {"task_id": task_id}))
        return [record(StoredFile, r) for r in rows]

    async def list_results(self, task_id: str) -> list[Result]:
        rows = await self.db.read(lambda tx: tx.rows("list_results", {"task_id": task_id}))
        return [record(Result, r) for r in rows]

    async def child_of(self, task_id: str) -> ChildTask | None:
        """The child record that created ``task_id``, if this receiver created it."""
        row = await self.db.read(lambda tx: tx.one("child_by_task", {"task_id": task_id}))
        return record(ChildTask, row) if row is not None else None

    async def list_children(self, parent_task_id: str) -> list[ChildTask]:
        rows = await self.db.read(lambda tx: tx.rows("list_children",
                                                     {"task_id": parent_task_id}))
        return [record(ChildTask, r) for r in rows]

    async def credits_under(self, root_task_id: str) -> int:
        """Credits of every follow-up under ``root_task_id`` that was not refused."""
        row = await self.db.read(lambda tx: tx.one("credits_under_root",
                                                   {"task_id": root_task_id}))
        return int(row["credits"]) if row is not None else 0


class HandlerOutput(TaskReads):
    """What handlers keep: files, results, child tasks."""

    async def record_file(self, file: StoredFile) -> None:
        await self.db.write(lambda tx: tx.run("upsert_file", {
            "task_id": file.task_id, "clip_id": file.clip_id, "kind": file.kind,
            "path": file.path, "size": file.size, "sha256": file.sha256, "url": file.url,
            "content_type": file.content_type, "job_key": file.job_key,
            "created_at": file.created_at,
        }))

    async def record_result(self, result: Result) -> None:
        await self.db.write(lambda tx: tx.run("upsert_result", {
            "task_id": result.task_id, "clip_id": result.clip_id, "kind": result.kind,
            "data": json.dumps(dict(result.data)), "job_key": result.job_key,
            "created_at": result.created_at,
        }))

    async def claim_child(self, child: ChildTask) -> tuple[ChildTask, bool]:
        """Record a follow-up before it is created: ``(child, True)``. An existing one for the
        same trigger key is returned instead, ``(existing, False)``: never two children for
        one trigger."""

        async def work(tx: Tx) -> tuple[ChildTask, bool]:
            inserted = await tx.run("insert_child", {
                "trigger_key": child.trigger_key, "parent_task_id": child.parent_task_id,
                "root_task_id": child.root_task_id, "rule": child.rule, "depth": child.depth,
                "task_type": child.task_type, "credits": child.credits,
                "request": json.dumps(dict(child.request), sort_keys=True),
                "child_task_id": child.child_task_id, "state": child.state.value,
                "error": child.error, "created_at": child.created_at,
                "updated_at": child.updated_at,
            }) == 1
            row = await tx.one("get_child", {"trigger_key": child.trigger_key})
            if row is None:
                raise StoreError(f"child task for trigger {child.trigger_key!r} vanished")
            return record(ChildTask, row), inserted

        return await self.db.write(work)

    async def update_child(
        self, trigger_key: str, *, state: ChildState, child_task_id: str | None = None,
        error: str | None = None, now: float, router: Router | None = None,
    ) -> ChildTask:
        """Move a child on. With a ``child_task_id``, the task is registered with its type and
        parent, and the jobs its already-recorded transitions owe are written (its webhook may
        have arrived before the create call returned)."""

        async def work(tx: Tx) -> ChildTask:
            await tx.run("update_child", {"state": state.value, "child_task_id": child_task_id,
                                          "error": error, "now": now,
                                          "trigger_key": trigger_key})
            row = await tx.one("get_child", {"trigger_key": trigger_key})
            if row is None:
                raise StoreError(f"no child task for trigger {trigger_key!r}")
            child = record(ChildTask, row)
            if child_task_id is not None:
                await register(tx, child_task_id, task_type=child.task_type,
                               parent=child.parent_task_id, at=now, router=router)
            return child

        return await self.db.write(work)


def job_params(
    where: JobFilter, *, limit: int, cursor: int | None = None
) -> dict[str, Any]:
    """The parameters of ``find_jobs`` for ``where``, newest first, after ``cursor``."""
    return {
        "state": where.state.value if where.state else None, "handler": where.handler,
        "task_id": where.task_id, "since": where.since, "until": where.until,
        "delivery_ids": json.dumps(sorted(where.delivery_ids))
        if where.delivery_ids is not None else None,
        "c_id": cursor, "limit": limit,
    }

