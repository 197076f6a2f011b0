"""Recording a delivery: the one algorithm every source (webhook, poll, replay) goes through,
written once over named statements (:class:`receiver.storage.connector.Tx`), so that every
backend shares the idempotency and state rules. The ingest role
(:class:`receiver.storage.ingest.Ingest`) runs it in a unit of work.

Inside one transaction:

1. the delivery is inserted first, keyed by its id: an id seen before inserts nothing and
   answers ``duplicate`` (or the earlier quarantine), and nothing changes;
2. an unusable body, or a task that cannot be named, is kept raw as ``quarantined`` with the
   reason;
3. a delivery whose body nothing authenticated (``unconfirmed``) is kept as ``unconfirmed``
   with no effect at all: its task is registered (as pending, if new) and one job is planned,
   the confirmation (:data:`CONFIRM_HANDLER`, :mod:`receiver.confirmation`), which polls the
   provider and records what it answers through this same algorithm; no handler job;
4. else the task is locked, its state and its clips' states read (one statement), the task and
   the clips it reports upserted, each state transition that :func:`receiver.states.plan`
   allows written, and with a router, one job per handler of every route the task
   transitions match (a job key seen before is skipped).

The facts that routes can narrow on are read only when some route narrows on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from receiver.clips import ClipReport
from receiver.failures import classify
from receiver.jobs import JobSpec
from receiver.models import Delivery, Outcome, RecordResult, StoredDelivery, Transition
from receiver.payloads import Callback
from receiver.routing import Router, TaskFacts, split_tags
from receiver.states import Entity, State, plan, task_state
from receiver.storage.connector import Tx
from receiver.storage.records import record as read

UNKNOWN_TASK = "no task_id in the body or ?task_id=, and none of its clips is known"
# The job that confirms an unconfirmed delivery (receiver.confirmation): a core handler, not a
# plugin's, and how many polls it makes before it calls the delivery contradicted.
CONFIRM_HANDLER = "receiver.confirm"
CONFIRM_ROUTE = "confirmation"
CONFIRM_ATTEMPTS = 6


async def record(tx: Tx, delivery: Delivery, *, router: Router | None = None) -> RecordResult:
    """Record ``delivery`` in ``tx``; see the module docstring for the rules."""
    callback = delivery.callback
    task_id = None
    reason = delivery.error
    if callback is not None:
        task_id = callback.task_id or await _task_for_clips(tx, [c.clip_id for c in callback.clips])
        if task_id is None:
            reason = UNKNOWN_TASK
    if callback is None or task_id is None:
        if not await _insert_delivery(tx, delivery, outcome=Outcome.QUARANTINED,
                                      task_id=delivery.task_id_hint, reason=reason):
            return await _seen_before(tx, delivery)
        return RecordResult(outcome=Outcome.QUARANTINED, delivery_id=delivery.delivery_id,
                            task_id=delivery.task_id_hint, state=None, reason=reason)

    if delivery.unconfirmed:
        return await _unconfirmed(tx, delivery, callback, task_id)
    if not await _insert_delivery(tx, delivery, outcome=Outcome.RECORDED, task_id=task_id,
                                  reason=None):
        return await _seen_before(tx, delivery)
    await tx.send("lock_task", {"task_id": task_id})
    task_before: State | None = None
    clips_before: dict[str, State] = {}
    for row in await tx.rows("task_before", {"task_id": task_id}):
        if row["clip_id"] is None:
            task_before = State(row["state"])
        else:
            clips_before[row["clip_id"]] = State(row["state"])
    reported = callback.reported_states()
    change = plan(task_id=task_id, task_before=task_before, clips_before=clips_before,
                  reported=reported, event=callback.event)
    at = delivery.received_at
    transitions = tuple(
        Transition(task_id=task_id, entity=move.entity, entity_id=move.entity_id,
                   from_state=move.from_state, to_state=move.to_state,
                   delivery_id=delivery.delivery_id, source=delivery.source, at=at)
        for move in change.moves
    )
    task_failed = any(t.entity is Entity.TASK and t.to_state is State.FAILED for t in transitions)
    failure = callback.failure if task_failed else None
    await tx.send("upsert_task", {
        "task_id": task_id, "state": change.task_state.value, "platform": callback.platform,
        "error": failure, "at": at, "delivery_id": delivery.delivery_id,
        "provider": delivery.provider,
        "failure_category": None if failure is None else (
            callback.failure_category or classify(callback.code, failure)).value,
    })
    refreshed = [(c, reported[c.clip_id]) for c in callback.clips if c.clip_id in change.refresh]
    if refreshed:
        await tx.send_many("upsert_clip", [_clip_params(task_id, clip, state, at)
                                           for clip, state in refreshed])
    if transitions:
        await tx.send_many("insert_transition", [_transition_params(t) for t in transitions])
    jobs = await plan_jobs(tx, router, task_id, transitions, at=at)
    return RecordResult(outcome=Outcome.RECORDED, delivery_id=delivery.delivery_id,
                        task_id=task_id, state=change.task_state, transitions=transitions,
                        jobs=jobs)


async def _unconfirmed(tx: Tx, delivery: Delivery, callback: Callback,
                       task_id: str) -> RecordResult:
    """Keep a delivery whose body nothing authenticated, with no effect: its task is known
    from now on (pending, if new), and the one job it owes is its confirmation, told what
    the body claims the task reached (the state rules' aggregate of the body alone)."""
    if not await _insert_delivery(tx, delivery, outcome=Outcome.UNCONFIRMED, task_id=task_id,
                                  reason=None):
        return await _seen_before(tx, delivery)
    at = delivery.received_at
    await tx.run("register_task", {"task_id": task_id, "at": at, "task_type": None,
                                   "parent": None, "provider": delivery.provider})
    claims = task_state(callback.reported_states().values(), callback.event)
    jobs = await insert_jobs(tx, [JobSpec(
        key=f"{task_id}/confirm/{delivery.delivery_id}", handler=CONFIRM_HANDLER,
        route=CONFIRM_ROUTE, options={"delivery_id": delivery.delivery_id,
                                      "claims": claims.value},
        task_id=task_id, trigger="delivery.unconfirmed", delivery_id=delivery.delivery_id,
        max_attempts=CONFIRM_ATTEMPTS)], at=at)
    found = await tx.one("task_state", {"task_id": task_id})
    return RecordResult(outcome=Outcome.UNCONFIRMED, delivery_id=delivery.delivery_id,
                        task_id=task_id, state=State(found["state"]) if found else None,
                        jobs=jobs)


async def register(
    tx: Tx, task_id: str, *, task_type: str, parent: str | None, at: float,
    router: Router | None, provider: str | None = None,
) -> None:
    """Upsert a task this receiver created (type, parent; ``provider``: whose, else its
    parent's, else Sonic's) and catch up on the jobs its recorded transitions owe: its
    webhook may have come before the create call returned. (When it is being recorded right
    now in another process, the two upserts of the task row make one transaction wait for
    the other's commit, so one of them sees the other's writes.)"""
    await tx.run("register_task", {"task_id": task_id, "at": at, "task_type": task_type,
                                   "parent": parent, "provider": provider})
    earlier = await tx.rows("task_transitions", {"task_id": task_id})
    await plan_jobs(tx, router, task_id, [read(Transition, r) for r in earlier], at=at)


async def plan_jobs(
    tx: Tx, router: Router | None, task_id: str, transitions: Sequence[Transition], *,
    at: float,
) -> int:
    """Write the jobs ``router`` plans for ``transitions`` of ``task_id``; how many are new."""
    if router is None or not any(t.entity is Entity.TASK for t in transitions):
        return 0
    facts = (await _task_facts(tx, task_id) if router.reads_facts
             else TaskFacts(task_id=task_id, task_type=None, platform=None, tags=frozenset()))
    return await insert_jobs(tx, router.plan(facts, transitions), at=at)


async def insert_jobs(tx: Tx, specs: Sequence[JobSpec], *, at: float) -> int:
    """Queue the jobs of ``specs`` whose key is new for their task; how many were."""
    if not specs:
        return 0
    inserted = await tx.run_many("insert_job", [_job_params(s, at) for s in specs])
    if inserted:
        tx.jobs_written()
    return inserted


async def _seen_before(tx: Tx, delivery: Delivery) -> RecordResult:
    """The delivery's id is kept already: count the repeat, and answer what became of it."""
    row = await tx.one("find_delivery", {"delivery_id": delivery.delivery_id})
    if row is None:  # cannot be: the insert just met it
        raise RuntimeError(f"delivery {delivery.delivery_id} neither new nor kept")
    earlier = read(StoredDelivery, row)
    state = None
    if earlier.task_id:
        found = await tx.one("task_state", {"task_id": earlier.task_id})
        state = State(found["state"]) if found is not None else None
    if earlier.outcome in (Outcome.RECORDED, Outcome.UNCONFIRMED):
        await tx.run("count_duplicate", {"delivery_id": delivery.delivery_id,
                                         "at": delivery.received_at})
    outcome = Outcome.DUPLICATE if earlier.outcome is Outcome.RECORDED else earlier.outcome
    return RecordResult(outcome=outcome, delivery_id=earlier.delivery_id,
                        task_id=earlier.task_id, state=state, reason=earlier.reason)


async def _insert_delivery(
    tx: Tx, delivery: Delivery, *, outcome: Outcome, task_id: str | None, reason: str | None
) -> bool:
    """Keep the delivery; False when its id is kept already (recorded before, or by another
    process meanwhile, whose commit this insert waited for), and nothing is written."""
    inserted = await tx.run("insert_delivery", {
        "delivery_id": delivery.delivery_id, "source": delivery.source.value,
        "scheme": delivery.scheme, "event": delivery.event, "task_id": task_id,
        "outcome": outcome.value, "reason": reason,
        "headers": dumps(dict(delivery.headers), sort=True), "body": delivery.body,
        "received_at": delivery.received_at, "provider": delivery.provider,
    })
    return inserted == 1


async def _task_for_clips(tx: Tx, clip_ids: Sequence[str]) -> str | None:
    if not clip_ids:
        return None
    row = await tx.one("task_for_clips", {"clip_ids": json.dumps(list(clip_ids))})
    return str(row["task_id"]) if row is not None else None


async def _task_facts(tx: Tx, task_id: str) -> TaskFacts:
    """What routes match on: the task's type, platform and its clips' tags."""
    rows = await tx.rows("task_facts", {"task_id": task_id})
    task = next((r for r in rows if r["kind"] == "task"), None)
    return TaskFacts(task_id=task_id, task_type=task["value"] if task else None,
                     platform=task["platform"] if task else None,
                     tags=split_tags(r["value"] for r in rows if r["kind"] == "clip"))


def dumps(value: Any, *, sort: bool = False) -> str:
    """JSON text of ``value``, by orjson on the ingest path (several times cheaper than
    ``json.dumps``); what orjson refuses (an integer past 64 bits) goes through ``json``."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else 0).decode()
    except TypeError:
        return json.dumps(value, sort_keys=sort)


def _clip_params(task_id: str, clip: ClipReport, state: State, at: float) -> dict[str, Any]:
    return {
        "task_id": task_id, "clip_id": clip.clip_id, "state": state.value, "title": clip.title,
        "tags": clip.tags, "lyrics": clip.lyrics, "audio_url": clip.audio_url,
        "image_url": clip.image_url, "video_url": clip.video_url, "duration": clip.duration,
        "mv": clip.mv, "created_at": clip.created_at,
        "data": dumps(dict(clip.raw), sort=True), "at": at,
    }


def _transition_params(t: Transition) -> Mapping[str, Any]:
    return {"task_id": t.task_id, "entity": t.entity.value, "entity_id": t.entity_id,
            "from_state": t.from_state.value if t.from_state else None,
            "to_state": t.to_state.value, "delivery_id": t.delivery_id,
            "source": t.source.value, "at": t.at}


def _job_params(spec: JobSpec, at: float) -> Mapping[str, Any]:
    return {"key": spec.key, "handler": spec.handler, "route": spec.route,
            "options": dumps(dict(spec.options)), "task_id": spec.task_id,
            "trigger": spec.trigger, "delivery_id": spec.delivery_id,
            "max_attempts": spec.max_attempts, "at": at,
            "waits_for": dumps(list(spec.waits_for)) if spec.waits_for else None,
            "wait_until": at + spec.wait_s if spec.waits_for else None}
