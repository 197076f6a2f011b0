"""Replay for missed events: ``sonic-receiver replay reconcile|redispatch|resend``.

- ``reconcile`` polls get-music for tasks whose callbacks never came and feeds each answer
  through the same record path as a webhook (source ``poll``): a missed transition is recorded
  and its handlers run; what was already seen changes nothing (an identical answer is a
  duplicate delivery, and states only move forward).
- ``redispatch`` queues finished jobs again: dead ones by default, or every job of the
  deliveries of a time range; ``--quarantined`` records quarantined deliveries again.
- ``resend`` POSTs stored raw deliveries to a URL, signed with a given secret, keeping their
  delivery ids (so the receiving end recognises repeats).

Every command takes ``--dry-run``, draws a progress bar on a terminal, prints a JSON summary on
stdout, and can be interrupted and run again. Exit status: 0 all went well, 1 some items
failed, 2 bad usage or settings, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from aiolimiter import AsyncLimiter
from tqdm import tqdm

from receiver.clock import Clock, SystemClock
from receiver.errors import PayloadError, ReceiverError, SettingsError
from receiver.jobs import JobState
from receiver.models import Delivery, JobFilter, Outcome, RawDelivery, RecordResult, Source
from receiver.payloads import Callback, envelope, try_parse
from receiver.routing import Router
from receiver.signatures import Scheme, header_bytes, header_text, sign
from receiver.sonic.client import SonicClient
from receiver.sonic.errors import SonicError, TaskNotFound
from receiver.sonic.responses import Music
from receiver.storage.admin import Admin
from receiver.storage.ingest import Ingest

log = structlog.get_logger("receiver.replay")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str, *, now: float | None = None) -> float:
    """An ISO 8601 time, unix seconds, or a duration ago (``2h``) → unix seconds."""
    try:
        return (now if now is not None else time.time()) - parse_duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601, or a duration ago such as 2h)"
        ) from None
    return moment.timestamp()


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


def poll_delivery(task_id: str, music: Music, *, received_at: float) -> Delivery:
    """A get-music answer, as the client read it, as a delivery of source ``poll``: its clips
    are not read again. The body is the answer's JSON with ``task_id`` added, read again by
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
        callback, error = None, f"get-music answer cannot be kept: {type(exc).__name__}"
    else:
        try:
            callback, error = envelope(document, music.clips, task_id_hint=task_id), None
        except PayloadError as exc:
            callback, error = None, exc.message
    delivery_id = "poll:" + hashlib.sha256(body).hexdigest()[:32]
    return Delivery(
        delivery_id=delivery_id, source=Source.POLL, scheme="poll", event=None, headers={},
        body=body, received_at=received_at, callback=callback, error=error,
        task_id_hint=task_id,
    )


async def reconcile(
    task_ids: Sequence[str],
    *,
    store: Ingest,
    sonic: SonicClient,
    router: Router | None,
    clock: Clock,
    concurrency: int = 8,
    rate_per_s: float = 20.0,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Poll each task and record what it says, as :mod:`receiver.recording` does for a
    webhook. With ``dry_run``, nothing is written: the summary says what would be."""
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


async def reconcile_every(
    every_s: float,
    stale_s: float,
    *,
    admin: Admin,
    ingest: Ingest,
    sonic: SonicClient,
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


def turn_owner() -> str:
    """This process, as the owner of a scheduled turn."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _count(summary: Summary, result: RecordResult) -> None:
    summary.add(result.outcome.value)
    summary.add("transitions", len(result.transitions))
    summary.add("jobs", result.jobs)


def read_task_ids(args: Iterable[str], files: Iterable[Path]) -> list[str]:
    ids = [a.strip() for a in args if a.strip()]
    for path in files:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        ids += [line.split("#")[0].strip() for line in text.splitlines()]
    return list(dict.fromkeys(i for i in ids if i))


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
    """A stored delivery, parsed again (with today's parser), as source ``replay``."""
    event = raw.headers.get("x-webhook-event") or raw.stored.event
    callback, error = try_parse(raw.body, event_header=event, task_id_hint=raw.stored.task_id)
    return Delivery(
        delivery_id=raw.stored.delivery_id, source=Source.REPLAY, scheme=raw.stored.scheme,
        event=event, headers=raw.headers, body=raw.body, received_at=raw.stored.received_at,
        callback=callback, error=error, task_id_hint=raw.stored.task_id,
    )


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
) -> Summary:
    """POST each of ``raws`` (chosen with :meth:`~receiver.storage.admin.Admin.raw_deliveries`)
    to ``url``."""
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
                response = await http.post(url, content=body, headers=raw)
            except httpx.HTTPError as exc:
                summary.fail(delivery_id, f"{type(exc).__name__}: {exc}")
                return
            finally:
                if progress:
                    progress(1)
        summary.add(f"status_{response.status_code}")
        if response.status_code >= 500 or response.status_code in (401, 403, 404):
            summary.fail(delivery_id, f"HTTP {response.status_code}")

    await asyncio.gather(*(one(r.stored.delivery_id, r.body, r.stored.event) for r in raws))
    return summary


