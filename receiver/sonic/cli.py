"""``sonic-receiver sandbox``: serve the Sonic sandbox until interrupted.

    sonic-receiver sandbox --port 8600 --api-key KEY [--api-key KEY2] --credits 1000 \\
        --speed demo --seed 7 --drop-event 1:song.completed --spell succeeded=completed \\
        --expire-links 20 --media-fault html --media-fault-times 1

Logs are structlog JSON lines on stderr; the first, ``sandbox_listening``, gives the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

import structlog
import uvicorn

from receiver import logs, server
from receiver.sonic.sandbox.app import create_sandbox_app
from receiver.sonic.sandbox.config import DEFAULT_API_KEY, DEFAULT_CREDITS, SandboxConfig, Speed
from receiver.sonic.sandbox.faults import (
    FaultConfig,
    FaultConfigError,
    Faults,
    MediaFaultKind,
    parse_event_drop,
    parse_spelling,
)

log = structlog.get_logger("receiver.sonic.sandbox")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonic-receiver sandbox",
        description="Serve a local stand-in for the Sonic API: tasks, credits, signed webhooks, "
        "real audio, and faults on demand. Control endpoints live under /_sandbox/.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8600, help="port (default 8600; 0: any)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"an accepted API key; repeatable (default: {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--credits",
        type=int,
        default=DEFAULT_CREDITS,
        help=f"credits each key starts with (default {DEFAULT_CREDITS})",
    )
    parser.add_argument(
        "--speed",
        choices=[s.value for s in Speed],
        default=Speed.DEMO.value,
        help="instant (tests), demo (seconds, default) or realistic (minutes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for ids and faults")
    parser.add_argument(
        "--public-url", help="base of media URLs (default: the host each request came to)"
    )
    parser.add_argument(
        "--legacy-signature",
        action="store_true",
        help="also sign webhooks with the older X-Signature header",
    )
    parser.add_argument("--webhook-attempts", type=int, default=5, help="attempts per delivery")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    others = parser.add_argument_group(
        "the other providers it plays under /<provider>/ (receiver.sonic.sandbox.providers)")
    others.add_argument("--kie-hmac-key", metavar="KEY",
                        help="kie.ai's webhookHmacKey: sign kie's callbacks (default: unsigned)")
    others.add_argument("--aimlapi-secret", metavar="WHSEC",
                        help="AIMLAPI's Standard Webhooks secret (whsec_...; default: the "
                        "sandbox's own)")
    others.add_argument("--failure-code", type=int, default=501, metavar="CODE",
                        help="the code a failed task's sunoapi.org-shaped callback carries "
                        "(400, 408, 413, 501, 531; default 501)")

    faults = parser.add_argument_group("faults (global; per key with --faults or PUT /_sandbox)")
    faults.add_argument("--fail-tasks", type=float, default=0.0, metavar="P")
    faults.add_argument("--duplicate", type=float, default=0.0, metavar="P")
    faults.add_argument("--reorder", type=float, default=0.0, metavar="P")
    faults.add_argument("--drop", type=float, default=0.0, metavar="P")
    faults.add_argument(
        "--drop-event",
        action="append",
        default=[],
        metavar="TASK:EVENT",
        help="drop one event, e.g. 1:song.completed (the first task's); repeatable",
    )
    faults.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
    faults.add_argument("--bad-signature", type=float, default=0.0, metavar="P")
    faults.add_argument(
        "--media-fault",
        choices=[k.value for k in MediaFaultKind],
        help="media answers: 500, a body cut short, slow, a redirect, an HTML page or no bytes "
        "under the media's type (html, empty), audio a quarter as long as declared (short)",
    )
    faults.add_argument("--media-fault-rate", type=float, default=1.0, metavar="P")
    faults.add_argument("--media-fault-times", type=int, metavar="N")
    faults.add_argument("--media-fault-url", metavar="URL", help="redirect target")
    faults.add_argument(
        "--expire-links",
        type=float,
        metavar="SECONDS",
        help="media links answer 403 once this old (a webhook's count from its event); "
        "get-music gives fresh ones",
    )
    faults.add_argument(
        "--placeholder-for",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a succeeded clip's audio_url is .../None.mp3 for this long after its task settles",
    )
    faults.add_argument(
        "--placeholder-on-failed",
        action="store_true",
        help="a failed clip carries .../None.mp3 as its audio_url",
    )
    faults.add_argument(
        "--spell",
        action="append",
        default=[],
        metavar="STATE=SPELLING",
        help="answers spell a clip state otherwise, e.g. succeeded=completed; repeatable",
    )
    faults.add_argument(
        "--faults",
        metavar="JSON|@FILE",
        help='the whole fault setup, {"global": {...}, "keys": {"KEY": {...}}}, as GET '
        "/_sandbox/faults answers and PUT /_sandbox/faults takes; overrides the flags above",
    )
    return parser


def build_config(args: argparse.Namespace) -> SandboxConfig:
    """The config the options describe; raises ``FaultConfigError`` on a bad fault setup."""
    media: dict[str, object] | None = None
    if args.media_fault:
        media = {
            "kind": args.media_fault,
            "rate": args.media_fault_rate,
            "times": args.media_fault_times,
            "url": args.media_fault_url,
        }
    global_faults = FaultConfig.from_json(
        {
            "fail_tasks": args.fail_tasks,
            "duplicate": args.duplicate,
            "reorder": args.reorder,
            "drop": args.drop,
            "delay_s": args.delay,
            "bad_signature": args.bad_signature,
            "media": media,
            "links": {
                "expire_s": args.expire_links,
                "placeholder_s": args.placeholder_for,
                "placeholder_failed": args.placeholder_on_failed,
            },
            "spellings": dict(parse_spelling(text) for text in args.spell),
        }
    )
    drops = tuple(parse_event_drop(text) for text in args.drop_event)
    global_faults = replace(global_faults, drop_events=global_faults.drop_events + drops)
    key_faults: dict[str, FaultConfig] = {}
    if args.faults:
        text = args.faults
        if text.startswith("@"):
            text = Path(text[1:]).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaultConfigError(f"--faults is not JSON: {exc}") from None
        loaded = Faults(seed=args.seed)
        loaded.load(data)
        global_faults, key_faults = loaded.global_config, loaded.by_key
    if args.credits < 0:
        raise FaultConfigError("--credits must be >= 0")
    keys = args.api_keys or [DEFAULT_API_KEY]
    return SandboxConfig(
        api_keys=dict.fromkeys(keys, args.credits),
        speed=Speed(args.speed),
        seed=args.seed,
        public_base_url=args.public_url,
        faults=global_faults,
        key_faults=key_faults,
        legacy_signature=args.legacy_signature,
        webhook_attempts=args.webhook_attempts,
        failure_code=args.failure_code,
        kie_hmac_key=args.kie_hmac_key,
        **({"aimlapi_secret": args.aimlapi_secret} if args.aimlapi_secret else {}),
    )


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    # uvicorn's own Server (it handles SIGINT/SIGTERM), started here so the bound port can be
    # logged even when the OS picked it (--port 0).
    uv = uvicorn.Server(
        server.config(create_sandbox_app(config), host=host, port=port, timeout_graceful_shutdown=5)
    )
    serving = asyncio.create_task(uv.serve())
    while not uv.started:
        if serving.done():
            break
        await asyncio.sleep(0.01)
    if uv.started:
        bound = [s.getsockname()[1] for srv in uv.servers for s in srv.sockets]
        log.info(
            "sandbox_listening",
            url=f"http://{host}:{bound[0]}",
            keys=len(config.api_keys),
            speed=config.speed,
        )
    await serving


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = build_config(args)
    except (FaultConfigError, OSError) as exc:
        print(f"sonic-receiver sandbox: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(fmt=args.log_format)
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except KeyboardInterrupt:
        return 130
    return 0
