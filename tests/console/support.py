"""What the console's test modules share: the admin token, a delivery posted through the
webhook, and dead jobs written the way a worker that gave up leaves them."""

from __future__ import annotations

from pathlib import Path

import httpx

from receiver.clock import FakeClock
from receiver.jobs import JobSpec
from receiver.recording import insert_jobs
from receiver.storage.roles import sqlite_storage
from tests.support import callback, clip, post_signed

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://receiver"  # where tests.support.app_client serves the app


async def deliver(client: httpx.AsyncClient, clock: FakeClock, task_id: str, state: str,
                  delivery_id: str, title: str = "Song", tags: str = "pop") -> httpx.Response:
    """A signed delivery of task ``task_id`` with one clip in ``state``."""
    body = callback(task_id, [clip(f"{task_id}-c", state, title=title, tags=tags)],
                    event="song.completed" if state == "succeeded" else "song.started")
    return await post_signed(client, body, clock=clock, delivery_id=delivery_id)


async def dead_jobs(tmp_path: Path, clock: FakeClock, n: int, handler: str,
                    prefix: str = "old") -> list[int]:
    """``n`` jobs of ``handler`` made now, claimed and killed, as a worker that gave up leaves
    them (on the same database file the app has open)."""
    specs = [JobSpec(key=f"t-jobs/{prefix}/{handler}/{i}", handler=handler, route="r",
                     options={}, task_id="t-jobs", trigger="task.succeeded", delivery_id=None,
                     max_attempts=1) for i in range(n)]
    async with sqlite_storage(tmp_path / "receiver.db", clock=clock) as store:
        # a job belongs to a task
        await store.ingest.register_task("t-jobs", task_type="create", now=clock.now())
        await store.db.write(lambda tx: insert_jobs(tx, specs, at=clock.now()))
        claimed = await store.jobs.claim_jobs(owner="w", limit=n, now=clock.now(), lease_s=60)
        for job in claimed:
            await store.jobs.kill_job(job.id, owner="w", error=f"boom {job.id}", now=clock.now())
        return [j.id for j in claimed]
