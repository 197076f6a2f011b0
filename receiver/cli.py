"""The ``sonic-receiver`` command (also ``python -m receiver``).

``serve`` runs the receiver; ``sandbox`` (in :mod:`receiver.sonic.cli`) takes the rest of the
command line as its own, so that each module owns its options. A bad setting stops start-up
with one line on stderr and exit status 2, and so does a database that cannot be opened.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from receiver.errors import SettingsError, StoreError
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
        "--insecure-open-admin",
        action="store_true",
        help="serve the admin API (/tasks, /jobs) without a token to anyone who reaches the "
        "port ($RECEIVER_INSECURE_OPEN_ADMIN=1); set RECEIVER_ADMIN_TOKEN instead",
    )
    serve.set_defaults(run=_serve)

    worker = sub.add_parser(
        "worker",
        help="run handler jobs from the database, as a process of its own",
        description="Claims due jobs from the SQLite file the web process writes, polling at "
        "most every 250 ms. SIGTERM/SIGINT stop claiming, wait for running jobs up to the drain "
        "deadline ([worker] drain_s), then hand the rest back. Run the web process with "
        "RECEIVER_WORKER=off when this runs.",
    )
    _add_common(worker)
    worker.add_argument(
        "--concurrency", type=int, help="jobs at once ($RECEIVER_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(run=_worker)

    sub.add_parser("sandbox", help="run a local server that plays the Sonic API", add_help=False)
    sub.add_parser("replay", help="recover missed events: reconcile, redispatch, resend",
                   add_help=False)
    sub.add_parser("demo", help="run sandbox and receiver together, end to end", add_help=False)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="SQLite file (default $RECEIVER_DB)")
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
    server.serve(create_app(loaded), host=args.host, port=args.port, settings=loaded)
    return 0


def _announce_admin(loaded: Settings, host: str, port: int) -> None:
    """Say where the admin API is and how to call it: where the token is kept, never the
    token (a log line, and a plain line for a person at a terminal)."""
    import structlog

    from receiver.auth import how_to_use

    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    line = how_to_use(loaded, f"http://{f'[{shown}]' if ':' in shown else shown}:{port}")
    structlog.get_logger("receiver.cli").info(
        "admin_api", token=loaded.admin_token_source if loaded.admin_token else None,
        open=loaded.admin_open, how=line,
    )
    if sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace, **extra: object) -> Settings:
    from receiver import logs, settings

    loaded = settings.load(
        config_file=args.config,
        overrides={
            "db": args.db,
            "media_dir": args.media_dir,
            "log_format": args.log_format,
            **extra,
        },
    )
    logs.configure(fmt=loaded.log_format, level=loaded.log_level,
                   third_party_level=loaded.log_level_third_party, secrets=loaded.secrets())
    return loaded


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.worker_process import run_worker

    # A worker needs no webhook secret: it never verifies anything.
    loaded = _load(args, worker_concurrency=args.concurrency, insecure_no_verify=True)
    return asyncio.run(run_worker(loaded))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in FORWARDED:
        return FORWARDED[args[0]](args[1:])
    parsed = build_parser().parse_args(args)
    try:
        code: int = parsed.run(parsed)
    except (SettingsError, StoreError) as exc:
        print(f"sonic-receiver: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    return code
