"""``python -m scripts.benchmarks [NAME ...] [--quick] [options]`` (what ``scripts/bench``
runs): each named benchmark in turn (default: all four), a table each on stdout and
``<out>/<name>.json``."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from scripts.benchmarks.processes import ROOT
from scripts.benchmarks.report import emit, machine

NAMES = ("ingest", "dispatch", "download", "reconcile", "media")


def modules() -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"scripts.benchmarks.{name}") for name in NAMES}


def build_parser(found: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of sonic-receiver against a baseline measured in the same run. "
        "All load stays on 127.0.0.1.",
    )
    parser.add_argument("names", nargs="*", choices=[[], *NAMES], metavar="NAME",
                        help=f"benchmarks to run: {', '.join(NAMES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and shorter durations (about 1-2 min for all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results",
                        help="where the JSON results go (default bench-results/)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (databases, server logs) and print it")
    for module in found.values():
        module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    found = modules()
    options = build_parser(found).parse_args(argv)
    names = options.names or list(NAMES)
    about = machine()
    print(f"sonic-receiver benchmarks: {', '.join(names)}"
          f"{' (quick)' if options.quick else ''} on {about['nproc']} CPUs, "
          f"Python {about['python']}\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sonic-bench-"))
    began = time.monotonic()
    try:
        for name in names:
            print(f"== {name}", flush=True)
            folder = work / name
            folder.mkdir()
            report = found[name].run(options, folder)
            emit(report, options.out, options=vars(options) | {"out": str(options.out)})
    finally:
        if options.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
