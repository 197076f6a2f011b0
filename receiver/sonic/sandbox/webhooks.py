"""Webhook deliveries: ``song.streaming`` when a task starts running, then ``song.completed``
or ``song.failed`` when it settles, POSTed to the task's ``webhook_url`` (query string kept).

Each event is one delivery with a stable id (``X-Webhook-Id``, repeated as
``Idempotency-Key``): redeliveries and duplicate copies of it keep the id; every attempt is
signed afresh (``X-Webhook-Timestamp`` is the time of signing) with the task's
``webhook_secret`` through :func:`receiver.signatures.sign_musicapi`, or the sandbox's default
secret when the task had none, plus the older ``X-Signature`` when the key or config asks.

A non-2xx answer or a connection failure is retried after ``webhook_backoff_s`` doubling each
time, up to ``webhook_attempts`` attempts. The body::

    {"code": 200, "message": "success", "task_id": ..., "platform": "sonic",
     "event": "song.completed", "data": [clip, ...]}

(``song.failed`` says ``{"code": 500, "message": "generation failed"}``: the sandbox's own
words, the service's are not documented.)

A task another provider's API created (:mod:`receiver.sonic.sandbox.providers`) is called back
in that provider's way instead: its stages in order, each at its time, each body and its
headers made by the provider's :class:`~receiver.sonic.sandbox.providers.Flavour`, with the
same attempts, backoff and faults.

Every attempt, and every delivery a fault dropped, goes into the delivery log that
``GET /_sandbox/deliveries`` shows. Runners are asyncio tasks owned by :class:`Webhooks`,
which the app's lifespan closes (cancelling whatever is still waiting) on shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from receiver.clock import Clock
from receiver.signatures import sign_legacy, sign_musicapi
from receiver.sonic.contract import EVENT_STATE, WebhookEvent
from receiver.sonic.sandbox.state import SandboxState, Task

if TYPE_CHECKING:
    from receiver.sonic.sandbox.providers import Flavour

log = structlog.get_logger("receiver.sonic.sandbox")

PLATFORM = "sonic"
_EVENT_STATE = EVENT_STATE


@dataclass(frozen=True, kw_only=True)
class DeliveryRecord:
    """One line of the delivery log: an attempt, or a delivery a fault dropped.

    ``outcome``: ``answered`` (2xx), ``failed`` (will be retried), ``gave_up`` (last attempt
    failed), ``dropped`` (never sent). ``copy`` is 2 for the second copy of a duplicated
    delivery. ``signature`` is ``invalid`` when a fault signed it with the wrong secret.
    """

    seq: int
    delivery_id: str
    task_id: str
    event: WebhookEvent
    url: str
    attempt: int
    copy: int
    outcome: str
    status: int | None
    error: str | None
    signature: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _happened_at(task: Task, event: WebhookEvent) -> float:
    """When ``event`` of ``task`` happened (what its links' age counts from)."""
    if event is WebhookEvent.STREAMING:
        return task.timeline.running_at
    return task.timeline.settled_at


def delivery_id(seed: int, task_id: str, event: WebhookEvent) -> str:
    return "wh_" + hashlib.blake2b(f"{seed}:{task_id}:{event}".encode(), digest_size=12).hexdigest()


class Webhooks:
    """Sends the webhooks of tasks, with the faults their key asks for."""

    def __init__(self, state: SandboxState, *, http: httpx.AsyncClient, clock: Clock,
                 flavours: Mapping[str, Flavour] | None = None) -> None:
        self._state = state
        self._http = http
        self._clock = clock
        self._flavours = flavours or {}
        self._config = state.config
        self.log: deque[DeliveryRecord] = deque(maxlen=state.config.delivery_log_limit)
        self._seq = 0
        self._running: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> int:
        """Runners and deliveries not finished yet."""
        return len(self._running)

    def start(self, task: Task) -> None:
        """Deliver ``task``'s events in the background (nothing if it has no webhook_url)."""
        if task.request.webhook_url:
            self._spawn(self._run(task), f"webhooks:{task.task_id}")

    async def aclose(self) -> None:
        """Cancel every runner and delivery and wait for them to end."""
        pending = list(self._running)
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        job = asyncio.create_task(coro, name=name)
        self._running.add(job)
        job.add_done_callback(self._finished)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._running.discard(job)
        if not job.cancelled() and (exc := job.exception()) is not None:
            log.error("webhook_runner_crashed", job=job.get_name(), error=repr(exc))

    async def _sleep_until(self, when: float) -> None:
        await self._clock.sleep(max(0.0, when - self._clock.now()))

    async def _run(self, task: Task) -> None:
        flavour = self._flavours.get(task.provider)
        if flavour is not None:
            await self._run_stages(task, flavour)
            return
        state = self._state
        terminal = WebhookEvent.FAILED if task.fails else WebhookEvent.COMPLETED
        await self._sleep_until(task.timeline.running_at)
        reorder = state.faults.strikes(
            state.faults.for_key(task.api_key).reorder, "reorder", task.task_id
        )
        first, second = (terminal, WebhookEvent.STREAMING) if reorder else (
            WebhookEvent.STREAMING,
            terminal,
        )
        if not reorder:
            sent = self._deliver_soon(task, first)
            await self._sleep_until(task.timeline.settled_at)
            state.settle_due()
        else:
            await self._sleep_until(task.timeline.settled_at)
            state.settle_due()
            sent = self._deliver_soon(task, first)
        # The second event goes out once the first has had its first attempt, so the order a
        # receiver sees is the order intended (each is then redelivered on its own).
        await sent.wait()
        self._deliver_soon(task, second)

    async def _run_stages(self, task: Task, flavour: Flavour) -> None:
        """Another provider's callbacks: each stage at its time, the next once the one
        before had its first attempt."""
        for when, event, stage in flavour.stages(task):
            await self._sleep_until(when)
            self._state.settle_due()
            sent = self._deliver_soon(task, event, stage=(stage, when, flavour))
            await sent.wait()

    def _deliver_soon(self, task: Task, event: WebhookEvent,
                      stage: tuple[str, float, Flavour] | None = None) -> asyncio.Event:
        first_attempt = asyncio.Event()
        self._spawn(self._deliver(task, event, first_attempt, stage), f"{event}:{task.task_id}")
        return first_attempt

    async def _deliver(self, task: Task, event: WebhookEvent, first_attempt: asyncio.Event,
                       stage: tuple[str, float, Flavour] | None = None) -> None:
        try:
            await self._deliver_copies(task, event, first_attempt, stage)
        finally:
            first_attempt.set()

    async def _deliver_copies(
        self, task: Task, event: WebhookEvent, first_attempt: asyncio.Event,
        stage: tuple[str, float, Flavour] | None = None,
    ) -> None:
        """One delivery: Sonic's, or (``stage``: its name, when it happened, its provider's
        flavour) another provider's."""
        state = self._state
        faults = state.faults
        config = faults.for_key(task.api_key)
        named = task.task_id if stage is None else f"{task.task_id}:{stage[0]}"
        wid = delivery_id(self._config.seed, named, event)
        url = task.request.webhook_url or ""
        chosen = any(
            d.matches(ordinal=task.ordinal, task_id=task.task_id, event=event)
            for d in config.drop_events
        )
        if chosen or faults.strikes(config.drop, "drop", wid):
            self._record(task, event, wid, url, attempt=0, copy=1, outcome="dropped")
            log.info("webhook_dropped", task_id=task.task_id, webhook_event=event, delivery_id=wid)
            return
        if config.delay_s > 0:
            await self._clock.sleep(config.delay_s)
        if stage is not None:
            name, when, flavour = stage
            body = flavour.body(task, event, name, when)
        else:
            body = self._sonic_body(task, event)
        bad = faults.strikes(config.bad_signature, "bad_signature", wid)
        copies = 2 if faults.strikes(config.duplicate, "duplicate", wid) else 1
        for copy in range(1, copies + 1):
            await self._attempts(
                task, event, wid, url, body, bad=bad, copy=copy, first_attempt=first_attempt,
                flavour=None if stage is None else stage[2],
            )

    def _sonic_body(self, task: Task, event: WebhookEvent) -> bytes:
        state = self._state
        return json.dumps(
            {
                "code": 500 if event is WebhookEvent.FAILED else 200,
                "message": "generation failed" if event is WebhookEvent.FAILED else "success",
                "task_id": task.task_id,
                "platform": PLATFORM,
                "event": str(event),
                # links as old as the event: a late delivery's may have expired
                "data": state.render(
                    task, _EVENT_STATE[event], issued_at=_happened_at(task, event)
                ),
            },
            separators=(",", ":"),
        ).encode()

    async def _attempts(
        self,
        task: Task,
        event: WebhookEvent,
        wid: str,
        url: str,
        body: bytes,
        *,
        bad: bool,
        copy: int,
        first_attempt: asyncio.Event,
        flavour: Flavour | None = None,
    ) -> None:
        secret = task.request.webhook_secret or self._config.default_webhook_secret
        if bad:
            secret += ":not-the-secret"
        legacy = self._config.legacy_signature or task.api_key in self._state.legacy_keys
        attempts = max(1, self._config.webhook_attempts)
        backoff = self._config.timing.webhook_backoff_s
        for attempt in range(1, attempts + 1):
            timestamp = int(self._clock.now())
            if flavour is not None:
                headers = {"Content-Type": "application/json", "User-Agent": "sonic-sandbox",
                           **flavour.headers(task, body, wid, timestamp, bad=bad)}
            else:
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "sonic-sandbox",
                    "X-Webhook-Id": wid,
                    "Idempotency-Key": wid,
                    "X-Webhook-Event": str(event),
                    **sign_musicapi(secret, body, timestamp),
                    **(sign_legacy(secret, body) if legacy else {}),
                }
            status: int | None = None
            error: str | None = None
            try:
                response = await self._http.post(
                    url, content=body, headers=headers, timeout=self._config.webhook_timeout_s
                )
                status = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            ok = status is not None and 200 <= status < 300
            last = attempt == attempts
            outcome = "answered" if ok else ("gave_up" if last else "failed")
            self._record(
                task, event, wid, url, attempt=attempt, copy=copy, outcome=outcome,
                status=status, error=error, bad=bad,
            )
            log.info(
                "webhook_sent" if ok else "webhook_failed",
                task_id=task.task_id,
                webhook_event=event,
                delivery_id=wid,
                attempt=attempt,
                copy=copy,
                status=status,
                error=error,
                will_retry=not ok and not last,
            )
            first_attempt.set()
            if ok:
                return
            if not last:
                await self._clock.sleep(backoff * 2 ** (attempt - 1))
        log.warning("webhook_gave_up", task_id=task.task_id, webhook_event=event, delivery_id=wid)

    def _record(
        self,
        task: Task,
        event: WebhookEvent,
        wid: str,
        url: str,
        *,
        attempt: int,
        copy: int,
        outcome: str,
        status: int | None = None,
        error: str | None = None,
        bad: bool = False,
    ) -> None:
        self._seq += 1
        self.log.append(
            DeliveryRecord(
                seq=self._seq,
                delivery_id=wid,
                task_id=task.task_id,
                event=event,
                url=url,
                attempt=attempt,
                copy=copy,
                outcome=outcome,
                status=status,
                error=error,
                signature="invalid" if bad else "valid",
                at=self._clock.now(),
            )
        )
