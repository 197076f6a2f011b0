"""The JSON shapes of the operator's API, each defined once as a :class:`msgspec.Struct`.

A shape gives both what the API answers (:class:`ShapeResponse`, or :func:`builtins` for the
pages' templates) and its OpenAPI component schema (:func:`components`), so the two cannot
drift apart. A shape is filled from the storage records by field name (:meth:`Shape.of`);
where the JSON name differs from the record's field, the field is renamed (a transition's
``from`` and ``to``).

Invariants: every field is in every answer and is required in the schema (but for the optional
fields of :class:`Error`, which are left out when unset, never null); a field is ``null`` only
where its type says ``| None``; states and outcomes are their enums, so the schema lists their
values. The records stay the storage layer's; this module only reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Self

import msgspec
from starlette.responses import Response

from receiver.failures import FailureCategory
from receiver.jobs import JobState
from receiver.models import ChildState, Outcome, Source
from receiver.states import Entity, State

REF_TEMPLATE = "#/components/schemas/{name}"


class Shape(msgspec.Struct, kw_only=True):
    """The base of every shape: built by keyword, encoded as soon as it is built."""

    @classmethod
    def of(cls, *records: object, **values: Any) -> Self:
        """This shape filled by field name: each field from ``values`` if given there, else
        from the first of ``records`` that has an attribute of that name. Nested shapes are
        filled the same way from nested records; a field found nowhere, or of the wrong type,
        raises :class:`msgspec.ValidationError`."""
        found: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            if name in values:
                found[name] = values[name]
                continue
            for record in records:
                if hasattr(record, name):
                    found[name] = getattr(record, name)
                    break
        return msgspec.convert(SimpleNamespace(**found), cls, from_attributes=True)


# ---- tasks, clips and what happened to them -------------------------------------------------


class Task(Shape):
    """A task as this receiver knows it."""

    task_id: str
    state: State
    platform: str | None
    error: str | None
    first_seen_at: float
    updated_at: float
    last_event_at: float
    last_delivery_id: str | None
    task_type: str | None
    parent_task_id: str | None
    failure_category: FailureCategory | None
    overdue_at: float | None


class TaskRow(Task):
    """A task as a list shows it: with its first clip's title, every clip's title (each
    once, in the clips' order) and its number of clips."""

    title: str | None
    titles: list[str]
    clips: int


class Clip(Shape):
    """A clip of a task, with the data its last accepted report carried."""

    clip_id: str
    state: State
    title: str | None
    tags: str | None
    lyrics: str | None
    audio_url: str | None
    image_url: str | None
    video_url: str | None
    duration: float | None
    mv: str | None
    created_at: str | None
    updated_at: float
    data: dict[str, Any]


class Transition(Shape):
    """One state change of a task or a clip, and the delivery that made it."""

    entity: Entity
    entity_id: str
    from_state: State | None = msgspec.field(name="from")
    to_state: State = msgspec.field(name="to")
    delivery_id: str
    source: Source
    at: float


# ---- jobs ------------------------------------------------------------------------------------


class Job(Shape):
    """One handler run owed for one transition."""

    id: int
    key: str
    handler: str
    route: str
    trigger: str
    task_id: str
    state: JobState
    attempts: int
    max_attempts: int
    run_after: float
    last_error: str | None
    created_at: float
    updated_at: float


class Attempt(Shape):
    """One run of a job: ``outcome`` is null while it runs."""

    attempt: int
    owner: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    error: str | None


class JobDetail(Job):
    """A job with every attempt, oldest first."""

    attempt_log: list[Attempt]


class JobFilter(Shape):
    """Which jobs a bulk retry matched; null matches anything, times are unix seconds."""

    state: JobState | None
    handler: str | None
    task_id: str | None
    since: float | None
    until: float | None


# ---- what handlers left -----------------------------------------------------------------------


class File(Shape):
    """A file a handler kept, with what proves its content."""

    clip_id: str
    kind: str
    path: str
    size: int
    sha256: str
    url: str | None
    content_type: str | None


class Child(Shape):
    """A follow-up task made by a rule (``child_task_id`` is null until it is created)."""

    child_task_id: str | None
    rule: str
    task_type: str
    depth: int
    credits: int
    state: ChildState
    error: str | None
    root_task_id: str


class Descendant(Child):
    """A follow-up under a task, ``level`` 1 being its child; ``task_state`` is the state of
    the follow-up task itself (null until it is created or while this receiver has not heard
    of it), ``state`` that of its creation."""

    level: int
    task_state: State | None


class Result(Shape):
    """An answer a handler kept (get-bpm, get-vox...)."""

    clip_id: str
    kind: str
    data: dict[str, Any]


class ChainLink(Shape):
    """A parent of a task, up to the root; null where it is not known here."""

    task_id: str
    task_type: str | None
    state: State | None
    rule: str | None
    credits: int | None


class TaskDetail(Shape):
    """A task as ``GET /tasks/{task_id}`` shows it: its clips and transitions, its jobs, files
    and results, its children, and its chain (the parents up to the root, oldest first)."""

    task: Task
    clips: list[Clip]
    transitions: list[Transition]
    jobs: list[Job]
    files: list[File]
    children: list[Child]
    results: list[Result]
    parents: list[ChainLink]
    descendants: list[Descendant]
    created_by: Child | None
    root_task_id: str
    credits_under_root: int


# ---- deliveries and the audit log --------------------------------------------------------------


class Delivery(Shape):
    """A stored delivery, with how often a copy of it came again (``duplicates``)."""

    delivery_id: str
    source: Source
    scheme: str
    event: str | None
    task_id: str | None
    outcome: Outcome
    reason: str | None
    received_at: float
    duplicates: int
    last_duplicate_at: float | None


class DeliveryDetail(Delivery):
    """A delivery with its kept headers, its raw body (as text, and parsed when it is JSON,
    else null), when retention emptied it, and the transitions it made."""

    headers: dict[str, str]
    body: str
    body_json: Any
    pruned_at: float | None
    transitions: list[Transition]


class Session(Shape):
    """An open console session: whose, since when, last used when, and from where (the
    address and browser it logged in from); never its secret."""

    id: int
    operator: str
    created_at: float
    seen_at: float
    expires_at: float
    client: str | None
    user_agent: str | None


class Audit(Shape):
    """An operator's action: who, when, what, and what it did."""

    id: int
    at: float
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]


