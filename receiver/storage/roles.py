"""The roles the store plays, each the narrow view one kind of caller needs. One
:class:`receiver.storage.store.Store` plays them all; a caller names the role it uses, so that
what it may touch is visible in its signature.

- :class:`Ingest`: the webhook endpoint, reconcile and replay record deliveries;
- :class:`JobQueue`: the worker claims, renews and ends jobs;
- :class:`HandlerOutput`: handlers read their task and keep files, results and child tasks;
- :class:`Admin`: operators and scripts list, requeue, reconcile and prune.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from receiver.jobs import Job, JobState
from receiver.models import (
    ChildState,
    ChildTask,
    Delivery,
    JobFilter,
    Outcome,
    RawDelivery,
    RecordResult,
    Result,
    StoredFile,
    TaskView,
)
from receiver.routing import Router
from receiver.storage.admin import (
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
)
from receiver.storage.store import PruneReport


class Ingest(Protocol):
    async def record_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult: ...

    async def preview_delivery(
        self, delivery: Delivery, *, router: Router | None = None
    ) -> RecordResult: ...

    async def rerecord_quarantined(
        self, delivery: Delivery, *, router: Router | None = None, preview: bool = False
    ) -> RecordResult: ...

    async def check_writable(self) -> None: ...


class JobQueue(Protocol):
    async def claim_jobs(
        self, *, owner: str, limit: int, now: float, lease_s: float
    ) -> list[Job]: ...

    async def finish_and_claim(
        self, *, owner: str, finished: Sequence[int], limit: int, now: float, lease_s: float
    ) -> tuple[frozenset[int], list[Job]]: ...

    async def renew_lease(self, job_id: int, *, owner: str, until: float, now: float) -> bool: ...

    async def finish_job(self, job_id: int, *, owner: str, now: float) -> bool: ...

    async def retry_job(
        self, job_id: int, *, owner: str, error: str, run_after: float, now: float,
        count_attempt: bool = True,
    ) -> bool: ...

    async def kill_job(self, job_id: int, *, owner: str, error: str, now: float) -> bool: ...

    async def release_jobs(self, *, owner: str, now: float) -> int: ...

    async def next_due(self) -> float | None: ...

    async def wait_for_jobs(self, wait_s: float) -> None: ...


class HandlerOutput(Protocol):
    async def get_task(self, task_id: str) -> TaskView | None: ...

    async def list_jobs(
        self, *, state: JobState | None = None, task_id: str | None = None, limit: int = 500
    ) -> list[Job]: ...

    async def record_file(self, file: StoredFile) -> None: ...

    async def list_files(self, task_id: str) -> list[StoredFile]: ...

    async def record_result(self, result: Result) -> None: ...

    async def list_results(self, task_id: str) -> list[Result]: ...

    async def claim_child(self, child: ChildTask) -> tuple[ChildTask, bool]: ...

    async def register_task(
        self, task_id: str, *, task_type: str, now: float, router: Router | None = None
    ) -> None: ...

    async def update_child(
        self, trigger_key: str, *, state: ChildState, child_task_id: str | None = None,
        error: str | None = None, now: float, router: Router | None = None,
    ) -> ChildTask: ...

    async def child_of(self, task_id: str) -> ChildTask | None: ...

    async def list_children(self, parent_task_id: str) -> list[ChildTask]: ...

    async def credits_under(self, root_task_id: str) -> int: ...


class Admin(HandlerOutput, Ingest, Protocol):
    async def tasks_to_reconcile(
        self, *, stale_before: float | None = None, since: float | None = None,
        limit: int = 1_000_000,
    ) -> list[str]: ...

    async def raw_deliveries(
        self, *, since: float | None = None, until: float | None = None,
        task_id: str | None = None, outcome: Outcome | None = None, limit: int = 1_000_000,
    ) -> list[RawDelivery]: ...

    async def find_jobs(self, where: JobFilter, *, limit: int = 1_000_000) -> list[Job]: ...

    async def requeue_jobs(self, job_ids: Sequence[int], *, now: float) -> int: ...

    async def take_turn(self, name: str, *, owner: str, hold_s: float) -> bool: ...

    async def audit(
        self, *, actor: str, action: str, target: str | None, detail: Mapping[str, Any]
    ) -> None: ...

    async def prune(
        self, *, older_than_s: float, keep_ids_s: float, dry_run: bool = False
    ) -> PruneReport: ...

    async def counts(self) -> Mapping[str, int]: ...

    # -- the console (receiver.storage.admin)

    async def list_tasks(
        self, where: TaskFilter, *, limit: int, cursor: str | None = None
    ) -> Page[TaskRow]: ...

    async def list_deliveries(
        self, where: DeliveryFilter, *, limit: int, cursor: str | None = None
    ) -> Page[DeliveryRow]: ...

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail | None: ...

    async def list_jobs_page(
        self, where: JobFilter, *, limit: int, cursor: str | None = None
    ) -> Page[Job]: ...

    async def get_job(self, job_id: int) -> Job | None: ...

    async def job_attempts(self, job_id: int) -> list[JobAttempt]: ...

    async def count_jobs(self, where: JobFilter) -> int: ...

    async def requeue_matching(self, where: JobFilter, *, now: float) -> int: ...

    async def list_audit(self, *, limit: int, cursor: str | None = None) -> Page[AuditEntry]: ...

    async def overview(self, *, now: float, expiry_warn_s: float) -> Overview: ...

    async def totals(self, *, now: float) -> Totals: ...
