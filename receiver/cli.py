"""The ``sonic-receiver`` command (also ``python -m receiver``).

``serve`` runs the receiver; ``sandbox`` (in :mod:`receiver.sonic.cli`) takes the rest of the
command line as its own, so that each module owns its options. A bad setting stops start-up
with one line on stderr and exit status 2, and so does a database that cannot be opened.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from receiver.errors import ReceiverError, SettingsError, StoreError
from receiver.settings import Settings

Forwarded = Callable[[list[str]], int]
EXIT_USAGE = 2


def _sandbox(argv: list[str]) -> int:
    # Imported by name: the sandbox's dependencies load only when it runs.
    run: Forwarded = importlib.import_module("receiver.sonic.cli").main
    return run(argv)


def _replay(argv: list[str]) -> int:
    run: Forwarded = importlib.import_module("receiver.replay").main
    return run(argv)


def _demo(argv: list[str]) -> int:
    run: Forwarded = importlib.import_module("receiver.demo").main
    return run(argv)


FORWARDED: dict[str, Forwarded] = {"sandbox": _sandbox, "replay": _replay, "demo": _demo}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonic-receiver",
        description="A verified, durable webhook receiver for the Sonic music API. "
        "Settings come from the environment (see README), a TOML --config file, and options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve POST /webhooks/sonic and the read API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="port to bind (default $PORT or 8000)",
    )
    _add_common(serve)
    serve.add_argument(
        "--insecure-no-verify",
        action="store_true",
        help="accept webhooks without checking signatures (never in production)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=_positive(os.environ.get("WEB_CONCURRENCY", "1")),
        metavar="N",
        help="web processes sharing the port (default $WEB_CONCURRENCY or 1); handler jobs "
        "run in `sonic-receiver worker` or in each web process (RECEIVER_WORKER)",
    )
    serve.add_argument(
        "--insecure-open-admin",
        action="store_true",
        help="serve the admin API (/tasks, /jobs) without a token to anyone who reaches the "
        "port ($RECEIVER_INSECURE_OPEN_ADMIN=1); set RECEIVER_ADMIN_TOKEN instead",
    )
    serve.set_defaults(run=_serve)

    worker = sub.add_parser(
        "worker",
        help="run handler jobs from the database, as a process of its own",
        description="Claims due jobs from the database the web processes write, woken by "
        "PostgreSQL's NOTIFY (or a commit to the SQLite file) and polling at most every 250 ms. "
        "Run any number of them. SIGTERM/SIGINT stop claiming, wait for running jobs up to "
        "the drain deadline ([worker] drain_s), then hand the rest back. Run the web process "
        "with RECEIVER_WORKER=off when this runs.",
    )
    _add_common(worker)
    worker.add_argument(
        "--concurrency", type=int, help="jobs at once ($RECEIVER_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(run=_worker)

    migrate = sub.add_parser(
        "migrate", help="bring the database's schema up to date, and exit",
        description="Applies the numbered migrations the database lacks (each once, even when "
        "several processes start together), for a Procfile release: phase. serve and worker "
        "also migrate at start.")
    _add_common(migrate)
    migrate.set_defaults(run=_migrate)

    prune = sub.add_parser(
        "prune", help="apply the retention policy: drop old raw bodies and finished jobs",
        description="Raw bodies of deliveries whose task is finished, and finished jobs (with "
        "their attempts), older than --older-than go; the delivery rows themselves (their ids "
        "deduplicate resent deliveries) stay until --keep-ids. Tasks, clips, transitions, "
        "files, results and quarantined deliveries stay.")
    _add_common(prune)
    prune.add_argument("--older-than", required=True, help="e.g. 90d, 12h")
    prune.add_argument("--keep-ids", default="400d",
                       help="how long delivery ids are kept (default 400d)")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.set_defaults(run=_prune)

    sub.add_parser("sandbox", help="run a local server that plays the Sonic API", add_help=False)
    sub.add_parser("replay", help="recover missed events: reconcile, redispatch, resend",
                   add_help=False)
    sub.add_parser("demo", help="run sandbox and receiver together, end to end", add_help=False)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="SQLite file or postgresql:// URL (default $RECEIVER_DB, $DATABASE_URL)")
    parser.add_argument("--config", type=Path, help="TOML config file (default $RECEIVER_CONFIG)")
    parser.add_argument("--media-dir", type=Path, help="media folder ($RECEIVER_MEDIA_DIR)")
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="($RECEIVER_LOG_FORMAT)"
    )


def _serve(args: argparse.Namespace) -> int:
    from receiver import server
    from receiver.app import create_app

    loaded = _load(args, insecure_no_verify=args.insecure_no_verify,
                   insecure_open_admin=True if args.insecure_open_admin else None)
    _announce_admin(loaded, args.host, args.port)
    if args.workers < 1:
        raise SettingsError("--workers must be at least 1")
    if args.workers > 1:
        _check_database(loaded)
        with _shared_metrics():
            return server.serve_processes(loaded, create_app, host=args.host, port=args.port,
                                          processes=args.workers, configure=configure_logs)
    server.serve(create_app(loaded), host=args.host, port=args.port, settings=loaded)
    return 0


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """Several web processes: unless the operator shares a folder for the metrics each process
    observes (``PROMETHEUS_MULTIPROC_DIR``, with a separate worker too), give them an empty one
    of their own, so that a scrape, whichever process answers it, sums all of them. Set in the
    environment before the children start: prometheus_client picks its mode at import."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="sonic-receiver-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _positive(text: str) -> int:
    try:
        return max(1, int(text))
    except ValueError:
        return 1