class Alert(Shape):
    """An alert the receiver raised (receiver.alerts): what holds, what to do, where the
    console shows it; ``resolved_at`` null while it holds."""

    id: int
    rule: str
    subject: str
    text: str
    advice: str
    link: str | None
    fired_at: float
    seen_at: float
    notified_at: float
    repeats: int
    resolved_at: float | None


# ---- pages and errors ------------------------------------------------------------------------


class TaskPage(Shape):
    """A page of tasks; pass ``next_cursor`` back as ``cursor`` for the next (null: the last)."""

    items: list[TaskRow]
    next_cursor: str | None


class DeliveryPage(Shape):
    """A page of deliveries; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[Delivery]
    next_cursor: str | None


class JobPage(Shape):
    """A page of jobs; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[Job]
    next_cursor: str | None


class AuditPage(Shape):
    """A page of the audit log; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[Audit]
    next_cursor: str | None


class AlertPage(Shape):
    """A page of alerts, newest first; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[Alert]
    next_cursor: str | None


class SessionPage(Shape):
    """The open console sessions, the most recently used first (``next_cursor`` is always
    null: they fit in one page)."""

    items: list[Session]
    next_cursor: str | None


class Error(Shape):
    """An error, named by ``error``; the other fields are present only when they say more."""

    error: str
    message: str | msgspec.UnsetType = msgspec.UNSET
    reason: str | msgspec.UnsetType = msgspec.UNSET
    limit: int | msgspec.UnsetType = msgspec.UNSET


SHAPES: Sequence[type[Shape]] = (
    Error, Task, TaskRow, Clip, Transition, Job, Attempt, JobDetail, JobFilter, File, Child,
    Descendant, Result, ChainLink, TaskDetail, Delivery, DeliveryDetail, Audit, Alert,
    Session, TaskPage, DeliveryPage, JobPage, AuditPage, AlertPage, SessionPage,
)


def components() -> dict[str, Any]:
    """The JSON Schema of every shape (and of the enums they use), by name, for
    ``components/schemas`` of an OpenAPI 3.1 document."""
    _, schemas = msgspec.json.schema_components(SHAPES, ref_template=REF_TEMPLATE)
    return schemas


def builtins(shape: Shape) -> Any:
    """The shape as JSON values (dicts, lists, strings...), keyed by the JSON names."""
    return msgspec.to_builtins(shape)


class ShapeResponse(Response):
    """A shape answered as JSON."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)
