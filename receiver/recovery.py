"""Recovery for missed events, the library under ``sonic-receiver replay``, the console's
actions and the server's schedules:

- :func:`reconcile` polls get-music for tasks whose callbacks never came and feeds each answer
  through the same record path as a webhook (source ``poll``): a missed transition is recorded
  and its handlers run; what was already seen changes nothing (an identical answer is a
  duplicate delivery, and states only move forward);
- :func:`redispatch` queues finished jobs again: dead ones by default, or every job of the
  deliveries of a time range; or records quarantined deliveries again;
- :func:`resend` POSTs stored raw deliveries to a URL, signed afresh, keeping their delivery
  ids (so the receiving end recognises repeats).

Each returns a :class:`Summary`; with ``dry_run`` nothing is written and the summary says what
would be. Each can be interrupted and run again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import httpx
import structlog
from aiolimiter import AsyncLimiter

from receiver.clips import load, parse_identifier
from receiver.clock import Clock
from receiver.errors import PayloadError, ReceiverError
from receiver.jobs import JobState
from receiver.models import Delivery, JobFilter, Outcome, RawDelivery, RecordResult, Source
from receiver.payloads import Callback, envelope, try_parse
from receiver.providers import SONIC, Adapter, Poller
from receiver.providers.registry import reader_for
from receiver.redact import scrub_url
from receiver.routing import Router
from receiver.signatures import Scheme, header_bytes, header_text, sign
from receiver.sonic.errors import SonicError, TaskNotFound
from receiver.sonic.responses import Music
from receiver.storage.admin import Admin
from receiver.storage.ingest import Ingest

# How long resend waits for a target's answer to one delivery (its status line and headers).
RESEND_TIMEOUT_S = 60.0

log = structlog.get_logger("receiver.recovery")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Summary:
    """What a replay command did, printed as JSON at the end."""

    command: str
    dry_run: bool
    selected: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def fail(self, item: str, error: str) -> None:
        self.add("failed")
        if len(self.failures) < 50:
            self.failures.append({"item": item, "error": error})

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.counts.get("failed") else EXIT_OK

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ---- reconcile ---------------------------------------------------------------------------------


def poll_delivery(task_id: str, music: Music, *, received_at: float,
                  source: Source = Source.POLL) -> Delivery:
    """A poll's answer (Sonic's get-music, or another provider's, ``music.provider``), as the
    client read it, as a delivery of ``source`` (``poll``, or ``confirm`` for a
    confirmation): its clips are not read again (another provider's answer comes read as
    ``music.callback``). The body is the answer's JSON with ``task_id`` added, read again by
    :func:`replayed` as this same callback; its id is a digest of the body, so polling a task
    whose state has not changed is a duplicate, not a new delivery."""
    callback: Callback | None
    error: str | None
    document = {**music.raw, "task_id": task_id}
    try:
        body = json.dumps(document, sort_keys=True).encode()
    except (ValueError, TypeError, RecursionError) as exc:  # nested past the recursion limit
        body = json.dumps({"task_id": task_id, "unserialisable_answer": type(exc).__name__},
                          sort_keys=True).encode()
        what = "get-music" if music.provider == SONIC else f"{music.provider} poll"
        callback, error = None, f"{what} answer cannot be kept: {type(exc).__name__}"
    else:
        try:
            callback, error = music.callback or envelope(document, music.clips,
                                                         task_id_hint=task_id), None
        except PayloadError as exc:
            callback, error = None, exc.message
    delivery_id = f"{source.value}:" + hashlib.sha256(body).hexdigest()[:32]
    return Delivery(
        delivery_id=delivery_id, source=source, scheme="poll", event=None, headers={},
        body=body, received_at=received_at, callback=callback, error=error,
        task_id_hint=task_id, provider=music.provider,
    )


async def reconcile(
    task_ids: Sequence[str],
    *,
    store: Ingest,
    sonic: Poller,
    router: Router | None,
    clock: Clock,
    concurrency: int = 8,
    rate_per_s: float = 20.0,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Poll each task (at its provider: ``sonic`` routes the call) and record what it says,
    as :mod:`receiver.recording` does for a webhook. With ``dry_run``, nothing is written:
    the summary says what would be."""
    summary = Summary(command="reconcile", dry_run=dry_run, selected=len(task_ids))
    limiter = AsyncLimiter(max_rate=max(rate_per_s, 0.001), time_period=1.0)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for task_id in task_ids:
        queue.put_nowait(task_id)

    async def one(task_id: str) -> None:
        async with limiter:
            music = await sonic.get_music(task_id)
        delivery = poll_delivery(task_id, music, received_at=clock.now())
        record = store.preview_delivery if dry_run else store.record_delivery
        result = await record(delivery, router=router)
        _count(summary, result)

    async def worker() -> None:
        while True:
            try:
                task_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await one(task_id)
            except TaskNotFound:
                summary.add("not_found")
            except (SonicError, ReceiverError) as exc:
                summary.fail(task_id, exc.message)
                log.warning("reconcile_failed", task_id=task_id, error=exc.message)
            except Exception as exc:  # one odd answer must not end the run for every task
                summary.fail(task_id, f"internal error: {type(exc).__name__}")
                log.exception("reconcile_failed", task_id=task_id, error_type=type(exc).__name__)
            summary.add("polled")
            if progress:
                progress(1)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return summary


