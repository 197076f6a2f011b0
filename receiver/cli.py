"""The ``sonic-receiver`` command (also ``python -m receiver``).

``serve`` runs the receiver; ``sandbox`` (in :mod:`receiver.sonic.cli`) takes the rest of the
command line as its own, so that each module owns its options. Every command that runs the
receiver (``serve``, ``worker``, ``migrate``, ``prune``) first loads the settings and checks the
whole config file against the installed handlers, before it opens anything; ``config check``
does that alone, for a deploy pipeline, and ``config schema`` prints the file's JSON Schema. A
bad setting stops with one line on stderr and exit status 2, and so does a database that cannot
be opened.
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
# The settings' keys whose flag is not --the-key: an error names the flag the user typed.
FLAG_NAMES = {"web_concurrency": "--workers", "worker_concurrency": "--concurrency"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonic-receiver",
        description="A verified, durable webhook receiver for the Sonic music API. "
        "Settings come from the environment (see README), a TOML --config file, and options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve POST /webhooks/sonic and the read API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", help="port to bind (default $PORT, else 8000)")
    _add_common(serve)
    serve.add_argument(
        "--insecure-no-verify",
        action="store_true",
        help="accept webhooks without checking signatures (never in production)",
    )
    serve.add_argument(
        "--workers",
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
        "--concurrency", metavar="N", help="jobs at once ($RECEIVER_WORKER_CONCURRENCY)"
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

    config = sub.add_parser("config", help="check the config file, or print its JSON Schema")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="check a config file (and the environment) as start-up does, and exit",
        description="Loads the settings (environment over the file's [receiver] table) and "
        "every installed handler, then checks the whole file: exit 0 with one line when it "
        "can start, 2 with one line naming the bad key otherwise. Nothing is opened.")
    check.add_argument("file", nargs="?", type=Path,
                       help="the TOML config file (default $RECEIVER_CONFIG)")
    check.set_defaults(run=_config_check)
    schema = config_sub.add_parser(
        "schema", help="print the config file's JSON Schema",
        description="The JSON Schema (2020-12) of receiver.toml for the installed handlers "
        "(and those of FILE's [handlers] paths), for editors and CI.")
    schema.add_argument("file", nargs="?", type=Path,
                        help="a config file whose [handlers] paths to include")
    schema.set_defaults(run=_config_schema)

    sub.add_parser("sandbox", help="run a local server that plays the Sonic API", add_help=False)
    sub.add_parser("replay", help="recover missed events: reconcile, redispatch, resend",
                   add_help=False)
    sub.add_parser("demo", help="run sandbox and receiver together, end to end", add_help=False)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="SQLite file or postgresql:// URL (default $RECEIVER_DB, $DATABASE_URL)")
    parser.add_argument("--config", type=Path, help="TOML config file (default $RECEIVER_CONFIG)")
    parser.add_argument(
        "--media", metavar="PATH|URL",
        help="where downloads are kept: a folder, file:///path, s3://bucket/prefix, gs://, "
        "az:// ($RECEIVER_MEDIA)")
    parser.add_argument("--media-dir", type=Path,
                        help="a media folder: the older name of --media ($RECEIVER_MEDIA_DIR)")
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="($RECEIVER_LOG_FORMAT)"
    )


def _serve(args: argparse.Namespace) -> int:
    loaded = _load(args, insecure_no_verify=args.insecure_no_verify,
                   insecure_open_admin=True if args.insecure_open_admin else None,
                   port=args.port, web_concurrency=args.workers)
    # The app and the server load after the check: a bad file stops before they are imported.
    from receiver import server
    from receiver.app import create_app

    # A database that cannot be opened stops start-up here, with one line, before uvicorn
    # starts (and says nothing) or any child process does.
    _check_database(loaded)
    _announce_admin(loaded, args.host, loaded.port)
    if loaded.web_concurrency > 1:
        with _shared_metrics():
            return server.serve_processes(loaded, create_app, host=args.host, port=loaded.port,
                                          processes=loaded.web_concurrency,
                                          configure=configure_logs)
    server.serve(create_app(loaded), host=args.host, port=loaded.port, settings=loaded)
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


def _check_database(loaded: Settings) -> None:
    """Open the database once (and migrate it) before serving: one that cannot be opened stops
    start-up with one line, not after uvicorn's own lines, nor once per child."""
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
    """The settings, once the whole config file is checked against the installed handlers."""
    from receiver import settings
    from receiver.schema import idle_tables, load_checked

    loaded = settings.load(
        config_file=args.config,
        overrides={
            "db": args.db,
            "media": args.media,
            "media_dir": args.media_dir,
            "log_format": args.log_format,
            **extra,
        },
        flag_names=FLAG_NAMES,
    )
    registry = load_checked(loaded.config)
    configure_logs(loaded)
    idle = idle_tables(loaded.config, registry)
    if idle:
        import structlog

        structlog.get_logger("receiver.cli").warning(
            "handler_table_unused", tables=idle, why=_idle_why(idle))
    return loaded


def _idle_why(idle: list[str]) -> str:
    names = ", ".join(f"[{name}]" for name in idle)
    return (f"{names} {'is' if len(idle) == 1 else 'are'} set but no route lists "
            f"{' or '.join(idle)}: list it in a route's handlers, or it does nothing")


def _config_check(args: argparse.Namespace) -> int:
    from receiver import settings
    from receiver.schema import idle_tables, load_checked

    file = args.file or (Path(os.environ["RECEIVER_CONFIG"])
                         if os.environ.get("RECEIVER_CONFIG") else None)
    if file is None:
        raise SettingsError("no config file: give FILE or set RECEIVER_CONFIG")
    # Whether a webhook secret is set is the server's concern, not the file's.
    loaded = settings.load(config_file=args.file, overrides={"insecure_no_verify": True})
    registry = load_checked(loaded.config)
    if loaded.alert_targets:  # as serve checks them at start
        from receiver.alerts import check_targets

        check_targets(loaded.alert_targets)
    routes = loaded.config.get("routes")
    count = ("the default routes" if routes is None
             else f"{len(routes)} route{'' if len(routes) == 1 else 's'}")
    print(f"sonic-receiver: {file}: OK ({count}; handlers: {', '.join(registry.names)})")
    idle = idle_tables(loaded.config, registry)
    if idle:
        print(f"sonic-receiver: {file}: note: {_idle_why(idle)}")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    import json

    from receiver.registry import load_registry
    from receiver.schema import schema
    from receiver.settings import read_config

    registry = load_registry(read_config(args.file) if args.file else {})
    print(json.dumps(schema(registry), indent=2, ensure_ascii=False))
    return 0


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

    from receiver.conversion import Duration, convert
    from receiver.storage.roles import storage_for

    loaded = _load(args, insecure_no_verify=True)
    older = convert(args.older_than, Duration, path="--older-than")
    keep = convert(args.keep_ids, Duration, path="--keep-ids")
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
