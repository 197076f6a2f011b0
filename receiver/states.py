"""State rules: how clip and task states may move, and how a task's state follows its clips.

Clips move pending → running → succeeded | failed, and only forward: an event that would move a
clip (or a task) back, or from one terminal state to the other, is recorded as a delivery but
makes no transition. The first terminal state wins.

The task state is an aggregate, recomputed after every callback and then applied with the same
forward-only rule:

1. a ``song.failed`` event for the task → ``failed``;
2. else, with no clip known → the state the event implies (``song.streaming`` → running,
   ``song.completed`` → succeeded), or ``pending`` when there is no event;
3. else, every clip terminal → ``succeeded`` if at least one clip succeeded, else ``failed``;
4. else, any clip running or terminal → ``running``;
5. else → ``pending``.

:func:`plan` applies these rules to one callback against what the store holds; it is pure:
recording (:mod:`receiver.recording`) runs it inside the transaction, on every backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookEvent(StrEnum):
    STREAMING = "song.streaming"
    COMPLETED = "song.completed"
    FAILED = "song.failed"


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED})
_RANK = {State.PENDING: 0, State.RUNNING: 1, State.SUCCEEDED: 2, State.FAILED: 2}
EVENT_STATE = {
    WebhookEvent.STREAMING: State.RUNNING,
    WebhookEvent.COMPLETED: State.SUCCEEDED,
    WebhookEvent.FAILED: State.FAILED,
}


def advances(current: State | None, new: State) -> bool:
    """Whether moving from ``current`` (None: not seen yet) to ``new`` goes forward."""
    return current is None or _RANK[new] > _RANK[current]


def refreshes(current: State | None, new: State) -> bool:
    """Whether a report of ``new`` may refresh the data of a clip in ``current``: the same
    state or a later one (a late report of an earlier state, or of the other terminal state,
    must not overwrite the final URLs)."""
    return current is None or new == current or _RANK[new] > _RANK[current]


def task_state(clips: Iterable[State], event: WebhookEvent | None) -> State:
    """The aggregate state of a task whose clips are in ``clips`` after ``event``."""
    if event is WebhookEvent.FAILED:
        return State.FAILED
    states = list(clips)
    if not states:
        return EVENT_STATE.get(event, State.PENDING) if event else State.PENDING
    if all(s in TERMINAL for s in states):
        return State.SUCCEEDED if State.SUCCEEDED in states else State.FAILED
    if any(s is not State.PENDING for s in states):
        return State.RUNNING
    return State.PENDING


class Entity(StrEnum):
    TASK = "task"
    CLIP = "clip"


@dataclass(frozen=True, kw_only=True)
class Move:
    """One state transition that a callback makes."""

    entity: Entity
    entity_id: str
    from_state: State | None
    to_state: State


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one callback changes: the clips whose data may be refreshed, the transitions, and
    the task's state afterwards."""

    refresh: frozenset[str]
    moves: tuple[Move, ...]
    task_state: State


def plan(
    *,
    task_id: str,
    task_before: State | None,
    clips_before: Mapping[str, State],
    reported: Mapping[str, State],
    event: WebhookEvent | None,
) -> Plan:
    """Apply the state rules to one callback.

    ``clips_before`` is every clip of the task the store knows; ``reported`` is every clip the
    callback reports, with the state it reports (or implies).
    """
    moves: list[Move] = []
    refresh: set[str] = set()
    clips_after = dict(clips_before)
    for clip_id, new in reported.items():
        old = clips_before.get(clip_id)
        if refreshes(old, new):
            refresh.add(clip_id)
        if advances(old, new):
            clips_after[clip_id] = new
            moves.append(Move(entity=Entity.CLIP, entity_id=clip_id, from_state=old, to_state=new))
    aggregate = task_state(clips_after.values(), event)
    final = task_before if task_before is not None else aggregate
    if advances(task_before, aggregate):
        final = aggregate
        moves.append(
            Move(entity=Entity.TASK, entity_id=task_id, from_state=task_before, to_state=aggregate)
        )
    return Plan(refresh=frozenset(refresh), moves=tuple(moves), task_state=final)
