"""Logging: structlog, configured once by the process that owns it (never at import).

JSON lines in production (one object a line, on stderr), a readable console on a TTY. The
standard library's loggers (uvicorn's among them) go through the same renderer, and every line
carries the ids bound with :func:`structlog.contextvars.bound_contextvars` (the webhook passes
a delivery's ids to its one line directly: binding costs more than the line).

In JSON mode our own lines take structlog's short path: a filtering bound logger (a level
below the threshold costs one method call), the processors, orjson, and one write of bytes to
stderr; not the standard library's records, handlers and formatter, which cost as much again
(``scripts/benchmarks/README.md``). Third-party lines keep that path, with the same processors.

Every line, ours and third-party, passes one redaction step (:func:`redact_processor`, last
before rendering; for our JSON lines, :func:`render_redacted` renders first and scrubs only a
line that holds a URL or a secret): URLs lose their userinfo, query and fragment, and the
process's secrets (registered by :func:`configure`) are blanked. Third-party loggers (httpx,
apprise, ...) stay at ``warning`` unless asked for otherwise, and a line repeated in a flood
(asyncio's "socket.accept() out of system resource", once per accept attempt) is written at most
once per window.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

from receiver import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# Libraries that log requests, URLs, statements or notification targets at info/debug level:
# httpx/httpcore print every request line with its query (presigned CDN signatures), apprise
# and urllib3 print notification URLs, aiosqlite every statement with its parameters.
THIRD_PARTY = ("httpx", "httpcore", "apprise", "urllib3", "aiosqlite", "hpack", "asyncio",
               "multipart", "charset_normalizer", "mutagen", "aiosmtpd", "mail.log")
# Loggers whose repeated identical lines are rate-limited (see FloodFilter).
FLOODABLE = ("asyncio", "uvicorn", "uvicorn.error", "receiver.connections")


def redact_value(value: Any) -> Any:
    """``value`` with every string in it scrubbed (:func:`receiver.redact.scrub_text`)."""
    if isinstance(value, str):
        return redact.scrub_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    # Anything else would be rendered with repr(): an httpx.URL, an exception...
    return redact.scrub_text(repr(value))


def redact_processor(_: Any, __: str, event_dict: structlog.typing.EventDict
                     ) -> structlog.typing.EventDict:
    """The redaction step every log line goes through, just before it is rendered."""
    return {key: redact_value(value) for key, value in event_dict.items()}


def render_redacted(logger: Any, name: str, event_dict: structlog.typing.EventDict) -> bytes:
    """Redaction and rendering in one step, for our own JSON lines: the line is rendered once
    and kept as it is when :func:`receiver.redact.clean` finds no URL and no secret in it (so
    that :func:`redact_processor` would change nothing: every line of a delivery); otherwise,
    or when a value is of a type orjson renders otherwise than its ``repr``, the values are
    scrubbed one by one and the line rendered again."""
    try:
        line = orjson.dumps(event_dict, default=_not_plain, option=_PLAIN)
    except TypeError:
        line = b""
    if line and redact.clean(line):
        return line
    return _dumps(redact_processor(logger, name, event_dict))


# Dates and dataclasses, which redact_value renders as repr(), go to _not_plain and so to the
# careful path; so do sets and unknown objects. (A plain Enum or a UUID, which orjson renders
# by value, is written by value on the fast path, by repr() on the careful one.)
_PLAIN = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _not_plain(value: Any) -> Any:
    raise TypeError(type(value).__name__)


class FloodFilter(logging.Filter):
    """Let through at most one record per ``window_s`` with the same logger, level and first
    line (from :data:`FLOODABLE` loggers); the next one let through says how many were held
    back. Other records pass untouched."""

    def __init__(self, window_s: float = 10.0, names: Iterable[str] = FLOODABLE) -> None:
        super().__init__()
        self.window_s = window_s
        self.names = frozenset(names)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in self.names or not isinstance(record.msg, str):
            return True
        try:
            first = record.getMessage().split("\n", 1)[0]
        except Exception:  # a bad format string is the formatter's problem, not ours
            return True
        key = (record.name, record.levelno, first)
        now = time.monotonic()
        with self._lock:
            since, held = self._seen.get(key, (0.0, 0))
            if since and now - since < self.window_s:
                self._seen[key] = (since, held + 1)
                return False
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} identical lines suppressed)"
            record.args = ()
        return True


def configure(*, fmt: str = "auto", level: str = "info", third_party_level: str = "warning",
              secrets: Iterable[str | None] = ()) -> None:
    """Send every log line of the process to stderr as JSON (``json``), for people
    (``console``), or by whether stderr is a terminal (``auto``). ``secrets`` are blanked in
    every line (and in errors scrubbed by :mod:`receiver.redact`)."""
    redact.register_secret(*secrets)
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    if console:
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.processors.format_exc_info, render_redacted],
            logger_factory=_NamedBytesLoggerFactory(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(
                _LEVELS.get(level, logging.INFO)),
            cache_logger_on_first_use=True,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text first (also on the console, whose pretty tracebacks
            # would show local variables), so that redaction sees them.
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(FloodFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(_LEVELS.get(third_party_level, logging.WARNING))
    # aiosqlite logs every statement with its parameters at debug level: job options may hold
    # notification URLs with tokens in them. Never below info, whatever the level asked.
    logging.getLogger("aiosqlite").setLevel(
        max(logging.INFO, _LEVELS.get(third_party_level, logging.WARNING))
    )


def _dumps(value: Any, **_: Any) -> bytes:
    return orjson.dumps(value, default=repr)


class _NamedBytesLogger(structlog.BytesLogger):
    """structlog's bytes logger with the name it was asked for (``add_logger_name`` reads
    ``logger.name``)."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedBytesLoggerFactory:
    """One :class:`_NamedBytesLogger` per name, all writing to ``stream``'s bytes (looked up
    at each call, so that a replaced ``sys.stderr`` is honoured as the stdlib handler would)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _NamedBytesLogger:
        name = str(args[0]) if args else "root"
        self._stream.flush()  # anything the text layer holds goes first
        return _NamedBytesLogger(self._stream.buffer, name)
