"""Parsing a verified callback body into a :class:`Callback`.

Tolerant of every variant the upstream is known to send: ``duration`` as a number or a decimal
string, ``task_id``/``platform``/``event`` present or absent, ``code`` as a number or a string,
unknown fields (kept in each clip's ``raw``). Strict about structure: a body that is not UTF-8
JSON, not an object, whose ``data`` is not a list of objects with a ``clip_id``, or that names
neither a task nor a clip, raises :class:`PayloadError` with the reason (the delivery is then
kept raw as quarantined).

Whatever the bytes, parsing ends in a :class:`Callback` or a :class:`PayloadError`, never in
another exception, and nothing it returns can fail later when stored or served as JSON:

- values JSON cannot carry faithfully are read as ``null`` (the field is dropped): ``NaN`` and
  ``Infinity``, a number too large for a float (``1e400``), an integer of more than
  :data:`MAX_INT_DIGITS` digits (Python's own limit would raise while parsing);
- a string holding a lone surrogate (``"\\ud800"``: not Unicode text, refused by SQLite and by
  UTF-8) is read as ``null``, and an object key holding one drops its entry;
- a body nested deeper than :data:`MAX_DEPTH` levels is not usable.

The raw body is always kept as it came: only the parsed view is cleaned.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from receiver.errors import PayloadError
from receiver.states import EVENT_STATE, State, WebhookEvent

log = structlog.get_logger("receiver.payloads")

# CPython's default limit on int <-> str conversions: a longer integer would raise (or, with the
# limit lifted, make every later json.dumps slow), so it is read as null whatever the setting.
MAX_INT_DIGITS = 4300
# Deeper bodies are not callbacks; the limit keeps json.dumps of a clip's data, and every
# walk over it, far from the recursion limit.
MAX_DEPTH = 64
_MAX_ID = 256
_MAX_CODE = 10**9
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
# _fast_load's check for long integers: every digit mapped to "0", every other byte to " ".
_DIGIT_MAP = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_DIGITS = b"0" * 19
_SLOW: Any = object()  # _fast_load's "read it with the careful path"

# Spellings of clip states seen across the service's generations, beyond the four documented.
_STATE_ALIASES = {
    "queued": State.PENDING,
    "submitted": State.PENDING,
    "streaming": State.RUNNING,
    "processing": State.RUNNING,
    "complete": State.SUCCEEDED,
    "completed": State.SUCCEEDED,
    "success": State.SUCCEEDED,
    "error": State.FAILED,
}
# Lookups by name (an enum's constructor costs about ten times a dict's get).
_STATES = {**{s.value: s for s in State}, **_STATE_ALIASES}
_EVENTS = {e.value: e for e in WebhookEvent}


@dataclass(frozen=True, kw_only=True)
class ClipReport:
    """A clip as one callback reports it. ``state`` is None when the clip names no state we
    know; ``raw`` is the whole clip object, unknown fields included."""

    clip_id: str
    state: State | None
    title: str | None = None
    tags: str | None = None
    lyrics: str | None = None
    audio_url: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    duration: float | None = None
    mv: str | None = None
    created_at: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, kw_only=True)
class Callback:
    """A usable callback body. ``task_id`` is None when neither the body nor the webhook URL
    named the task: the store then looks it up by clip."""

    task_id: str | None
    event: WebhookEvent | None
    platform: str | None
    code: int | None
    message: str | None
    clips: tuple[ClipReport, ...]

    def reported_states(self) -> dict[str, State]:
        """Each reported clip's state; a clip without one takes the state its event implies,
        and with neither it is taken as pending."""
        implied = EVENT_STATE.get(self.event, State.PENDING) if self.event else State.PENDING
        return {c.clip_id: c.state or implied for c in self.clips}

    @property
    def failure(self) -> str | None:
        """Why the task failed, when this callback says it did."""
        if self.event is WebhookEvent.FAILED or any(c.state is State.FAILED for c in self.clips):
            reasons = [_text(c.raw.get("error_message")) for c in self.clips]
            return next((r for r in reasons if r), None) or self.message or "failed"
        return None


def parse_event(value: str | None) -> WebhookEvent | None:
    """``song.completed`` (or ``completed``) → the event; anything else → None."""
    if not value:
        return None
    name = value.strip().lower()
    if not name.startswith("song."):
        name = "song." + name
    return _EVENTS.get(name)


def parse_callback(
    body: bytes, *, event_header: str | None = None, task_id_hint: str | None = None
) -> Callback:
    """Parse ``body``; ``event_header`` (X-Webhook-Event) wins over the body's ``event``,
    the body's ``task_id`` wins over ``task_id_hint`` (the webhook URL's ``?task_id=``)."""
    document = _fast_load(body)
    if document is _SLOW:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("body is not UTF-8") from None
        document = _load(text)
    if not isinstance(document, dict):
        raise PayloadError(f"body is a JSON {_kind(document)}, not an object")

    data = document.get("data")
    if data is None:
        items: list[Any] = []
    elif isinstance(data, list):
        items = data
    elif isinstance(data, dict) and ("clip_id" in data or "id" in data):
        items = [data]  # a single clip sent bare
    else:
        raise PayloadError(f"data is a JSON {_kind(data)}, not a list of clips")
    clips = tuple(_clip(item, index) for index, item in enumerate(items))
    if len({c.clip_id for c in clips}) != len(clips):
        raise PayloadError("data lists the same clip_id twice")

    task_id = _identifier(document.get("task_id")) or _identifier(task_id_hint)
    if task_id is None and not clips:
        raise PayloadError("no task_id (in the body or ?task_id=) and no clips")
    return Callback(
        task_id=task_id,
        event=parse_event(event_header) or parse_event(_text(document.get("event"))),
        platform=_text(document.get("platform")),
        code=_code(document.get("code")),
        message=_text(document.get("message")),
        clips=clips,
    )


def try_parse(
    body: bytes, *, event_header: str | None = None, task_id_hint: str | None = None
) -> tuple[Callback | None, str | None]:
    """``(callback, None)``, or ``(None, why it cannot be used)``; never raises, so that a
    verified body is always kept (an unforeseen error is logged and the body quarantined)."""
    try:
        return parse_callback(body, event_header=event_header, task_id_hint=task_id_hint), None
    except PayloadError as exc:
        return None, exc.message
    except Exception as exc:  # a bug here must not lose a verified delivery
        log.exception("payload_parser_failed", error_type=type(exc).__name__)
        return None, f"internal error while parsing: {type(exc).__name__}"


def _fast_load(body: bytes) -> Any:
    """``body`` read by orjson when that gives what :func:`_load` would, else :data:`_SLOW`.

    orjson refuses (so the careful path decides) everything :func:`_load` must clean: invalid
    UTF-8, lone surrogates, ``NaN``/``Infinity``, floats beyond the range. Two differences
    remain, checked on the bytes: an integer of 20 or more digits becomes a float in orjson
    (any run of 19 digits takes the careful path), and orjson nests far deeper than
    :data:`MAX_DEPTH` (a body with more brackets than that is walked)."""
    if _LONG_DIGITS in body.translate(_DIGIT_MAP):
        return _SLOW
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _SLOW
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        return _clean(document, 0, False)
    return document


def _load(text: str) -> Any:
    """``text`` as JSON, cleaned as the module docstring says."""
    try:
        document = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise PayloadError("body is not JSON") from None
    # Only a \uD8xx-\uDFxx escape can put a surrogate in a string decoded from strict UTF-8.
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    return _clean(document, 0, surrogates)


def _no_constant(name: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON numbers


def _finite_float(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None


def _bounded_int(text: str) -> int | None:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return None
    try:
        return int(text)
    except ValueError:  # the interpreter's limit was set lower than ours
        return None


def _clean(value: Any, depth: int, surrogates: bool) -> Any:
    if isinstance(value, str):
        return value if not surrogates or is_text(value) else None
    if isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return [_clean(v, depth + 1, surrogates) for v in value]
        return {
            k: _clean(v, depth + 1, surrogates)
            for k, v in value.items()
            if not surrogates or is_text(k)
        }
    return value


def is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text (no lone surrogate), so that it can be encoded."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clip(item: Any, index: int) -> ClipReport:
    if not isinstance(item, dict):
        raise PayloadError(f"data[{index}] is a JSON {_kind(item)}, not a clip object")
    clip_id = _identifier(item.get("clip_id")) or _identifier(item.get("id"))
    if clip_id is None:
        raise PayloadError(f"data[{index}] has no clip_id")
    text = {name: value for name in _CLIP_TEXT if isinstance(value := item.get(name), str)}
    return ClipReport(
        clip_id=clip_id,
        state=parse_state(item.get("state") or item.get("status")),
        duration=parse_duration(item.get("duration")),
        raw=item,
        **text,
    )


# ClipReport's text fields: a string in the body, else None (the default).
_CLIP_TEXT = ("title", "tags", "lyrics", "audio_url", "image_url", "video_url", "mv",
              "created_at")


def parse_state(value: Any) -> State | None:
    if not isinstance(value, str):
        return None
    return _STATES.get(value.strip().lower())


def parse_duration(value: Any) -> float | None:
    """A number or a decimal string such as ``"104.88"``; anything else (or a non-finite or
    negative number) is unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range, 10**400 say
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _identifier(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)  # at most MAX_INT_DIGITS digits: see _bounded_int
        return text if len(text) <= _MAX_ID else None
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID and is_text(value):
        return value.strip()
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_MAX_CODE < value < _MAX_CODE else None
    if isinstance(value, str):
        text = value.strip()
        # isdigit() alone accepts "²" and other digits int() refuses
        if text.isascii() and text.isdigit() and len(text) <= 9:
            return int(text)
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number"
    )
