"""Recording a delivery: the one algorithm every source (webhook, poll, replay) goes through,
written once against a narrow :class:`Transaction`, so that every backend shares the
idempotency and state rules.

Inside one transaction:

1. the delivery is inserted first, keyed by its id: an id seen before inserts nothing and
   answers ``duplicate`` (or the earlier quarantine), and nothing changes;
2. an unusable body, or a task that cannot be named, is kept raw as ``quarantined`` with the
   reason;
3. else the task is locked, its state and its clips' states read (one statement), the task and
   the clips it reports upserted, each state transition that :func:`receiver.states.plan`
   allows written, and with a router, one job per handler of every route the task
   transitions match (a job key seen before is skipped).

A new delivery costs five statements (insert, lock, read, upserts, transitions) plus its
jobs; the facts that routes can narrow on are read only when some route narrows on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from receiver.jobs import JobSpec
from receiver.models import Delivery, Outcome, RecordResult, StoredDelivery, Transition
from receiver.payloads import ClipReport
from receiver.routing import Router, TaskFacts
from receiver.states import Entity, State, plan

UNKNOWN_TASK = "no task_id in the body or ?task_id=, and none of its clips is known"


@dataclass(frozen=True)
class TaskBefore:
    """A task's state and its clips' states before a recording (None: a new task)."""

    state: State | None
    clips: Mapping[str, State]


class Transaction(Protocol):
    """The primitive reads and writes recording needs, all inside one open transaction."""

    async def find_delivery(self, delivery_id: str) -> StoredDelivery | None: ...

    async def insert_delivery(
        self, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
    ) -> bool:
        """Keep the delivery; False when its id is kept already (recorded before, or by
        another process meanwhile, whose commit this insert waited for), and nothing is
        written."""
        ...

    async def task_for_clips(self, clip_ids: Sequence[str]) -> str | None: ...

    async def lock_task(self, task_id: str) -> None:
        """Hold ``task_id`` until the transaction ends: another transaction recording the same
        task (another web process) waits until this one commits, so that the task and clip
        states read next are the latest, never a state a concurrent commit has moved on from."""
        ...

    async def task_state(self, task_id: str) -> State | None: ...

    async def task_before(self, task_id: str) -> TaskBefore:
        """The task's state and its clips' states, in one read."""
        ...

    async def upsert_task(
        self,
        task_id: str,
        *,
        state: State,
        platform: str | None,
        error: str | None,
        delivery_id: str,
        at: float,
    ) -> None: ...

    async def upsert_clips(
        self, task_id: str, clips: Sequence[tuple[ClipReport, State]], *, at: float
    ) -> None: ...

    async def insert_transitions(self, transitions: Sequence[Transition]) -> None: ...

    async def task_facts(self, task_id: str) -> TaskFacts:
        """What routes match on: the task's type, platform and its clips' tags."""
        ...

    async def insert_jobs(self, specs: Sequence[JobSpec], *, at: float) -> int:
        """Insert the jobs whose key is new; returns how many were inserted."""
        ...


async def plan_jobs(
    tx: Transaction, router: Router | None, task_id: str, transitions: Sequence[Transition],
    *, at: float,
) -> int:
    """Write the jobs ``router`` plans for ``transitions`` of ``task_id``."""
    if router is None or not any(t.entity is Entity.TASK for t in transitions):
        return 0
    facts = (await tx.task_facts(task_id) if router.reads_facts
             else TaskFacts(task_id=task_id, task_type=None, platform=None, tags=frozenset()))
    specs = router.plan(facts, transitions)
    return await tx.insert_jobs(specs, at=at) if specs else 0


async def record(
    tx: Transaction, delivery: Delivery, *, router: Router | None = None
) -> RecordResult:
    """Record ``delivery`` through ``tx``; see the module docstring for the rules."""
    callback = delivery.callback
    task_id = None
    reason = delivery.error
    if callback is not None:
        task_id = callback.task_id or await tx.task_for_clips([c.clip_id for c in callback.clips])
        if task_id is None:
            reason = UNKNOWN_TASK
    if callback is None or task_id is None:
        if not await tx.insert_delivery(
            delivery, outcome=Outcome.QUARANTINED, task_id=delivery.task_id_hint, reason=reason
        ):
            return await _seen_before(tx, delivery)
        return RecordResult(
            outcome=Outcome.QUARANTINED,
            delivery_id=delivery.delivery_id,
            task_id=delivery.task_id_hint,
            state=None,
            reason=reason,
        )

    if not await tx.insert_delivery(delivery, outcome=Outcome.RECORDED, task_id=task_id,
                                    reason=None):
        return await _seen_before(tx, delivery)
    await tx.lock_task(task_id)
    before = await tx.task_before(task_id)
    reported = callback.reported_states()
    change = plan(
        task_id=task_id,
        task_before=before.state,
        clips_before=before.clips,
        reported=reported,
        event=callback.event,
    )
    at = delivery.received_at
    transitions = tuple(
        Transition(
            task_id=task_id,
            entity=move.entity,
            entity_id=move.entity_id,
            from_state=move.from_state,
            to_state=move.to_state,
            delivery_id=delivery.delivery_id,
            source=delivery.source,
            at=at,
        )
        for move in change.moves
    )
    task_failed = any(t.entity is Entity.TASK and t.to_state is State.FAILED for t in transitions)
    await tx.upsert_task(
        task_id,
        state=change.task_state,
        platform=callback.platform,
        error=callback.failure if task_failed else None,
        delivery_id=delivery.delivery_id,
        at=at,
    )
    refreshed = [(c, reported[c.clip_id]) for c in callback.clips if c.clip_id in change.refresh]
    await tx.upsert_clips(task_id, refreshed, at=at)
    await tx.insert_transitions(transitions)
    jobs = await plan_jobs(tx, router, task_id, transitions, at=at)
    return RecordResult(
        outcome=Outcome.RECORDED,
        delivery_id=delivery.delivery_id,
        task_id=task_id,
        state=change.task_state,
        transitions=transitions,
        jobs=jobs,
    )


async def _seen_before(tx: Transaction, delivery: Delivery) -> RecordResult:
    """The delivery's id is kept already: answer what became of it then."""
    earlier = await tx.find_delivery(delivery.delivery_id)
    if earlier is None:  # cannot be: the insert just met it
        raise RuntimeError(f"delivery {delivery.delivery_id} neither new nor kept")
    state = await tx.task_state(earlier.task_id) if earlier.task_id else None
    outcome = Outcome.DUPLICATE if earlier.outcome is Outcome.RECORDED else earlier.outcome
    return RecordResult(
        outcome=outcome,
        delivery_id=earlier.delivery_id,
        task_id=earlier.task_id,
        state=state,
        reason=earlier.reason,
    )
