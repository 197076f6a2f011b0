"""The job queue role: what a worker claims, renews and ends.

Every change to a claimed job checks the lease owner, so a worker that lost its lease (too
slow; another took the job over) changes nothing. Every claim opens a row in the job's attempt
log, numbered by the job's runs; the call that ends the run closes that row alone with its
outcome, and a claim that takes a job over closes the earlier runs still open as ``lost``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from receiver.jobs import AttemptOutcome, Job
from receiver.storage.connector import Tx
from receiver.storage.database import Database
from receiver.storage.records import record


class JobQueue:
    """Jobs out, under leases."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_jobs(self, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
        """Take up to ``limit`` due jobs (or jobs whose lease expired) for ``owner``."""
        return await self.db.write(lambda tx: _claim(tx, owner=owner, limit=limit, now=now,
                                                     lease_s=lease_s))

    async def finish_and_claim(
        self, *, owner: str, finished: Sequence[int], limit: int, now: float, lease_s: float
    ) -> tuple[frozenset[int], list[Job]]:
        """Finish the jobs ``finished`` (done; only those ``owner`` still holds, which are
        returned) and claim up to ``limit`` more, in one unit of work: a worker's outcomes
        ride with its next claim instead of costing a write each."""

        async def work(tx: Tx) -> tuple[frozenset[int], list[Job]]:
            done: frozenset[int] = frozenset()
            if finished:
                rows = await tx.rows("finish_jobs", {
                    "ids": json.dumps(sorted(finished)), "owner": owner, "now": now})
                done = frozenset(int(r["id"]) for r in rows)
                await tx.run_many("end_attempt", [
                    {"job_id": r["id"], "run": r["runs"], "now": now,
                     "outcome": AttemptOutcome.DONE.value, "error": None}
                    for r in sorted(rows, key=lambda r: int(r["id"]))
                ])
            claimed = await _claim(tx, owner=owner, limit=limit, now=now,
                                   lease_s=lease_s) if limit > 0 else []
            return done, claimed

        return await self.db.write(work)

    async def finish_job(self, job_id: int, *, owner: str, now: float) -> bool:
        done, _ = await self.finish_and_claim(owner=owner, finished=[job_id], limit=0, now=now,
                                              lease_s=0.0)
        return job_id in done

    async def renew_lease(self, job_id: int, *, owner: str, until: float, now: float) -> bool:
        params = {"id": job_id, "owner": owner, "until": until, "now": now}
        return await self.db.write(lambda tx: tx.run("renew_lease", params)) == 1

    async def retry_job(
        self, job_id: int, *, owner: str, error: str, run_after: float, now: float,
        count_attempt: bool = True,
    ) -> bool:
        """Run the job again at ``run_after``; an attempt not counted is given back."""
        outcome = AttemptOutcome.RETRY if count_attempt else AttemptOutcome.LATER
        return await self._end("retry_job", outcome, job_id, owner=owner, now=now, error=error,
                               run_after=run_after, refund=0 if count_attempt else 1)

    async def kill_job(self, job_id: int, *, owner: str, error: str, now: float) -> bool:
        return await self._end("kill_job", AttemptOutcome.DEAD, job_id, owner=owner, now=now,
                               error=error)

    async def _end(
        self, statement: str, outcome: AttemptOutcome, job_id: int, *, owner: str, now: float,
        error: str | None, **extra: object,
    ) -> bool:
        async def work(tx: Tx) -> bool:
            params = {"id": job_id, "owner": owner, "now": now, "error": error, **extra}
            ended = await tx.one(statement, params)
            if ended is None:  # not this owner's any more: another worker took it over
                return False
            await tx.run("end_attempt", {"job_id": job_id, "run": ended["runs"], "now": now,
                                         "outcome": outcome.value, "error": error})
            return True

        return await self.db.write(work)

    async def release_jobs(self, *, owner: str, now: float) -> int:
        """Hand ``owner``'s running jobs back (graceful stop), without charging the attempt."""

        async def work(tx: Tx) -> int:
            released = await tx.rows("release_jobs", {"owner": owner, "now": now})
            await tx.run_many("end_attempt", [
                {"job_id": r["id"], "run": r["runs"], "now": now,
                 "outcome": AttemptOutcome.RELEASED.value, "error": None} for r in released
            ])
            return len(released)

        return await self.db.write(work)

    async def unfinished(self, job: Job, handlers: Sequence[str]) -> int:
        """How many other jobs of ``job``'s task, of ``handlers``, are not finished yet."""
        params = {"task_id": job.task_id, "job_id": job.id,
                  "handlers": json.dumps(list(handlers))}
        row = await self.db.read(lambda tx: tx.one("unfinished_jobs", params))
        return int(row["n"]) if row is not None else 0

    async def next_due(self) -> float | None:
        """When the next job becomes claimable (a run_after or a lease expiry), if any."""
        row = await self.db.read(lambda tx: tx.one("next_due"))
        return float(row["due"]) if row is not None and row["due"] is not None else None

    async def wait_for_jobs(self, wait_s: float) -> None:
        """Return when another process may have queued jobs, or after ``wait_s``."""
        await self.db.connector.wait_for_jobs(wait_s)


async def _claim(tx: Tx, *, owner: str, limit: int, now: float, lease_s: float) -> list[Job]:
    # window: the first due jobs of each kind that the claim considers (claim_jobs), with room
    # for those concurrent claims on PostgreSQL hold locked and skip
    rows = await tx.rows("claim_jobs", {"owner": owner, "until": now + lease_s, "now": now,
                                        "limit": limit, "window": limit + 64})
    jobs = sorted((record(Job, r) for r in rows), key=lambda j: (j.run_after, j.id))
    await tx.run_many("close_lost_attempts", [
        {"job_id": j.id, "run": j.runs, "now": now} for j in jobs if j.runs > 1])
    await tx.run_many("start_attempt", [
        {"job_id": j.id, "run": j.runs, "attempt": j.attempts, "owner": owner, "now": now}
        for j in jobs
    ])
    return jobs
