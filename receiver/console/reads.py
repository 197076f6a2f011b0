"""What the console asks of storage, by intent: :class:`AdminReads`.

Every list is a :class:`Page` in a stable order (newest first, ties broken by id) with an opaque
cursor: the base64 of the last item's sort key. A page never repeats or skips an item that
existed when the first page was read, however many are added meanwhile (new ones sort first).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from receiver.errors import ReceiverError
from receiver.jobs import Job, JobState
from receiver.models import JobFilter, Outcome, RawDelivery, Source, Task, Transition
from receiver.states import State

T = TypeVar("T")
MAX_LIMIT = 500


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
    row: DeliveryRow
    raw: RawDelivery
    transitions: tuple[Transition, ...]


@dataclass(frozen=True, kw_only=True)
class JobAttempt:
    """One run of a job that did not succeed (or the last one that did)."""

    job_id: int
    attempt: int
    outcome: str  # done | retrying | dead
    error: str | None
    at: float


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Overview:
    """The numbers the dashboard's first page shows, at ``now``."""

    now: float
    deliveries_per_minute: tuple[tuple[float, int], ...]  # (minute start, count), last hour
    outcomes: Mapping[str, int]
    tasks_by_state: Mapping[str, int]
    jobs_by_state: Mapping[str, int]
    oldest_queued_at: float | None
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


class AdminReads(Protocol):
    """The administration role: reads for the console and the few writes its actions make."""

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

    async def job_attempts(self, job_id: int) -> list[JobAttempt]:
        """Every finished attempt of a job, oldest first."""
        ...

    async def count_jobs(self, where: JobFilter) -> int: ...

    async def requeue_matching(self, where: JobFilter, *, now: float) -> int:
        """Queue again every finished (done or dead) job matching ``where``, in one
        transaction, attempts reset; returns how many. Idempotent: a second call finds them
        queued and changes nothing."""
        ...

    async def write_audit(
        self, *, at: float, actor: str, action: str, target: str, detail: Mapping[str, Any]
    ) -> int: ...

    async def list_audit(self, *, limit: int, cursor: str | None = None) -> Page[AuditEntry]: ...

    async def overview(self, *, now: float, expiry_warn_s: float) -> Overview: ...

    async def totals(self) -> Totals: ...


JOB_STATES = tuple(s.value for s in JobState)
