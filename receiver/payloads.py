"""Reading a verified callback body into a :class:`Callback`: the envelope around the clips.

Tolerant of every variant the upstream is known to send: ``task_id``/``platform``/``event``
present or absent, ``code`` as a number or a string, and whatever :mod:`receiver.clips` (the
one clip reader) accepts in the clips. Strict about structure: a body that is not UTF-8 JSON,
not an object, whose ``data`` is not a list of clips, or that names neither a task nor a clip,
raises :class:`PayloadError` with the reason (the delivery is then kept raw as quarantined).

Whatever the bytes, parsing ends in a :class:`Callback` or a :class:`PayloadError`, never in
another exception, and nothing it returns can fail later when stored or served as JSON (the
guarantees of :func:`receiver.clips.load`). The raw body is always kept as it came: only the
parsed view is cleaned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from receiver.clips import (
    ClipReport,
    json_kind,
    load,
    parse_code,
    parse_identifier,
    parse_text,
    read_clips,
)
from receiver.errors import PayloadError
from receiver.failures import FailureCategory
from receiver.states import EVENT_STATE, State, WebhookEvent

log = structlog.get_logger("receiver.payloads")

# What an envelope's message says when it gives no reason (the get-music shape's "success").
_NO_REASON = frozenset({"", "success", "ok"})
# Lookups by name (an enum's constructor costs about ten times a dict's get).
_EVENTS = {e.value: e for e in WebhookEvent}


@dataclass(frozen=True, kw_only=True)
class Callback:
    """A usable callback body. ``task_id`` is None when neither the body nor the webhook URL
    named the task: the store then looks it up by clip. ``failure_category``: what a
    provider's adapter read from its documented codes (None: the store classifies the code
    and message, :func:`receiver.failures.classify`)."""

    task_id: str | None
    event: WebhookEvent | None
    platform: str | None
    code: int | None
    message: str | None
    clips: tuple[ClipReport, ...]
    failure_category: FailureCategory | None = None

    def reported_states(self) -> dict[str, State]:
        """Each reported clip's state; a clip without one takes the state its event implies,
        and with neither it is taken as pending."""
        implied = EVENT_STATE.get(self.event, State.PENDING) if self.event else State.PENDING
        return {c.clip_id: c.state or implied for c in self.clips}

    @property
    def failure(self) -> str | None:
        """Why the task failed, when this callback says it did."""
        if self.event is WebhookEvent.FAILED or any(c.state is State.FAILED for c in self.clips):
            reasons = (c.error_message for c in self.clips)
            message = self.message if (self.message or "").strip().lower() not in _NO_REASON \
                else None
            return next((r for r in reasons if r), None) or message or "failed"
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
    document = load(body)
    if not isinstance(document, dict):
        raise PayloadError(f"body is a JSON {json_kind(document)}, not an object")
    clips = read_clips(document.get("data"))
    return envelope(document, clips, event_header=event_header, task_id_hint=task_id_hint)


def envelope(
    document: Mapping[str, Any],
    clips: tuple[ClipReport, ...],
    *,
    event_header: str | None = None,
    task_id_hint: str | None = None,
) -> Callback:
    """The callback a cleaned document (:func:`receiver.clips.load`) makes around its clips
    (read from its ``data`` with :func:`receiver.clips.read_clips`): what
    :func:`parse_callback` does after reading, for a document whose clips were read already."""
    task_id = parse_identifier(document.get("task_id")) or parse_identifier(task_id_hint)
    if task_id is None and not clips:
        raise PayloadError("no task_id (in the body or ?task_id=) and no clips")
    return Callback(
        task_id=task_id,
        event=parse_event(event_header) or parse_event(parse_text(document.get("event"))),
        platform=parse_text(document.get("platform")),
        code=parse_code(document.get("code")),
        message=parse_text(document.get("message")),
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
