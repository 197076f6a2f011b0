"""The server's own schedules: reconciliation of stale tasks (``[reconcile]``), deadlines
(``[deadlines]``) and retention (``[retention]``), each a loop the app's lifespan runs until it
stops (the alerts' loop is :class:`receiver.alerts.Alerting`). With several processes, one of
them does each round: the turn is kept in the database (:meth:`Admin.take_turn`). A failed round
is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

from receiver.clock import Clock
from receiver.config import DeadlinesTable
from receiver.errors import ReceiverError, StoreError
from receiver.providers import Poller
from receiver.recovery import reconcile
from receiver.routing import Router
from receiver.storage.admin import Admin
from receiver.storage.ingest import Ingest
from receiver.storage.watch import Watch

log = structlog.get_logger("receiver.schedules")


async def reconcile_every(
    every_s: float,
    stale_s: float,
    *,
    admin: Admin,
    ingest: Ingest,
    sonic: Poller,
    router: Router | None,
    clock: Clock,
) -> None:
    """The server's own reconciliation: every ``every_s``, poll the tasks whose last event
    is older than ``stale_s``. Runs until cancelled; a failed round is logged, not fatal."""
    owner = turn_owner()
    while True:
        await clock.sleep(every_s)
        try:
            # several web processes run this schedule: one of them polls each round
            if not await admin.take_turn("reconcile", owner=owner, hold_s=every_s * 0.9):
                continue
            ids = await admin.tasks_to_reconcile(stale_before=clock.now() - stale_s)
            if not ids:
                continue
            summary = await reconcile(ids, store=ingest, sonic=sonic, router=router,
                                      clock=clock)
            log.info("reconcile_round", selected=summary.selected, **summary.counts)
        except ReceiverError as exc:
            log.error("reconcile_round_failed", error=exc.message)


async def deadlines_every(
    table: DeadlinesTable,
    *,
    admin: Admin,
    watch: Watch,
    ingest: Ingest,
    sonic: Poller | None,
    router: Router | None,
    clock: Clock,
) -> None:
    """Every ``table.every``: the open tasks past their type's deadline are reconciled at once
    (with a Sonic client), and those still open are marked overdue (the console shows it, the
    callbacks-stopped alert counts it). Runs until cancelled; a failed round is logged."""
    owner = turn_owner()
    while True:
        await asyncio.sleep(table.every)  # wall time, as the alerts' loop (receiver.alerts)
        try:
            if await admin.take_turn("deadlines", owner=owner, hold_s=table.every * 0.9):
                await check_deadlines(table, watch=watch, ingest=ingest, sonic=sonic,
                                      router=router, now=clock.now(), clock=clock)
        except ReceiverError as exc:
            log.error("deadlines_round_failed", error=exc.message)


async def check_deadlines(
    table: DeadlinesTable, *, watch: Watch, ingest: Ingest, sonic: Poller | None,
    router: Router | None, now: float, clock: Clock,
) -> list[str]:
    """One round of :func:`deadlines_every`: the tasks found past their deadline (those of
    them still open after the reconcile are now marked overdue)."""
    candidates = await watch.past_deadline(before=now - table.shortest_s)
    due = [t.task_id for t in candidates if t.first_seen_at + table.deadline_s(t.task_type) <= now]
    if not due:
        return []
    if sonic is not None:
        summary = await reconcile(due, store=ingest, sonic=sonic, router=router, clock=clock)
        log.info("deadline_reconciled", selected=summary.selected, **summary.counts)
    marked = await watch.mark_overdue(due, at=now)
    if marked:
        log.warning("tasks_overdue", count=marked, task_ids=due[:20])
    return due


async def prune_every(
    every_s: float, *, admin: Admin, clock: Clock, older_than_s: float, keep_ids_s: float
) -> None:
    """The retention policy on a schedule (``[retention]``); a failed round is logged."""
    owner = turn_owner()
    while True:
        await clock.sleep(every_s)
        try:
            # several web processes run this schedule: one of them prunes each round
            if await admin.take_turn("prune", owner=owner, hold_s=every_s * 0.9):
                await admin.prune(older_than_s=older_than_s, keep_ids_s=keep_ids_s)
        except StoreError as exc:
            log.error("prune_failed", error=exc.message)


def turn_owner() -> str:
    """This process, as the owner of a scheduled turn."""
    return f"{socket.gethostname()}:{os.getpid()}"