def _count(summary: Summary, result: RecordResult) -> None:
    summary.add(result.outcome.value)
    summary.add("transitions", len(result.transitions))
    summary.add("jobs", result.jobs)


# ---- redispatch --------------------------------------------------------------------------------


async def redispatch(
    *,
    store: Admin,
    ingest: Ingest,
    router: Router | None,
    clock: Clock,
    where: JobFilter,
    deliveries_since: float | None = None,
    deliveries_until: float | None = None,
    quarantined: bool = False,
    dry_run: bool = False,
) -> Summary:
    summary = Summary(command="redispatch", dry_run=dry_run)
    if quarantined:
        raws = await store.raw_deliveries(since=deliveries_since, until=deliveries_until,
                                          task_id=where.task_id, outcome=Outcome.QUARANTINED)
        summary.selected = len(raws)
        for raw in raws:
            result = await ingest.rerecord_quarantined(replayed(raw), router=router,
                                                      preview=dry_run)
            _count(summary, result)
        return summary
    if deliveries_since is not None or deliveries_until is not None:
        raws = await store.raw_deliveries(since=deliveries_since, until=deliveries_until,
                                          task_id=where.task_id, outcome=Outcome.RECORDED)
        where = JobFilter(handler=where.handler, task_id=where.task_id,
                          delivery_ids=frozenset(r.stored.delivery_id for r in raws))
        jobs = [j for j in await store.find_jobs(where)
                if j.state in (JobState.DONE, JobState.DEAD)]
    else:
        jobs = await store.find_jobs(
            JobFilter(state=where.state or JobState.DEAD, handler=where.handler,
                      task_id=where.task_id, since=where.since, until=where.until))
    summary.selected = len(jobs)
    for job in jobs:
        summary.add(f"{job.state.value}_jobs")
    if not dry_run:
        summary.add("requeued", await store.requeue_jobs([j.id for j in jobs], now=clock.now()))
    return summary


