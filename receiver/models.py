"""The records an event turns into: what comes in (:class:`Delivery`), what the store answers
(:class:`RecordResult`), and what it holds (:class:`Task`, :class:`Clip`, :class:`Transition`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from receiver.jobs import JobState
from receiver.payloads import Callback
from receiver.states import Entity, State


class Source(StrEnum):
    """What brought an event in: every source takes the same record path. ``confirm``: a poll
    made to confirm a callback whose body nothing authenticated (not a recovery)."""

    WEBHOOK = "webhook"
    POLL = "poll"
    REPLAY = "replay"
    CONFIRM = "confirm"


class Outcome(StrEnum):
    """What became of a delivery. ``unconfirmed``: a callback whose body nothing
    authenticated, kept with no effect until a poll of its provider agrees with it (it is
    then ``recorded``, with the poll's delivery as ``confirmed_by``) or does not
    (``contradicted``)."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"
    UNCONFIRMED = "unconfirmed"
    CONTRADICTED = "contradicted"


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One event as it arrived, verified. ``callback`` is the parsed body, or None with
    ``error`` saying why the body cannot be used (it is then kept raw as quarantined).
    ``provider`` is whose it is (:mod:`receiver.providers`); ``unconfirmed``: what
    authenticated it does not cover its body, so it is kept with no effect until a poll
    confirms it (:mod:`receiver.confirmation`)."""

    delivery_id: str
    source: Source
    scheme: str
    event: str | None
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    received_at: float
    callback: Callback | None
    error: str | None = None
    task_id_hint: str | None = None
    provider: str = "sonic"
    unconfirmed: bool = False

    def __post_init__(self) -> None:
        if (self.callback is None) == (self.error is None):
            raise ValueError("a delivery has either a callback or an error")


@dataclass(frozen=True, kw_only=True)
class Transition:
    """One state change: who moved what, when, from which delivery."""

    task_id: str
    entity: Entity
    entity_id: str
    from_state: State | None
    to_state: State
    delivery_id: str
    source: Source
    at: float


@dataclass(frozen=True, kw_only=True)
class RecordResult:
    """What recording a delivery did. For a duplicate, ``state`` is the task's state now and
    ``transitions`` is empty; for a quarantined delivery, ``reason`` says what is wrong."""

    outcome: Outcome
    delivery_id: str
    task_id: str | None
    state: State | None
    transitions: tuple[Transition, ...] = ()
    reason: str | None = None
    jobs: int = 0  # jobs created by this delivery


@dataclass(frozen=True, kw_only=True)
class Task:
    task_id: str
    state: State
    platform: str | None
    error: str | None
    first_seen_at: float
    updated_at: float
    last_event_at: float
    last_delivery_id: str | None
    task_type: str | None = None
    parent_task_id: str | None = None
    failure_category: str | None = None  # receiver.failures.FailureCategory, when failed
    overdue_at: float | None = None  # when it went past its deadline ([deadlines])
    provider: str = "sonic"  # whose task it is (receiver.providers)


@dataclass(frozen=True, kw_only=True)
class Clip:
    task_id: str
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
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class StoredDelivery:
    """A delivery as the store keeps it (for duplicates, replay and resend)."""

    delivery_id: str
    source: Source
    scheme: str
    event: str | None
    task_id: str | None
    outcome: Outcome
    reason: str | None
    received_at: float
    provider: str = "sonic"
    confirmed_by: str | None = None  # the poll delivery that confirmed an unconfirmed one


@dataclass(frozen=True, kw_only=True)
class RawDelivery:
    """A stored delivery with what it carried: for resending and re-recording."""

    stored: StoredDelivery
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class JobFilter:
    """Which jobs a replay touches; None matches anything. Times are unix seconds."""

    state: JobState | None = None
    handler: str | None = None
    task_id: str | None = None
    since: float | None = None
    until: float | None = None
    delivery_ids: frozenset[str] | None = None


@dataclass(frozen=True, kw_only=True)
class TaskView:
    """A task with its clips and its whole transition history, oldest first."""

    task: Task
    clips: tuple[Clip, ...]
    transitions: tuple[Transition, ...]


@dataclass(frozen=True, kw_only=True)
class StoredFile:
    """A file a handler wrote under the media folder, with what proves its content."""

    task_id: str
    clip_id: str
    kind: str  # audio | image | video | sidecar
    path: str
    size: int
    sha256: str
    url: str | None
    content_type: str | None
    job_key: str | None
    created_at: float


class ChildState(StrEnum):
    """A follow-up task's life on our side: ``requested`` is written before the create call,
    so a crash in between leaves a trace to reconcile instead of a second create."""

    REQUESTED = "requested"
    CREATED = "created"
    FAILED = "failed"  # the service refused it: nothing was created
    UNKNOWN = "unknown"  # the request may have reached the service: reconcile, never resend


@dataclass(frozen=True, kw_only=True)
class ChildTask:
    trigger_key: str
    parent_task_id: str
    root_task_id: str
    rule: str
    depth: int
    task_type: str
    credits: int
    request: Mapping[str, Any] = field(repr=False)
    child_task_id: str | None
    state: ChildState
    error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class Result:
    """An answer a handler kept (get-bpm, get-vox...)."""

    task_id: str
    clip_id: str
    kind: str
    data: Mapping[str, Any]
    job_key: str | None
    created_at: float


@dataclass(frozen=True, kw_only=True)
class Alert:
    """An alert the receiver raised (:mod:`receiver.alerts`): open while ``resolved_at`` is
    None. ``notified_at``: when its last firing or repeat message was queued."""

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
    resolved_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class AlertMessage:
    """A message an alert owes its targets (``kind``: firing, repeat, resolved); ``sent_to``
    holds the fingerprints of the targets that took it."""

    id: int
    alert_id: int
    kind: str
    title: str
    body: str
    created_at: float
    sent_to: tuple[str, ...]
    attempts: int
    last_error: str | None = None
    done_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class AlertChange:
    """One change a round of the alert rules makes: ``fire`` a new alert, ``repeat`` or keep
    (``seen``) an open one, ``resolve`` one that cleared; ``title`` and ``body``: the message
    it queues for the targets (none for ``seen``)."""

    kind: str
    rule: str
    subject: str
    text: str
    advice: str
    link: str | None = None
    alert_id: int | None = None
    title: str | None = None
    body: str | None = None
