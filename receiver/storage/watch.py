"""The watch role: what the receiver's alerts and deadlines read and write
(:mod:`receiver.alerts`, :func:`receiver.schedules.deadlines_every`).

- Counts by the second (:meth:`Watch.add_tallies`) for what is not stored row by row: refused
  deliveries, counted in each process and added here every round.
- The rules' windows, each one indexed read (a partial index where the rows it counts are few).
- Alerts and their outbox: :meth:`Watch.settle` reads the open alerts, asks the caller what
  changes, and writes those changes with the messages they owe, in one transaction; a message
  is then tried until every target took it (:meth:`Watch.message_tried`).
- Deadlines: the open tasks past one, marked overdue once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from receiver.models import Alert, AlertChange, AlertMessage
from receiver.storage.connector import Tx
from receiver.storage.database import Database
from receiver.storage.records import record

BUCKET_S = 1


def bucket_of(at: float) -> int:
    """The second of ``at``, in unix seconds: the key of a tally."""
    return int(at // BUCKET_S) * BUCKET_S


@dataclass(frozen=True, kw_only=True)
class Ended:
    """Tasks that ended in a window: how many succeeded, how many failed by category."""

    succeeded: int
    failed: Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class Dead:
    """Jobs of one handler that went dead in a window; ``last_id``: the newest."""

    handler: str
    count: int
    last_id: int


@dataclass(frozen=True, kw_only=True)
class JobBrief:
    task_id: str
    error: str | None


@dataclass(frozen=True, kw_only=True)
class PendingDownload:
    job_id: int
    task_id: str
    handler: str
    state: str
    created_at: float
    platform: str | None


@dataclass(frozen=True, kw_only=True)
class Overdue:
    task_id: str
    task_type: str | None
    first_seen_at: float


class Watch:
    """Alerts, tallies and deadlines over ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- tallies ----

    async def add_tallies(self, counts: Mapping[tuple[str, int, str], int]) -> None:
        """Add ``counts`` (by name, bucket and label) to what is kept."""
        params = [{"name": name, "bucket": bucket, "label": label, "count": n}
                  for (name, bucket, label), n in sorted(counts.items()) if n]
        if params:
            await self.db.write(lambda tx: tx.run_many("add_tally", params))

    async def tally(self, name: str, *, since: float) -> dict[str, int]:
        """Counts of ``name`` by label from the bucket of ``since`` on."""
        rows = await self.db.read(lambda tx: tx.rows(
            "tally_since", {"name": name, "since": bucket_of(since)}))
        return {r["label"]: int(r["n"]) for r in rows}

    async def prune_tallies(self, *, before: float) -> None:
        await self.db.write(lambda tx: tx.run("prune_tallies", {"before": bucket_of(before)}))

    # ---- what the rules read ----

    async def polled_since(self, since: float) -> tuple[int, int]:
        """Task transitions a poll recorded since ``since``, and over how many tasks."""
        row = await self.db.read(lambda tx: tx.one("polled_since", {"since": since}))
        return (int(row["n"]), int(row["tasks"])) if row else (0, 0)

    async def overdue_open(self) -> int:
        row = await self.db.read(lambda tx: tx.one("overdue_open"))
        return int(row["n"]) if row else 0

    async def quiet(self) -> tuple[float | None, float | None]:
        """When the oldest open task was first seen, and when the last webhook came."""
        row = await self.db.read(lambda tx: tx.one("quiet_since"))
        return (row["oldest_open"], row["last_webhook"]) if row else (None, None)

    async def ended_since(self, since: float) -> Ended:
        rows = await self.db.read(lambda tx: tx.rows("ended_since", {"since": since}))
        succeeded = sum(int(r["n"]) for r in rows if r["state"] == "succeeded")
        failed = {r["category"]: int(r["n"]) for r in rows if r["state"] == "failed"}
        return Ended(succeeded=succeeded, failed=failed)

    async def dead_since(self, since: float) -> list[Dead]:
        rows = await self.db.read(lambda tx: tx.rows("dead_since", {"since": since}))
        return [Dead(handler=r["handler"], count=int(r["n"]), last_id=int(r["last_id"]))
                for r in rows]

    async def job_brief(self, job_id: int) -> JobBrief | None:
        row = await self.db.read(lambda tx: tx.one("job_brief", {"id": job_id}))
        return JobBrief(task_id=row["task_id"], error=row["last_error"]) if row else None

    async def quarantined_since(self, since: float) -> tuple[int, str | None, str | None]:
        """Deliveries quarantined since ``since``; the newest one's id and reason."""

        async def work(tx: Tx) -> tuple[int, str | None, str | None]:
            row = await tx.one("quarantined_since", {"since": since})
            if row is None or not row["n"]:
                return 0, None, None
            last = await tx.one("delivery_by_row", {"id": row["last_id"]})
            return (int(row["n"]), last["delivery_id"] if last else None,
                    last["reason"] if last else None)

        return await self.db.read(work)

    async def downloads_pending(
        self, handlers: Sequence[str], *, before: float, after: float
    ) -> list[PendingDownload]:
        """Unfinished (or dead) jobs of ``handlers`` created between ``after`` and
        ``before``, oldest first, with their task's platform."""
        if not handlers:
            return []
        params = {"handlers": json.dumps(list(handlers)), "before": before, "after": after}
        rows = await self.db.read(lambda tx: tx.rows("downloads_pending", params))
        return [PendingDownload(job_id=int(r["id"]), task_id=r["task_id"], handler=r["handler"],
                                state=r["state"], created_at=r["created_at"],
                                platform=r["platform"]) for r in rows]

    # ---- alerts ----

    async def open_alerts(self) -> list[Alert]:
        rows = await self.db.read(lambda tx: tx.rows("open_alerts"))
        return [record(Alert, r) for r in rows]

    async def settle(
        self, decide: Callable[[list[Alert]], Sequence[AlertChange]], *, now: float
    ) -> list[AlertChange]:
        """In one transaction: the open alerts, the changes ``decide`` makes of them, those
        changes and their messages written. What was written is returned (a ``fire`` that
        met an open alert of the same rule and subject, written meanwhile, is left out)."""

        async def work(tx: Tx) -> list[AlertChange]:
            opened = [record(Alert, r) for r in await tx.rows("open_alerts")]
            done: list[AlertChange] = []
            for change in decide(opened):
                alert_id = await _apply(tx, change, now)
                if alert_id is None:
                    continue
                if change.title is not None:
                    await tx.run("insert_alert_message", {
                        "alert_id": alert_id, "kind": _MESSAGE_KIND[change.kind],
                        "title": change.title, "body": change.body or "", "at": now})
                done.append(change)
            return done

        return await self.db.write(work)

    async def keep_past_alert(
        self, *, rule: str, subject: str, text: str, advice: str, fired_at: float,
        resolved_at: float,
    ) -> None:
        """Keep an alert that was told while it could not be kept (the database away)."""

        async def work(tx: Tx) -> None:
            row = await tx.one("insert_past_alert", {
                "rule": rule, "subject": subject, "text": text, "advice": advice,
                "fired_at": fired_at, "resolved_at": resolved_at})
            if row is None:  # cannot be: a resolved alert meets no unique index
                raise RuntimeError("past alert not kept")

        await self.db.write(work)

    async def due_messages(self, *, limit: int = 50) -> list[AlertMessage]:
        rows = await self.db.read(lambda tx: tx.rows("due_alert_messages", {"limit": limit}))
        return [record(AlertMessage, r) for r in rows]

    async def message_tried(
        self, message_id: int, *, sent_to: Sequence[str], error: str | None,
        done_at: float | None,
    ) -> None:
        """One try of a message: the targets that took it so far, the last error, and when
        it is done (every target took it, or it was given up)."""
        params = {"id": message_id, "sent_to": json.dumps(sorted(set(sent_to))),
                  "error": error, "done_at": done_at}
        await self.db.write(lambda tx: tx.run("alert_message_tried", params))

    async def outbox_size(self) -> tuple[int, int]:
        """Alert messages kept: still due, and done (sent or given up; retention takes them)."""
        row = await self.db.read(lambda tx: tx.one("outbox_size"))
        return (int(row["due"]), int(row["done"])) if row else (0, 0)

    async def alerts(
        self, *, active: bool = False, before: int | None = None, limit: int = 100
    ) -> list[Alert]:
        """Alerts newest first (open ones only with ``active``), below id ``before``."""
        params = {"active": 1 if active else 0, "before": before, "limit": limit}
        rows = await self.db.read(lambda tx: tx.rows("list_alerts", params))
        return [record(Alert, r) for r in rows]

    async def alerts_by_rule(self) -> dict[str, tuple[int, int]]:
        """Each rule's alerts: (fired ever, open now)."""
        rows = await self.db.read(lambda tx: tx.rows("alerts_by_rule"))
        return {r["rule"]: (int(r["fired"]), int(r["active"] or 0)) for r in rows}

    # ---- deadlines ----

    async def past_deadline(self, *, before: float, limit: int = 500) -> list[Overdue]:
        """Open tasks first seen before ``before`` and not marked overdue, oldest first."""
        rows = await self.db.read(lambda tx: tx.rows(
            "past_deadline", {"before": before, "limit": limit}))
        return [record(Overdue, r) for r in rows]

    async def mark_overdue(self, task_ids: Sequence[str], *, at: float) -> int:
        """Mark those of ``task_ids`` still open overdue; how many were."""
        if not task_ids:
            return 0
        params = [{"task_id": t, "at": at} for t in task_ids]
        return await self.db.write(lambda tx: tx.run_many("mark_overdue", params))


_MESSAGE_KIND = {"fire": "firing", "repeat": "repeat", "resolve": "resolved"}


async def _apply(tx: Tx, change: AlertChange, now: float) -> int | None:
    """Write one change; the alert's id, or None when nothing was written."""
    values: dict[str, Any] = {"text": change.text, "advice": change.advice,
                              "link": change.link, "at": now}
    if change.kind == "fire":
        row = await tx.one("insert_alert", {**values, "rule": change.rule,
                                            "subject": change.subject})
        return int(row["id"]) if row is not None else None
    statement = {"repeat": "alert_repeated", "seen": "alert_seen",
                 "resolve": "alert_resolved"}[change.kind]
    params = {"id": change.alert_id, "at": now} if change.kind == "resolve" else {
        **values, "id": change.alert_id}
    return change.alert_id if await tx.run(statement, params) else None
