"""What a benchmark hands back: a table for people, and JSON for tools."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Report:
    """One benchmark's outcome: ``rows`` under ``columns``, ``notes`` under the table, and
    ``data`` (everything measured) for the JSON file."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated between ranks; NaN when
    there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(report: Report) -> str:
    """The report as a Markdown table (readable on a terminal, pasteable in a README)."""
    cells = [[cell(v) for v in row] for row in report.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(report.columns)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [f"### {report.title}", "", line(report.columns),
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    out += [""] + [f"- {note}" for note in report.notes]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def emit(report: Report, out_dir: Path, *, options: dict[str, Any]) -> Path:
    """Print the table and write ``<out_dir>/<name>.json``; returns the JSON file's path."""
    print(table(report), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report.name}.json"
    document = {
        "name": report.name,
        "title": report.title,
        "machine": machine(),
        "options": options,
        "columns": list(report.columns),
        "rows": [list(r) for r in report.rows],
        "notes": report.notes,
        "data": report.data,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"(written to {path})\n", flush=True)
    return path