# ---- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonic-receiver replay",
        description="Recover missed events. Every command can be interrupted and run again.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, help="SQLite file (default $RECEIVER_DB)")
    common.add_argument("--config", type=Path, help="TOML config ($RECEIVER_CONFIG)")
    common.add_argument("--dry-run", action="store_true", help="change nothing; report")
    common.add_argument("--task", dest="task_id", help="only this task")
    common.add_argument("--since", type=parse_time, help="from this time (ISO 8601 or 2h ago)")
    common.add_argument("--until", type=parse_time, help="up to this time")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = sub.add_parser(
        "reconcile", parents=[common],
        help="poll get-music for tasks whose callbacks never came",
        description="Selects tasks not yet terminal whose last event is older than --stale, "
        "every task first seen --since a time, or the task ids given (arguments or --file, "
        "for tasks created outside the receiver), polls get-music for each and records the "
        "answer like a webhook (source 'poll'). Missed transitions are recorded and their "
        "handlers run; anything already seen changes nothing. Needs SONIC_API_BASE_URL and "
        "SONIC_API_KEY.",
    )
    rec.add_argument("task_ids", nargs="*", help="task ids to poll")
    rec.add_argument("--file", type=Path, action="append", default=[],
                     help="a file of task ids, one a line ('-': stdin)")
    rec.add_argument("--stale", type=parse_duration, default=None,
                     help="age of the last event that makes a task stale (default 10m)")
    rec.add_argument("--concurrency", type=int, default=8, help="polls at once (default 8)")
    rec.add_argument("--rate", type=float, default=20.0, help="polls a second (default 20)")

    red = sub.add_parser(
        "redispatch", parents=[common],
        help="queue dead jobs again, or run the handlers of some deliveries again",
        description="By default, queues again the dead jobs matching the filters (--handler, "
        "--task, --since/--until on the job's creation). With --deliveries, queues again every "
        "finished job of the deliveries received in --since/--until. With --quarantined, "
        "records again the quarantined deliveries (after a fix, or once their task is known). "
        "What is idempotent: a job keeps its key, and the built-in handlers use it: "
        "download_audio skips files already complete, follow_up never creates a second child "
        "for a trigger, notify skips targets it already reached (a crash between sending and "
        "recording may repeat one message). Re-recording a quarantined delivery cannot move a "
        "state backwards or create a job twice. A third-party handler is as idempotent as it "
        "is written.",
    )
    red.add_argument("--handler", help="only jobs of this handler")
    red.add_argument("--deliveries", action="store_true",
                     help="the jobs of the deliveries received in --since/--until")
    red.add_argument("--quarantined", action="store_true",
                     help="record quarantined deliveries again")

    res = sub.add_parser(
        "resend", parents=[common],
        help="POST stored raw deliveries to a URL, signed with a given secret",
        description="Sends each stored delivery's raw body to --to, signed afresh with "
        "--secret in --scheme, keeping its delivery id in X-Webhook-Id/Idempotency-Key so "
        "that a receiver records each once, however often this runs.",
    )
    res.add_argument("--to", required=True, help="the webhook URL to send to")
    res.add_argument("--secret", required=True, help="the secret to sign with")
    res.add_argument("--scheme", choices=[s.value for s in Scheme if s is not Scheme.NONE],
                     default="musicapi")
    res.add_argument("--outcome", choices=[o.value for o in Outcome if o is not Outcome.DUPLICATE],
                     help="only recorded or only quarantined deliveries")
    res.add_argument("--concurrency", type=int, default=4)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from receiver import logs, settings
    from receiver.registry import load_checked

    try:
        loaded = settings.load(config_file=args.config,
                               overrides={"db": args.db, "insecure_no_verify": True})
        load_checked(loaded.config)  # the whole file, before the database
    except SettingsError as exc:
        print(f"sonic-receiver replay: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(fmt=loaded.log_format, level=loaded.log_level,
                   third_party_level=loaded.log_level_third_party, secrets=loaded.secrets())
    try:
        summary = asyncio.run(_run(args, loaded))
    except SettingsError as exc:
        print(f"sonic-receiver replay: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(json.dumps({"command": args.command, "interrupted": True}))
        return EXIT_INTERRUPTED
    print(summary.to_json())
    return summary.exit_code


async def _run(args: argparse.Namespace, loaded: Any) -> Summary:
    from receiver.registry import load_registry
    from receiver.routing import routes_from_config
    from receiver.storage.roles import storage_for

    clock = SystemClock()
    router = Router(routes_from_config(loaded.config), policy=loaded.retry)
    load_registry(loaded.config).check(router.handler_names)
    if loaded.db_url is None and not loaded.db_path.exists():
        raise SettingsError(f"database {loaded.db_path} does not exist")
    async with storage_for(loaded, clock=clock) as storage:
        store = storage.admin
        if args.command == "redispatch":
            return await redispatch(
                store=store, ingest=storage.ingest, router=router, clock=clock,
                dry_run=args.dry_run,
                where=JobFilter(handler=args.handler, task_id=args.task_id,
                                since=None if args.deliveries else args.since,
                                until=None if args.deliveries else args.until),
                deliveries_since=args.since if (args.deliveries or args.quarantined) else None,
                deliveries_until=args.until if (args.deliveries or args.quarantined) else None,
                quarantined=args.quarantined,
            )
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as http:
            if args.command == "resend":
                raws = await store.raw_deliveries(
                    since=args.since, until=args.until, task_id=args.task_id,
                    outcome=Outcome(args.outcome) if args.outcome else None)
                return await _with_progress(len(raws), lambda progress: resend(
                    raws, http=http, url=args.to, secret=args.secret,
                    scheme=Scheme(args.scheme), clock=clock, concurrency=args.concurrency,
                    dry_run=args.dry_run, progress=progress))
            if not loaded.sonic_api_base_url or not loaded.sonic_api_key:
                raise SettingsError("reconcile needs SONIC_API_BASE_URL and SONIC_API_KEY")
            sonic = SonicClient(loaded.sonic_api_base_url, loaded.sonic_api_key, http=http)
            ids = read_task_ids(args.task_ids, args.file)
            if args.task_id:
                ids.append(args.task_id)
            if not ids or args.stale is not None or args.since is not None:
                stale = args.stale if args.stale is not None else (
                    600.0 if not ids and args.since is None else None)
                ids += await store.tasks_to_reconcile(
                    stale_before=clock.now() - stale if stale is not None else None,
                    since=args.since)
            ids = list(dict.fromkeys(ids))
            return await _with_progress(len(ids), lambda progress: reconcile(
                ids, store=storage.ingest, sonic=sonic, router=router, clock=clock,
                concurrency=args.concurrency, rate_per_s=args.rate, dry_run=args.dry_run,
                progress=progress))


async def _with_progress(
    total: int, run: Callable[[Callable[[int], None]], Awaitable[Summary]]
) -> Summary:
    """Run with a progress bar on stderr when it is a terminal."""
    bar = tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(), unit="item")

    def advance(n: int) -> None:
        bar.update(n)

    try:
        return await run(advance)
    finally:
        bar.close()