def replayed(raw: RawDelivery) -> Delivery:
    """A stored delivery, parsed again (with today's parser: its provider's, for a callback
    or a poll answer of its), as source ``replay``. A callback whose body its provider does
    not authenticate is replayed unconfirmed: a poll must agree again."""
    stored = raw.stored
    event = raw.headers.get("x-webhook-event") or stored.event
    reader = None if stored.provider == SONIC else reader_for(stored.provider)
    if reader is None:
        callback, error = try_parse(raw.body, event_header=event, task_id_hint=stored.task_id)
    elif stored.source in (Source.POLL, Source.CONFIRM):
        callback, error = _reparsed_poll(reader, raw.body, stored.task_id)
    else:
        callback, error = reader.parse(raw.body, raw.headers)
    if reader is not None:
        event = callback.event.value if callback is not None and callback.event else None
    unconfirmed = (reader is not None and reader.confirms and callback is not None
                   and stored.source is Source.WEBHOOK)
    return Delivery(
        delivery_id=stored.delivery_id, source=Source.REPLAY, scheme=stored.scheme,
        event=event, headers=raw.headers, body=raw.body, received_at=stored.received_at,
        callback=callback, error=error, task_id_hint=stored.task_id,
        provider=stored.provider, unconfirmed=unconfirmed,
    )


def _reparsed_poll(reader: Adapter, body: bytes, task_id: str | None
                   ) -> tuple[Callback | None, str | None]:
    try:
        document = load(body)
        if not isinstance(document, dict):
            raise PayloadError("body is not a JSON object")
        name = task_id or parse_identifier(document.get("task_id"))
        if name is None:
            raise PayloadError("no task_id")
        return reader.poll_callback(document, name), None
    except PayloadError as exc:
        return None, exc.message


# ---- resend ------------------------------------------------------------------------------------


async def resend(
    raws: Sequence[RawDelivery],
    *,
    http: httpx.AsyncClient,
    url: str,
    secret: str,
    scheme: Scheme,
    clock: Clock,
    concurrency: int = 4,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = RESEND_TIMEOUT_S,
) -> Summary:
    """POST each of ``raws`` (chosen with :meth:`~receiver.storage.admin.Admin.raw_deliveries`)
    to ``url``. A delivery is sent when ``url`` answers 2xx, or 422 (a receiver that keeps
    the body aside); any other answer fails it: a redirect (not followed: the signed body goes
    only where ``url`` says), a refusal, no whole answer within ``timeout_s``. The answer's
    body is not read."""
    summary = Summary(command="resend", dry_run=dry_run, selected=len(raws))
    if dry_run:
        summary.add("would_send", len(raws))
        return summary
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(delivery_id: str, body: bytes, event: str | None) -> None:
        # An id (or event) may hold any byte the first sender put in its header: it goes out
        # as those bytes, and a standard signature covers the text they spell, as the
        # receiving end reads it (receiver.signatures.header_text).
        headers = sign(scheme, secret, body, timestamp=int(clock.now()),
                       msg_id=header_text(delivery_id))
        headers.update({"X-Webhook-Id": delivery_id, "Idempotency-Key": delivery_id,
                        "Content-Type": "application/json"})
        if scheme is Scheme.STANDARD:
            headers["webhook-id"] = delivery_id
        if event:
            headers["X-Webhook-Event"] = event
        raw = [(name.encode(), header_bytes(value)) for name, value in headers.items()]
        async with semaphore:
            try:
                # httpx's timeouts are per read: a target that drips its answer is cut off.
                async with asyncio.timeout(timeout_s), http.stream(
                        "POST", url, content=body, headers=raw) as response:
                    status, location = response.status_code, response.headers.get("location")
            except TimeoutError:
                summary.fail(delivery_id, f"no answer within {timeout_s:g}s")
                return
            except httpx.HTTPError as exc:
                summary.fail(delivery_id, f"{type(exc).__name__}: {exc}")
                return
            finally:
                if progress:
                    progress(1)
        summary.add(f"status_{status}")
        if 300 <= status < 400:
            summary.fail(delivery_id, f"HTTP {status} to {scrub_url(location or '')!r}: not "
                                      "followed (give --to the URL it names)")
        elif not (200 <= status < 300 or status == 422):
            summary.fail(delivery_id, f"HTTP {status}")

    await asyncio.gather(*(one(r.stored.delivery_id, r.body, r.stored.event) for r in raws))
    return summary