def _check_database(loaded: Settings) -> None:
    """Open the database once (and migrate it) before starting several processes: one that
    cannot be opened stops start-up with one line, not once per child."""
    import asyncio

    from receiver.storage.roles import storage_for

    async def run() -> None:
        async with storage_for(loaded):
            pass

    asyncio.run(run())


def _announce_admin(loaded: Settings, host: str, port: int) -> None:
    """Say where the admin API is and how to call it: where the token is kept, never the
    token (a log line, and a plain line for a person at a terminal)."""
    import structlog

    from receiver.auth import how_to_use

    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    line = how_to_use(loaded, f"http://{f'[{shown}]' if ':' in shown else shown}:{port}")
    log = structlog.get_logger("receiver.cli")
    (log.warning if loaded.admin_open else log.info)(
        "admin_api", token=loaded.admin_token_source if loaded.admin_token else None,
        open=loaded.admin_open, how=line,
    )
    if sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace, **extra: object) -> Settings:
    from receiver import settings

    loaded = settings.load(
        config_file=args.config,
        overrides={
            "db": args.db,
            "media_dir": args.media_dir,
            "log_format": args.log_format,
            **extra,
        },
    )
    configure_logs(loaded)
    return loaded


def configure_logs(loaded: Settings) -> None:
    """The process's logging, as the settings say (also run first in each web process)."""
    from receiver import logs

    logs.configure(fmt=loaded.log_format, level=loaded.log_level,
                   third_party_level=loaded.log_level_third_party, secrets=loaded.secrets())


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.server import settle_failed_connections
    from receiver.worker_process import run_worker

    # A worker needs no webhook secret: it never verifies anything.
    loaded = _load(args, worker_concurrency=args.concurrency, insecure_no_verify=True)

    async def run() -> int:
        try:
            return await run_worker(loaded)
        except StoreError:
            await settle_failed_connections()
            raise

    return asyncio.run(run())


def _migrate(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.storage.roles import storage_for

    loaded = _load(args, insecure_no_verify=True)

    async def run() -> str:
        async with storage_for(loaded) as storage:
            return storage.describe()

    print(f"sonic-receiver: schema up to date: {asyncio.run(run())}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import json

    from receiver.settings import parse_duration
    from receiver.storage.roles import storage_for

    loaded = _load(args, insecure_no_verify=True)
    older = parse_duration("--older-than", args.older_than)
    keep = parse_duration("--keep-ids", args.keep_ids)
    if keep < older:
        raise SettingsError("--keep-ids must be at least --older-than")

    async def run() -> dict[str, object]:
        async with storage_for(loaded) as storage:
            report = await storage.admin.prune(older_than_s=older, keep_ids_s=keep,
                                       dry_run=args.dry_run)
            return dataclasses.asdict(report)

    print(json.dumps(asyncio.run(run())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in FORWARDED:
        return FORWARDED[args[0]](args[1:])
    parsed = build_parser().parse_args(args)
    try:
        code: int = parsed.run(parsed)
    except ReceiverError as exc:
        print(f"sonic-receiver: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    return code
