"""Fault injection: what the sandbox does wrong on purpose, per API key or for everyone.

Decisions are deterministic: a fault with rate ``p`` strikes the thing it is about (a
delivery, a task, a clip) when ``chance(seed, kind, id) < p``, a hash of the seed and the
thing's id, so a run with the same seed and the same requests strikes the same things.

The whole setup has one JSON form: what ``GET /_sandbox/faults`` answers, ``PUT
/_sandbox/faults`` takes (and replaces everything with) and ``--faults`` takes at start::

    {
      "seed": 7,               # read only: the sandbox's --seed (any other value is refused)
      "global": {...},         # the fault config of every key without one of its own
      "keys": {"KEY": {...}}   # a key's own config, used instead of the global one
    }

A fault config, every field optional::

    {
      "duplicate": 0.0,        # a delivery is sent twice (same X-Webhook-Id)
      "reorder": 0.0,          # a task's terminal event is sent before song.streaming
      "drop": 0.0,             # a delivery is never sent (the task still settles: poll it)
      "drop_events": [         # drop exactly these: a task by its 1-based creation ordinal
        {"task": 1, "event": "song.completed"}   # or by id ("task": "<task_id>")
      ],
      "delay_s": 0.0,          # wait before each delivery
      "bad_signature": 0.0,    # a delivery is signed with the wrong secret (every attempt)
      "fail_tasks": 0.0,       # a task fails (credits refunded when it does)
      "media": {               # media answers (audio, stream, image, vox)
        "kind": "status_500" | "truncate" | "slow" | "redirect" | "html" | "empty" | "short",
        "rate": 1.0,           # share of clips struck
        "times": null,         # strike only the first N requests per clip (null: all)
        "url": null,           # redirect target (kind "redirect")
        "bytes_per_s": 16000   # body speed (kind "slow")
      },
      "links": {               # the media links answers carry
        "expire_s": null,      # a link answers 403 once this old; get-music gives fresh ones
        "placeholder_s": 0,    # a succeeded clip's audio_url is ".../None.mp3" for this long
                               # after its task settles (then the real one)
        "placeholder_failed": false   # a failed clip carries ".../None.mp3" as audio_url
      },
      "spellings": {           # how answers (get-music, webhooks) spell a clip state
        "succeeded": "completed",   # or "complete", "success"...; any text, unknown ones too
        "failed": "error",
        "running": "streaming"
      }
    }

Media kinds: ``html`` answers 200 with an HTML error page under the media's own content type
(what a CDN does when it serves its error page as the object), ``empty`` answers 200 with no
bytes, ``short`` serves valid audio a quarter as long as the clip says it is.

Links: with ``expire_s``, every media URL an answer gives is signed with its expiry
(``?expires=<unix s>&signature=...``), counted from when the answer was made: get-music now, a
webhook when its event happened (a late delivery carries links as old as its event). A URL
past its expiry, or not signed for it, answers 403 from then on.

A key with a config of its own uses it instead of the global one (no merging).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from receiver.sonic.contract import ClipState, WebhookEvent


class FaultConfigError(ValueError):
    """A fault configuration cannot be used (the message says which field)."""


class MediaFaultKind(StrEnum):
    STATUS_500 = "status_500"
    TRUNCATE = "truncate"  # Content-Length promises more than is sent; the connection closes
    SLOW = "slow"
    REDIRECT = "redirect"
    HTML = "html"  # 200, an HTML error page under the media's content type
    EMPTY = "empty"  # 200, zero bytes
    SHORT = "short"  # valid audio, a quarter of the clip's length


@dataclass(frozen=True, kw_only=True)
class MediaFault:
    kind: MediaFaultKind
    rate: float = 1.0
    times: int | None = None
    url: str | None = None
    bytes_per_s: int = 16_000


@dataclass(frozen=True, kw_only=True)
class LinkFaults:
    """How the media links of answers misbehave."""

    expire_s: float | None = None  # None: links never expire
    placeholder_s: float = 0.0  # after the task settles, a succeeded clip's audio_url is one
    placeholder_failed: bool = False  # a failed clip's audio_url is ".../None.mp3"

    def placeholder(self, *, settled_at: float, issued_at: float) -> bool:
        """Whether a succeeded clip's audio link, issued at ``issued_at``, is a placeholder."""
        return self.placeholder_s > 0 and issued_at < settled_at + self.placeholder_s


