"""Recording a delivery: the one algorithm every source (webhook, poll, replay) goes through,
written once against a narrow :class:`Transaction` so that the SQLite store and its in-memory
twin cannot disagree on idempotency or state rules.

Inside one transaction:

1. a delivery id seen before → ``duplicate`` (or the earlier quarantine), nothing changes;
2. an unusable body, or a task that cannot be named → the raw delivery is kept as
   ``quarantined`` with the reason;
3. else the delivery is kept, the task and the clips it reports are upserted, each state
   transition that :func:`receiver.states.plan` allows is written, and with a router, one job
   per handler of every route the task transitions match (a job key seen before is skipped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from receiver.jobs import JobSpec
from receiver.models import Delivery, Outcome, RecordResult, StoredDelivery, Transition
from receiver.payloads import ClipReport
from receiver.routing import Router, TaskFacts
from receiver.states import Entity, State, plan

UNKNOWN_TASK = "no task_id in the body or ?task_id=, and none of its clips is known"


class Transaction(Protocol):
    """The primitive reads and writes recording needs, all inside one open transaction."""

    async def find_delivery(self, delivery_id: str) -> StoredDelivery | None: ...

    async def insert_delivery(
        self, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
    ) -> bool:
        """Keep the delivery; False when its id was kept meanwhile (another process recorded
        the same delivery after :meth:`find_delivery` looked), and nothing is written."""
        ...

    async def task_for_clips(self, clip_ids: Sequence[str]) -> str | None: ...

    async def lock_task(self, task_id: str) -> None:
        """Hold ``task_id`` until the transaction ends: another transaction recording the same
        task (another web process) waits until this one commits, so that the task and clip
        states read next are the latest, never a state a concurrent commit has moved on from."""
        ...

    async def task_state(self, task_id: str) -> State | None: ...

    async def clip_states(self, task_id: str) -> Mapping[str, State]: ...

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
    specs = router.plan(await tx.task_facts(task_id), transitions)
    return await tx.insert_jobs(specs, at=at) if specs else 0


async def record(
    tx: Transaction, delivery: Delivery, *, router: Router | None = None
) -> RecordResult:
    """Record ``delivery`` through ``tx``; see the module docstring for the rules."""
    earlier = await tx.find_delivery(delivery.delivery_id)
    if earlier is not None:
        return await _seen_before(tx, earlier)

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
            return await _recorded_meanwhile(tx, delivery)
        return RecordResult(
            outcome=Outcome.QUARANTINED,
            delivery_id=delivery.delivery_id,
            task_id=delivery.task_id_hint,
            state=None,
            reason=reason,
        )

    await tx.lock_task(task_id)
    task_before = await tx.task_state(task_id)
    reported = callback.reported_states()
    change = plan(
        task_id=task_id,
        task_before=task_before,
        clips_before=await tx.clip_states(task_id),
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
    if not await tx.insert_delivery(delivery, outcome=Outcome.RECORDED, task_id=task_id,
                                    reason=None):
        return await _recorded_meanwhile(tx, delivery)
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


async def _seen_before(tx: Transaction, earlier: StoredDelivery) -> RecordResult:
    state = await tx.task_state(earlier.task_id) if earlier.task_id else None
    outcome = Outcome.DUPLICATE if earlier.outcome is Outcome.RECORDED else earlier.outcome
    return RecordResult(
        outcome=outcome,
        delivery_id=earlier.delivery_id,
        task_id=earlier.task_id,
        state=state,
        reason=earlier.reason,
    )


async def _recorded_meanwhile(tx: Transaction, delivery: Delivery) -> RecordResult:
    """The same delivery id was committed by another transaction (another web process) while
    this one looked: a duplicate after all, answered as one instead of as a conflict."""
    earlier = await tx.find_delivery(delivery.delivery_id)
    if earlier is None:  # cannot be: the insert just met it
        raise RuntimeError(f"delivery {delivery.delivery_id} neither new nor kept")
    return await _seen_before(tx, earlier)
