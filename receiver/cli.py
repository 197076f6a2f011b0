"""The ``sonic-receiver`` command: ``serve``, ``sandbox`` and the commands of later issues.

Subcommands that live elsewhere (``sandbox`` in :mod:`receiver.sonic.cli`) take the rest of the
command line as their own, so each module owns its options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Forwarded = Callable[[list[str]], int]


def _sandbox(argv: list[str]) -> int:
    from receiver.sonic.cli import main as sandbox_main

    return sandbox_main(argv)


FORWARDED: dict[str, Forwarded] = {"sandbox": _sandbox}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonic-receiver",
        description="A verified, durable webhook receiver for the Sonic music API.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (("sandbox", "run a local server that plays the Sonic API"),):
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in FORWARDED:
        return FORWARDED[args[0]](args[1:])
    build_parser().parse_args(args)
    return 2
