"""The worker: claims due jobs with a lease, runs their handlers, records the outcome.

It runs inside the web process (started and stopped by the app's lifespan, woken at once when a
delivery records jobs) or as ``sonic-receiver worker`` on the same database (woken by
PostgreSQL's ``NOTIFY``, or by a commit to the SQLite file, seen within 50 ms; polling at most
every 250 ms as a fallback). While a handler runs, its lease is renewed; a worker that dies
stops renewing, the lease expires, and another claim takes the job up again (that attempt
counts). Stopping stops claiming, waits for running handlers up to a deadline, cancels the rest
and hands their jobs back without charging the attempt.

While the database is away every loop waits between its tries (claims back off up to
:data:`BACK_OFF_MAX_S`, jittered, so that claims resume within about that long after it is
back), and a job's outcome is written again until it is written: nothing is lost in a task
nobody awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from receiver import metrics
from receiver.clips import as_text
from receiver.clock import Clock
from receiver.context import Event, HandlerContext
from receiver.errors import StoreError
from receiver.jobs import DEFAULT_CONCURRENCY, Job, PermanentError, Retry, RetryPolicy
from receiver.redact import scrub_text
from receiver.registry import Registry
from receiver.storage.queue import JobQueue

log = structlog.get_logger("receiver.worker")

ContextFactory = Callable[[Job], HandlerContext]
_MAX_ERROR = 2000


def error_text(text: str) -> str:
    """A handler's error as a job keeps it: secrets and URLs scrubbed, what no store keeps
    replaced (:func:`receiver.clips.as_text`; it may carry anything a peer sent), cut short."""
    return as_text(scrub_text(text))[:_MAX_ERROR]
WAIT_STEP_S = 2.0  # how often a job that runs after others looks whether they finished
BACK_OFF_MAX_S = 1.0  # the longest wait between two tries while the database is away


class Worker:
    """Runs jobs from ``queue`` with the handlers of ``registry``."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        registry: Registry,
        contexts: ContextFactory,
        clock: Clock,
        policy: RetryPolicy | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_s: float = 60.0,
        poll_s: float = 0.25,
        owner: str | None = None,
        listen: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.contexts = contexts
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.lease_s = lease_s
        self.poll_s = poll_s
        # a worker in a process of its own also wakes when another process queues jobs
        self.listen = listen
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = False
        # a job holds a slot while its handler runs; its task lives on until the outcome is
        # committed (in the store's next batch), which no longer keeps the next job waiting
        self._running: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # while run() loops, successes wait here for its next claim, which commits them with
        # it (one unit of work, not one each); the future says whether the lease still held
        self._looping = False
        self._done: list[tuple[int, asyncio.Future[bool]]] = []
        self._failing = 0  # claims in a row that the database refused

    def wake(self) -> None:
        """A job was just recorded: look now instead of at the next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim what is due now and run it to the end; returns how many jobs ran. (Tests drive
        the worker this way, moving an injected clock between calls.)"""
        jobs = await self.queue.claim_jobs(
            owner=self.owner, limit=self.concurrency, now=self.clock.now(), lease_s=self.lease_s
        )
        await asyncio.gather(*(self._run(job) for job in jobs))
        return len(jobs)

    async def run(self) -> None:
        """Work until :meth:`stop`."""
        log.info("worker_started", owner=self.owner, concurrency=self.concurrency)
        if self.listen:
            # Listen before the first look for jobs: what is committed after that look wakes
            # the first wait (PostgreSQL's LISTEN starts hearing only once it is issued).
            try:
                await self.queue.wait_for_jobs(0.0)
            except Exception as exc:  # no listener yet: the first wait tries again
                log.error("wait_failed", error=str(exc))
        self._looping = True
        try:
            await self._loop()
        finally:
            self._looping = False
            if self._done:  # successes the loop had no claim left to carry
                await self._commit_done(limit=0, last=True)

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._running)
            claimed: list[Job] = []
            if free > 0 or self._done:
                claimed = await self._commit_done(limit=max(0, free))
                if self._stopping:
                    break  # what this claim took is handed back by stop(), not started
                for job in claimed:
                    task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
                    self._running[job.id] = task
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._finished, job.id))
            if claimed and len(claimed) == free:
                continue  # there may be more: claim again once a slot frees
            if self._failing:  # the database is away: wait a while, then try again
                await self._sleep(self._back_off(self._failing))
                continue
            if self._wake.is_set():
                continue  # a slot freed or a job was recorded meanwhile: claim now
            # With every slot taken only a freed slot can start a job: no need to ask when
            # the next one is due (a read, a trip to the reader's thread, every cycle).
            await self._sleep(self.poll_s if free <= 0 else await self._idle_wait())

    def _back_off(self, failures: int) -> float:
        """How long to wait after ``failures`` tries in a row failed: doubling from the poll
        interval up to :data:`BACK_OFF_MAX_S`, spread by ±20% so processes do not retry in
        step."""
        base = min(BACK_OFF_MAX_S, min(self.poll_s, BACK_OFF_MAX_S) * 2.0 ** (failures - 1))
        return base * self.rng.uniform(0.8, 1.2)

    async def _commit_done(self, *, limit: int, last: bool = False) -> list[Job]:
        """Finish the successes waiting in ``_done`` and claim up to ``limit`` jobs, in one
        write. If it fails, the successes wait for the next try (their leases are still
        renewed), unless this is the ``last`` one."""
        done, self._done = self._done, []
        try:
            kept, claimed = await self.queue.finish_and_claim(
                owner=self.owner, finished=[job_id for job_id, _ in done], limit=limit,
                now=self.clock.now(), lease_s=self.lease_s)
        except asyncio.CancelledError:
            self._done[:0] = done  # for the last write of run()
            raise
        except Exception as exc:  # a locked or broken database: log, wait, try again
            self._failing += 1
            log.error("claim_failed", error=str(exc))
            metrics.store_error("claim")
            if not last:
                self._done[:0] = done
                return []
            for _, future in done:
                if not future.done():
                    future.set_exception(exc)
            return []
        if self._failing:
            log.info("claims_resumed", after_failures=self._failing)
            self._failing = 0
        for job_id, future in done:
            if not future.done():
                future.set_result(job_id in kept)
        return claimed

    async def _finish(self, job: Job) -> bool:
        """Mark ``job`` done; False if its lease was lost. While :meth:`run` loops, with its
        next claim (it is woken by the freed slot anyway)."""
        if not self._looping:
            return await self.queue.finish_job(job.id, owner=self.owner, now=self.clock.now())
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._done.append((job.id, future))
        self._wake.set()
        return await future

    def _finished(self, job_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._free_slot(job_id)
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, here
            log.error("job_run_failed", job_id=job_id, exc_info=task.exception())

    def _free_slot(self, job_id: int) -> None:
        if self._running.pop(job_id, None) is not None:
            self._wake.set()

    async def _sleep(self, wait_s: float) -> None:
        """Until :meth:`wake`, a commit elsewhere (when listening), or ``wait_s``."""
        if not self.listen:
            # The event alone: the worker resumes in the loop's next step after a wake-up
            # (no helper tasks to start, finish and cancel, two steps more each time).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait()),
                                            asyncio.ensure_future(self.queue.wait_for_jobs(wait_s))]
        failed = False
        try:
            done, _ = await asyncio.wait(waits, timeout=wait_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    failed = True
                    log.error("wait_failed", error=str(task.exception()))
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if failed:  # no listener (the database away): wait out the rest, do not spin
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._wake.wait()

    async def _idle_wait(self) -> float:
        try:
            due = await self.queue.next_due()
        except Exception:
            return self.poll_s
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.0, due - self.clock.now()))

    async def stop(self, *, deadline_s: float = 30.0) -> None:
        """Stop claiming; let running handlers finish within ``deadline_s``; cancel the rest
        and hand their jobs back."""
        self._stopping = True
        self._wake.set()
        running = list(self._tasks)  # handlers, and outcomes not yet committed
        if running:
            log.info("worker_draining", jobs=len(running), deadline_s=deadline_s)
            _, pending = await asyncio.wait(running, timeout=deadline_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        released = await self.queue.release_jobs(owner=self.owner, now=self.clock.now())
        log.info("worker_stopped", owner=self.owner, released=released)

    async def _run(self, job: Job) -> None:
        bound = log.bind(job_id=job.id, job_key=job.key, task_id=job.task_id,
                         handler=job.handler, attempt=job.attempts)
        handler = self.registry.get(job.handler)
        if handler is None:
            await self._die(job, bound, f"handler {job.handler!r} is not registered")
            return
        if await self._waits(job, bound):
            return
        event = Event(trigger=job.trigger, task_id=job.task_id, route=job.route, key=job.key,
                      job_id=job.id, attempt=job.attempts, delivery_id=job.delivery_id)
        heartbeat = asyncio.create_task(self._heartbeat(job, asyncio.current_task()))
        bound.info("job_started")
        try:
            try:
                with metrics.job_timer(job.handler):
                    # options that no longer fit the handler end the job (UnfitOptions)
                    ctx = self.contexts(job)
                    ctx.log = bound
                    await handler(event, ctx)
            finally:
                self._free_slot(job.id)  # the handler is done: the next job may start
        except Retry as exc:
            reason = error_text(exc.message)
            counted, after = exc.counted, exc.after
            if counted and job.attempts >= job.max_attempts:
                await self._die(job, bound, f"gave up after {job.attempts} attempts: {reason}")
            elif await self._written(bound, "retry", lambda: self.queue.retry_job(
                    job.id, owner=self.owner, error=reason, count_attempt=counted,
                    run_after=self.clock.now() + after, now=self.clock.now())):
                bound.info("job_retrying" if counted else "job_retry_later",
                           delay_s=after, reason=reason)
        except PermanentError as exc:
            await self._die(job, bound, error_text(f"PermanentError: {exc.message}"))
        except asyncio.CancelledError:
            bound.warning("job_cancelled")
            raise
        except Exception as exc:
            error = error_text(f"{type(exc).__name__}: {exc}")
            if job.attempts >= job.max_attempts:
                await self._die(job, bound, error)
            else:
                delay = self.policy.delay(job.attempts, self.rng)
                if await self._written(bound, "retry", lambda: self.queue.retry_job(
                        job.id, owner=self.owner, error=error,
                        run_after=self.clock.now() + delay, now=self.clock.now())):
                    bound.warning("job_retrying", error=error, delay_s=round(delay, 3))
        else:
            if await self._written(bound, "done", lambda: self._finish(job)):
                bound.info("job_done")
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _waits(self, job: Job, bound: structlog.stdlib.BoundLogger) -> bool:
        """Whether ``job`` must wait for unfinished jobs of its task that it runs after (until
        its wait runs out): then it is postponed, the attempt given back."""
        now = self.clock.now()
        if not job.waits_for or job.wait_until is None or now >= job.wait_until:
            return False
        try:
            busy = await self.queue.unfinished(job, job.waits_for)
        except StoreError:
            busy = 1  # cannot tell now: wait, as for an unfinished job (the write below waits)
        if not busy:
            return False
        delay = min(WAIT_STEP_S, job.wait_until - now)
        if await self._written(bound, "later", lambda: self.queue.retry_job(
                job.id, owner=self.owner, run_after=self.clock.now() + delay,
                now=self.clock.now(), error=f"waiting for {', '.join(job.waits_for)}",
                count_attempt=False)):
            bound.info("job_waiting", waits_for=list(job.waits_for), delay_s=round(delay, 3))
        return True

    async def _die(self, job: Job, bound: structlog.stdlib.BoundLogger, error: str) -> None:
        if await self._written(bound, "dead", lambda: self.queue.kill_job(
                job.id, owner=self.owner, error=error[:_MAX_ERROR], now=self.clock.now())):
            bound.error("job_dead", error=error)

    async def _written(self, bound: structlog.stdlib.BoundLogger, outcome: str,
                       write: Callable[[], Awaitable[bool]]) -> bool:
        """Write a job's ``outcome`` with ``write``, again (backing off) while the database
        refuses it, until it is written or the worker is stopped; whether this worker still
        held the job (False: its lease was lost, and another worker took it over)."""
        failures = 0
        while True:
            try:
                kept = await write()
            except StoreError as exc:
                failures += 1
                metrics.store_error("outcome")
                delay = self._back_off(failures)
                # said once per outcome, and again when it is written: not at every try
                (bound.warning if failures == 1 else bound.debug)(
                    "job_outcome_not_written", outcome=outcome, error=exc.message,
                    tries=failures, retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            if failures:
                bound.info("job_outcome_written", outcome=outcome, tries=failures + 1)
            if not kept:
                bound.warning("job_lease_lost", outcome=outcome)
            return kept

    async def _heartbeat(self, job: Job, runner: asyncio.Task[object] | None) -> None:
        """Renew the lease every third of its length; if it was lost, stop the handler."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            now = self.clock.now()
            try:
                kept = await self.queue.renew_lease(job.id, owner=self.owner,
                                                    until=now + self.lease_s, now=now)
            except Exception as exc:
                log.warning("lease_renewal_failed", job_id=job.id, error=str(exc))
                continue
            if not kept and runner is not None:
                log.warning("job_lease_lost", job_id=job.id)
                runner.cancel()
                return
