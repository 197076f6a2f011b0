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
import json
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import httpx
from tqdm import tqdm

from receiver import conversion
from receiver.clips import is_text
from receiver.clock import SystemClock
from receiver.conversion import DURATION_UNITS, TIME_FORMS
from receiver.errors import SettingsError
from receiver.models import JobFilter, Outcome
from receiver.recovery import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Summary,
    reconcile,
    redispatch,
    resend,
)
from receiver.routing import Router, router_for
from receiver.settings import Settings
from receiver.signatures import Scheme
from receiver.sonic.client import SonicClient

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``0``, ``90``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 2h, 1d)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_time(text: str, *, now: float | None = None) -> float:
    """A time as the HTTP API takes it too (:func:`receiver.conversion.parse_time`)."""
    try:
        return conversion.parse_time(text, now=time.time() if now is None else now)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# A file of task ids is read up to this much (a million ids fit); /dev/zero is a path too.
MAX_IDS_BYTES = 64 * 1024 * 1024


def read_task_ids(args: Iterable[str], files: Iterable[Path]) -> list[str]:
    """The task ids given, then those of each file (one a line, ``#`` starts a comment), each
    once; :class:`SettingsError` for a file that cannot be read or an id no store keeps."""
    ids = [(a.strip(), "an argument") for a in args if a.strip()]
    for path in files:
        name = "stdin" if str(path) == "-" else str(path)
        try:
            if str(path) == "-":
                data = sys.stdin.buffer.read(MAX_IDS_BYTES + 1)
            else:
                with path.open("rb") as handle:
                    data = handle.read(MAX_IDS_BYTES + 1)
            if len(data) > MAX_IDS_BYTES:
                raise SettingsError(f"--file {name}: over {MAX_IDS_BYTES} bytes")
            text = data.decode("utf-8")
        except OSError as exc:
            raise SettingsError(f"--file {name}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise SettingsError(f"--file {name}: not UTF-8 (byte {exc.start})") from None
        ids += [(line.split("#")[0].strip(), f"line {number} of {name}")
                for number, line in enumerate(text.splitlines(), 1)]
    for task_id, where in ids:
        if not is_text(task_id) or not task_id.isprintable():
            raise SettingsError(f"the task id of {where} holds a control character or a NUL: "
                                f"{task_id!r}")
    return list(dict.fromkeys(i for i, _ in ids if i))


# ---- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonic-receiver replay",
        description="Recover missed events. Every command can be interrupted and run again.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="SQLite file or postgresql:// URL (default $RECEIVER_DB, "
                        "$DATABASE_URL)")
    common.add_argument("--config", type=Path, help="TOML config ($RECEIVER_CONFIG)")
    common.add_argument("--dry-run", action="store_true", help="change nothing; report")
    common.add_argument("--task", dest="task_id", help="only this task")
    common.add_argument("--since", type=parse_time, metavar="TIME",
                        help=f"from this time: {TIME_FORMS}")
    common.add_argument("--until", type=parse_time, metavar="TIME",
                        help="up to this time (the same forms)")
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
    rec.add_argument("--concurrency", type=positive_int, default=8,
                     help="polls at once (default 8)")
    rec.add_argument("--rate", type=positive_rate, default=20.0,
                     help="polls a second (default 20)")

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
    res.add_argument("--concurrency", type=positive_int, default=4)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.since is not None and args.until is not None and args.until < args.since:
        parser.error("--until is before --since: the range holds nothing")
    from receiver import logs, settings
    from receiver.schema import load_checked

    try:
        loaded = settings.load(config_file=args.config,
                               overrides={"db": args.db, "insecure_no_verify": True})
        registry = load_checked(loaded.config)  # the whole file, before the database
        router = router_for(loaded.config, registry, policy=loaded.retry)
    except SettingsError as exc:
        print(f"sonic-receiver replay: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(fmt=loaded.log_format, level=loaded.log_level,
                   third_party_level=loaded.log_level_third_party, secrets=loaded.secrets())
    try:
        summary = asyncio.run(_run(args, loaded, router))
    except SettingsError as exc:
        print(f"sonic-receiver replay: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(json.dumps({"command": args.command, "interrupted": True}))
        return EXIT_INTERRUPTED
    print(summary.to_json())
    return summary.exit_code


async def _run(args: argparse.Namespace, loaded: Settings, router: Router) -> Summary:
    from receiver.storage.roles import storage_for

    clock = SystemClock()
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
