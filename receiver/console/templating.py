"""How the console's templates show what a payload carried: every value is data.

The one Jinja environment of the pages (autoescaped), with the filters that make a stored value
safe and readable wherever it goes:

- Text: every ``{{ value }}`` passes :func:`visible`, which shows bidi control characters as
  a visible mark (``⟦U+202E⟧``) so that a title or an id cannot show text that differs from
  its value. ``| exact`` keeps a value as it is (escaped) for an attribute that must carry it
  unchanged (a form's hidden id).
- Links: a URL from a payload becomes a link only when it is ``http(s)`` (``| http_url``);
  ids are percent-encoded into a path segment (``| task_href``, ``| delivery_href``), and an
  id a path cannot hold (``.``, ``..``, empty) goes in a query string instead.
- Long values are cut with the whole value a tap away (``| cut``); sizes are human
  (``| size``: 1.1 MB); times show both the absolute UTC time and how long ago
  (``| moment``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from receiver.alerts import TITLES

HERE = Path(__file__).parent
DASH = "\N{EN DASH}"
# Characters that reorder the text around them: shown, never obeyed.
BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# A URL a browser may follow as it is: http(s), a host, no whitespace or control character.
_HTTP_URL = re.compile(r"^https?://[^\s/?#\\]+[^\s\\]*$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def visible(value: str) -> str:
    """``value`` with each bidi control character shown as its code point."""
    return BIDI.sub(lambda m: f"\u27e6U+{ord(m.group()):04X}\u27e7", value)


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return visible(value)


def exact(value: Any) -> Markup:
    """The value escaped but otherwise unchanged (for an attribute that must carry it)."""
    return escape("" if value is None else str(value))


def http_url(value: Any) -> str | None:
    """``value`` when a browser may be sent there (an ``http(s)`` URL with a host), else
    None: a ``javascript:``, ``data:`` or any other URL stays text."""
    if not isinstance(value, str) or _CONTROL.search(value) or not _HTTP_URL.match(value):
        return None
    parts = urlsplit(value)
    return value if parts.scheme.lower() in ("http", "https") and parts.hostname else None


def segment(value: str) -> str:
    """``value`` percent-encoded as one path segment (``/``, ``?``, ``#``, ``%`` included)."""
    return quote(value, safe="")


def _page_href(one: str, many: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if text in ("", ".", ".."):  # a path segment cannot hold these: browsers resolve them
        return f"/ui/{one}?{urlencode({'id': text})}"
    return f"/ui/{many}/{segment(text)}"


def task_href(task_id: Any) -> str:
    return _page_href("task", "tasks", task_id)


def delivery_href(delivery_id: Any) -> str:
    return _page_href("delivery", "deliveries", delivery_id)


def file_href(task_id: str, clip_id: str, kind: str) -> str:
    """A kept file, through the console (any id works in a query string)."""
    return "/ui/file?" + urlencode({"task_id": task_id, "clip_id": clip_id, "kind": kind})


def cover_href(task_id: str, clip_id: str) -> str:
    """A clip's cover art fetched by the receiver (never by the browser from the payload's
    URL)."""
    return "/ui/cover?" + urlencode({"task_id": task_id, "clip_id": clip_id})


def when(ts: float | None) -> str:
    if ts is None:
        return DASH
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(ts: float | None) -> str:
    """Hours and minutes (UTC), for the chart's axis."""
    return DASH if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def ago(ts: float | None, now: float) -> str:
    """How long before ``now``: ``just now``, ``42 s ago``, ``3 min ago``, ``5 h ago``,
    ``2 d ago`` (``in ...`` for a time to come)."""
    if ts is None:
        return DASH
    seconds = int(now - ts)
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            amount = f"{seconds // size} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"


def moment(ts: float | None, now: float) -> Markup:
    """A time as both: the UTC time and how long ago, each visible (touch screens have no
    tooltips). The "ago" part is a :func:`ticking` span."""
    if ts is None:
        return escape(DASH)
    iso = datetime.fromtimestamp(ts, UTC).isoformat()
    return Markup('<time datetime="{}" class="moment">{} ({})</time>').format(
        iso, when(ts), ticking(ts, now))


def ticking(ts: float | None, now: float) -> Markup:
    """How long ago, in a span the page's script keeps current (``data-at``) and that live
    updates ignore when they compare a block with the last one sent: a block is sent again
    when what it shows changed, not because time passed."""
    if ts is None:
        return escape(DASH)
    return Markup('<span class="ago" data-at="{:.3f}">{}</span>').format(ts, ago(ts, now))


def tick(value: Any) -> Markup:
    """Any text that changes with the clock alone (see :func:`ticking`)."""
    return Markup('<span class="tick">{}</span>').format(visible(str(value)))


# what differs between two renderings of one block only because time passed
TICKING = re.compile(r'<span class="(?:ago|tick)"[^>]*>[^<]*</span>')


def size(n: int | float | None) -> str:
    """Bytes as a person reads them (1.1 MB; powers of 1000, as file managers show)."""
    if n is None:
        return DASH
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            if unit == "bytes":
                return f"{int(value)} byte{'' if int(value) == 1 else 's'}"
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def cut(value: Any, n: int = 80) -> Markup:
    """A value shown whole when short; else its start, the whole of it a tap away."""
    if value is None:
        return escape(DASH)
    text = visible(str(value))
    if len(text) <= n:
        return escape(text)
    return Markup('<details class="cut"><summary>{}\N{HORIZONTAL ELLIPSIS} '
                  '<span class="more">({} characters)</span></summary>'
                  '<div class="whole">{}</div></details>').format(text[:n], len(text), text)


def short(value: str | None, n: int = 8) -> str:
    if value is None:
        return DASH
    return value if len(value) <= n + 2 else value[:n] + "\N{HORIZONTAL ELLIPSIS}"


def alert_title(rule: str) -> str:
    """An alert rule's name as people read it (``jobs_dead`` → ``Jobs dead``)."""
    title = TITLES.get(rule, rule.replace("_", " "))
    return title[:1].upper() + title[1:]


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def environment() -> Environment:
    """The pages' Jinja environment."""
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                      autoescape=select_autoescape(default=True), finalize=_finalize,
                      auto_reload=False)
    env.filters.update(
        when=when, clock=clock, ago=ago, moment=moment, ticking=ticking, tick=tick, size=size,
        cut=cut, short=short,
        pretty=pretty, exact=exact, http_url=http_url, task_href=task_href,
        delivery_href=delivery_href, file_href=file_href, cover_href=cover_href,
        segment=segment, visible=visible, alert_title=alert_title)
    return env