@dataclass(frozen=True, kw_only=True)
class EventDrop:
    """Drop one event of one task: ``task`` is a 1-based creation ordinal or a task id."""

    task: int | str
    event: WebhookEvent

    def matches(self, *, ordinal: int, task_id: str, event: WebhookEvent) -> bool:
        return self.event == event and self.task in (ordinal, task_id)


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    duplicate: float = 0.0
    reorder: float = 0.0
    drop: float = 0.0
    drop_events: tuple[EventDrop, ...] = ()
    delay_s: float = 0.0
    bad_signature: float = 0.0
    fail_tasks: float = 0.0
    media: MediaFault | None = None
    links: LinkFaults = field(default_factory=LinkFaults)
    spellings: Mapping[ClipState, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["drop_events"] = [asdict(d) for d in self.drop_events]
        data["spellings"] = {str(state): text for state, text in self.spellings.items()}
        return data

    def spell(self, state: ClipState) -> str:
        """``state`` as this key's answers write it."""
        return self.spellings.get(state) or str(state)

    @classmethod
    def from_json(cls, data: object) -> FaultConfig:
        if not isinstance(data, Mapping):
            raise FaultConfigError("faults must be a JSON object")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise FaultConfigError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        rates = {
            name: _rate(data, name)
            for name in ("duplicate", "reorder", "drop", "bad_signature", "fail_tasks")
        }
        delay = _number(data, "delay_s", 0.0)
        if delay < 0:
            raise FaultConfigError("delay_s must be >= 0")
        drops = data.get("drop_events") or []
        if not isinstance(drops, list):
            raise FaultConfigError("drop_events must be a list")
        return cls(
            **rates,
            delay_s=delay,
            drop_events=tuple(_event_drop(item) for item in drops),
            media=_media(data.get("media")),
            links=_links(data.get("links")),
            spellings=_spellings(data.get("spellings")),
        )


def _number(data: Mapping[str, Any], name: str, default: float) -> float:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultConfigError(f"{name} must be a number")
    return float(value)


def _rate(data: Mapping[str, Any], name: str) -> float:
    value = _number(data, name, 0.0)
    if not 0.0 <= value <= 1.0:
        raise FaultConfigError(f"{name} must be between 0 and 1")
    return value


def _event_drop(item: object) -> EventDrop:
    if not isinstance(item, Mapping):
        raise FaultConfigError("a drop_events entry must be an object {task, event}")
    task = item.get("task")
    if isinstance(task, bool) or not isinstance(task, int | str) or task in ("", 0):
        raise FaultConfigError("drop_events task must be an ordinal (1, 2...) or a task id")
    try:
        event = WebhookEvent(str(item.get("event")))
    except ValueError:
        raise FaultConfigError(
            f"drop_events event must be one of {', '.join(WebhookEvent)}"
        ) from None
    return EventDrop(task=task, event=event)


def _spellings(value: object) -> dict[ClipState, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FaultConfigError("spellings must map clip states to how answers spell them")
    spellings: dict[ClipState, str] = {}
    for name, text in value.items():
        try:
            state = ClipState(str(name))
        except ValueError:
            raise FaultConfigError(
                f"spellings keys must be one of {', '.join(ClipState)}"
            ) from None
        if not isinstance(text, str) or not text.strip() or len(text) > 40:
            raise FaultConfigError(f"spellings.{state} must be a short non-blank string")
        spellings[state] = text
    return spellings


def parse_spelling(text: str) -> tuple[ClipState, str]:
    """``"succeeded=completed"`` (the CLI's form)."""
    name, sep, spelling = text.partition("=")
    if not sep:
        raise FaultConfigError("expected STATE=SPELLING, e.g. succeeded=completed")
    ((state, spelled),) = _spellings({name.strip(): spelling}).items()
    return state, spelled


def parse_event_drop(text: str) -> EventDrop:
    """``"1:song.completed"`` or ``"<task_id>:song.failed"`` (the CLI's form)."""
    task, sep, event = text.rpartition(":")
    if not sep or not task:
        raise FaultConfigError("expected TASK:EVENT, e.g. 1:song.completed")
    number = task.isascii() and task.isdigit()
    return _event_drop({"task": int(task) if number else task, "event": event})


def _media(value: object) -> MediaFault | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise FaultConfigError("media must be an object")
    try:
        kind = MediaFaultKind(str(value.get("kind")))
    except ValueError:
        raise FaultConfigError(
            f"media kind must be one of {', '.join(MediaFaultKind)}"
        ) from None
    rate = _rate({"media.rate": value.get("rate", 1.0)}, "media.rate")
    times = value.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise FaultConfigError("media.times must be a positive integer or null")
    url = value.get("url")
    if kind is MediaFaultKind.REDIRECT and not (isinstance(url, str) and url):
        raise FaultConfigError("media.url is required for a redirect")
    speed = value.get("bytes_per_s", 16_000)
    if isinstance(speed, bool) or not isinstance(speed, int) or speed < 1:
        raise FaultConfigError("media.bytes_per_s must be a positive integer")
    return MediaFault(
        kind=kind,
        rate=rate,
        times=times,
        url=url if isinstance(url, str) else None,
        bytes_per_s=speed,
    )


def _links(value: object) -> LinkFaults:
    if value is None:
        return LinkFaults()
    if not isinstance(value, Mapping):
        raise FaultConfigError("links must be an object")
    unknown = set(value) - set(LinkFaults.__dataclass_fields__)
    if unknown:
        raise FaultConfigError(f"unknown links field(s): {', '.join(sorted(unknown))}")
    expire: float | None = None
    if value.get("expire_s") is not None:
        expire = _number({"links.expire_s": value["expire_s"]}, "links.expire_s", 0.0)
        if expire <= 0:
            raise FaultConfigError("links.expire_s must be > 0 (or null: never)")
    placeholder = _number({"links.placeholder_s": value.get("placeholder_s")},
                          "links.placeholder_s", 0.0)
    if placeholder < 0:
        raise FaultConfigError("links.placeholder_s must be >= 0")
    failed = value.get("placeholder_failed", False)
    if not isinstance(failed, bool):
        raise FaultConfigError("links.placeholder_failed must be true or false")
    return LinkFaults(expire_s=expire, placeholder_s=placeholder, placeholder_failed=failed)


def link_signature(seed: int, clip_id: str, expires: int) -> str:
    """The signature of a media link of ``clip_id`` valid until ``expires`` (unix seconds)."""
    text = f"{seed}:link:{clip_id}:{expires}".encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def chance(seed: int, kind: str, *ids: object) -> float:
    """A number in [0, 1) fixed by the seed, the kind of decision and the ids it is about."""
    text = ":".join([str(seed), kind, *(str(i) for i in ids)]).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(kw_only=True)
class Faults:
    """The live fault settings: a global config and per-key overrides (changed at runtime)."""

    seed: int
    global_config: FaultConfig = field(default_factory=FaultConfig)
    by_key: dict[str, FaultConfig] = field(default_factory=dict)

    def for_key(self, api_key: str) -> FaultConfig:
        return self.by_key.get(api_key, self.global_config)

    def strikes(self, rate: float, kind: str, *ids: object) -> bool:
        return rate > 0 and chance(self.seed, kind, *ids) < rate

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "global": self.global_config.to_json(),
            "keys": {key: config.to_json() for key, config in self.by_key.items()},
        }

    def load(self, data: object) -> None:
        """Replace everything with a setup as :meth:`to_json` writes it: ``{"global": {...},
        "keys": {"KEY": {...}}}``, each part optional (left out: no faults), ``seed`` too."""
        if not isinstance(data, Mapping):
            raise FaultConfigError(f"faults must be a JSON object: {SETUP}")
        unknown = set(data) - {"seed", "global", "keys"}
        if unknown:
            raise FaultConfigError(
                f"unknown field(s) {', '.join(sorted(map(str, unknown)))}: the fault setup is "
                f"{SETUP}")
        if "seed" in data and data["seed"] != self.seed:
            raise FaultConfigError(f"seed is {self.seed}, fixed when the sandbox starts (--seed)")
        keys = data.get("keys") or {}
        if not isinstance(keys, Mapping):
            raise FaultConfigError("keys must map API keys to fault configs")
        global_config = _part("global", data.get("global") or {})
        by_key = {str(k): _part(f"keys.{k}", v) for k, v in keys.items()}
        self.global_config, self.by_key = global_config, by_key


SETUP = '{"global": {...}, "keys": {"KEY": {...}}}, as GET /_sandbox/faults answers'


def _part(where: str, data: object) -> FaultConfig:
    """One fault config of a setup; an error says which one."""
    try:
        return FaultConfig.from_json(data)
    except FaultConfigError as exc:
        raise FaultConfigError(f"{where}: {exc}") from None
