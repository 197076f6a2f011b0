"""Confirmation: a callback whose body nothing authenticated (sunoapi.org's, kie.ai's: see
:mod:`receiver.providers`) takes effect only once its provider, polled, agrees with it.

Recording keeps such a delivery ``unconfirmed`` with no effect at all (no transition, no clip
data, no handler job) and plans one job for it, :data:`receiver.recording.CONFIRM_HANDLER`,
run by the worker like any other (leases, retries, the console, ``replay redispatch``). The
job polls the task's provider and records the answer through the one record algorithm, as a
delivery of source ``confirm``: what the provider says is what takes effect, its transitions
plan the handlers' jobs. Then, against the task's state afterwards, with the state rules'
order (:mod:`receiver.states`):

- it agrees when the task reached what the callback claimed (the state rules' aggregate of
  the callback alone), or, for a claim of progress, went further: the delivery becomes
  ``recorded``, ``confirmed_by`` the poll's delivery;
- it contradicts when the task ended otherwise (it failed where the callback says it
  succeeded, or the reverse), or the provider does not know the task: ``contradicted``;
- short of the claim, the provider's record may lag its callback: polled again later (up to
  :data:`receiver.recording.CONFIRM_ATTEMPTS` polls in all, then ``contradicted``). A poll
  that fails (the provider away) is retried by the worker's backoff; a job that gave up leaves
  the delivery unconfirmed, and ``replay redispatch`` runs it again.

A contradicted body never takes effect, so none of the handlers it would have triggered runs.
"""

from __future__ import annotations

from typing import Any

import structlog

from receiver.context import Event, HandlerContext
from receiver.jobs import PermanentError, Retry
from receiver.models import Source
from receiver.recording import CONFIRM_HANDLER
from receiver.sonic.errors import TaskNotFound
from receiver.states import TERMINAL, State, advances

log = structlog.get_logger("receiver.confirmation")

# Seconds before the next poll, after each poll that fell short of the claim.
DELAYS_S = (5.0, 15.0, 30.0, 60.0, 120.0)


def agrees(claims: State, now: State) -> bool:
    """Whether a task now in ``now`` bears out a callback that claimed ``claims``."""
    if now is claims:
        return True
    return claims not in TERMINAL and not advances(now, claims)


def contradicts(claims: State, now: State) -> bool:
    """Whether no later poll can bear it out: the task ended otherwise."""
    return now in TERMINAL and now is not claims


async def confirm(event: Event, ctx: HandlerContext) -> None:
    """The job of one unconfirmed delivery (see the module docstring)."""
    options: Any = ctx.options
    try:
        delivery_id = str(options["delivery_id"])
        claims = State(options["claims"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"a confirmation job without its delivery: {exc}") from exc
    ingest = ctx.ingest_role()
    bound = ctx.log.bind(delivery_id=delivery_id, claims=claims.value)
    try:
        poll, view = await ctx.poll_task(source=Source.CONFIRM)
    except TaskNotFound:
        await ingest.settle_unconfirmed(delivery_id, confirmed_by=None,
                                        reason="the provider does not know the task")
        bound.warning("callback_contradicted", reason="task_not_found")
        return
    now = view.task.state
    if agrees(claims, now):
        await ingest.settle_unconfirmed(delivery_id, confirmed_by=poll)
        bound.info("callback_confirmed", state=now.value, confirmed_by=poll)
        return
    last = event.attempt >= ctx.job.max_attempts
    if contradicts(claims, now) or last:
        reason = f"the provider says the task is {now.value}"
        await ingest.settle_unconfirmed(delivery_id, confirmed_by=None, reason=reason)
        bound.warning("callback_contradicted", state=now.value, polls=event.attempt)
        return
    delay = DELAYS_S[min(event.attempt, len(DELAYS_S)) - 1]
    raise Retry(f"the provider says {now.value}, the callback {claims.value}", after=delay)


#: The receiver's own job handlers, by name (the registry finds them; no plugin may take
#: these names).
CORE_HANDLERS = {CONFIRM_HANDLER: confirm}
