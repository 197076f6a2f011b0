"""The Sonic API's answers as frozen dataclasses, parsed leniently where the service varies.

A get-music answer's clips are read by the one clip reader, :mod:`receiver.clips`, by the same
rules as a webhook's (state spellings, numbers as strings, placeholder URLs, camelCase twins);
:class:`~receiver.clips.ClipReport` is the clip type. ``code`` may be absent. Every parsed
object keeps the JSON it came from (``raw``), so a field the service adds later is not lost.

Anything that breaks the documented shape raises :class:`SonicProtocolError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from receiver.clips import ClipReport, clean, parse_code, parse_text, read_clips
from receiver.errors import PayloadError
from receiver.payloads import Callback
from receiver.sonic.contract import ClipState
from receiver.sonic.errors import SonicProtocolError

Json = Mapping[str, Any]


def _empty() -> Json:
    return MappingProxyType({})


def _object(value: object, what: str) -> Json:
    if not isinstance(value, Mapping):
        raise SonicProtocolError(f"{what} is not a JSON object")
    return value


def _str(data: Json, name: str) -> str | None:
    """An optional string; "" counts as absent (pending clips carry empty URLs)."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SonicProtocolError(f"{name} is not a string")
    return value


def _required_str(data: Json, name: str) -> str:
    value = _str(data, name)
    if value is None:
        raise SonicProtocolError(f"{name} is missing")
    return value


def _number(data: Json, name: str) -> float | None:
    """A number that may come as a decimal string ("104.88"); ``None`` or "" when unknown."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise SonicProtocolError(f"{name} is not a number")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer past the float range
            raise SonicProtocolError(f"{name} is not finite") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise SonicProtocolError(f"{name} is not a number: {value[:40]!r}") from None
    else:
        raise SonicProtocolError(f"{name} is not a number")
    if not math.isfinite(number):
        raise SonicProtocolError(f"{name} is not finite")
    return number


def _code(data: Json) -> int | None:
    return parse_code(data.get("code"))


@dataclass(frozen=True, kw_only=True)
class Music:
    """A get-music answer: ``{code, message, data: [clip, ...]}``, its clips read by the one
    clip reader (:mod:`receiver.clips`), as a webhook's are. ``raw`` is the answer as that
    reader cleaned it (what JSON cannot carry read as null).

    Another provider's poll answer (:mod:`receiver.providers`) is a Music too: ``provider``
    names it and ``callback`` is the answer as its adapter read it (stage, failure and its
    category included), which is what gets recorded; None for Sonic's, whose answer is read
    as a webhook body is (:func:`receiver.payloads.envelope`)."""

    code: int | None
    message: str | None
    clips: tuple[ClipReport, ...]
    raw: Json = field(default_factory=_empty, repr=False, compare=False)
    provider: str = "sonic"
    callback: Callback | None = field(default=None, repr=False, compare=False)

    @property
    def state(self) -> ClipState:
        """The task's state as its clips tell it: failed if any failed, else the least advanced
        (a task with no clips yet, or a clip in a state we do not know, is pending)."""
        states = {clip.state or ClipState.PENDING for clip in self.clips}
        for state in (ClipState.FAILED, ClipState.PENDING, ClipState.RUNNING):
            if state in states:
                return state
        return ClipState.SUCCEEDED if states else ClipState.PENDING

    @classmethod
    def from_json(cls, value: object) -> Music:
        try:
            data = clean(value)
            if not isinstance(data, dict):
                raise SonicProtocolError("get-music answer is not a JSON object")
            clips = read_clips(data.get("data"))
        except PayloadError as exc:  # a clip (or the answer) the clip reader cannot use
            raise SonicProtocolError(f"get-music answer: {exc.message}") from exc
        return cls(
            code=_code(data),
            message=parse_text(data.get("message")),
            clips=clips,
            raw=MappingProxyType(data),
        )


@dataclass(frozen=True, kw_only=True)
class Created:
    """A create answer: ``{"message": "success", "task_id": "..."}`` (``code`` may be absent)."""

    task_id: str
    message: str | None
    code: int | None

    @classmethod
    def from_json(cls, value: object) -> Created:
        data = _object(value, "create answer")
        return cls(
            task_id=_required_str(data, "task_id"),
            message=_str(data, "message"),
            code=_code(data),
        )


@dataclass(frozen=True, kw_only=True)
class Uploaded:
    """An upload-music answer: ``{code, message, clip_id}``."""

    clip_id: str
    message: str | None
    code: int | None

    @classmethod
    def from_json(cls, value: object) -> Uploaded:
        data = _object(value, "upload answer")
        return cls(
            clip_id=_required_str(data, "clip_id"),
            message=_str(data, "message"),
            code=_code(data),
        )


@dataclass(frozen=True, kw_only=True)
class Persona:
    """A create-persona answer: ``{code, persona_id}``."""

    persona_id: str
    code: int | None

    @classmethod
    def from_json(cls, value: object) -> Persona:
        data = _object(value, "persona answer")
        return cls(persona_id=_required_str(data, "persona_id"), code=_code(data))


def _data(value: object, what: str) -> tuple[Json, Json]:
    outer = _object(value, what)
    return outer, _object(outer.get("data"), f"{what} data")


@dataclass(frozen=True, kw_only=True)
class Bpm:
    """A get-bpm answer: ``{code, data: {avg_bpm, max_bpm, min_bpm}}``."""

    avg_bpm: float
    max_bpm: float | None
    min_bpm: float | None
    code: int | None

    @classmethod
    def from_json(cls, value: object) -> Bpm:
        outer, data = _data(value, "get-bpm answer")
        avg = _number(data, "avg_bpm")
        if avg is None:
            raise SonicProtocolError("avg_bpm is missing")
        return cls(
            avg_bpm=avg,
            max_bpm=_number(data, "max_bpm"),
            min_bpm=_number(data, "min_bpm"),
            code=_code(outer),
        )


@dataclass(frozen=True, kw_only=True)
class Vox:
    """A get-vox answer: ``{code, data: {...}}``. The data's keys are not documented; the ones
    the sandbox sends are read, everything stays in ``data``."""

    code: int | None
    vocal_url: str | None
    instrumental_url: str | None
    data: Json = field(default_factory=_empty, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: object) -> Vox:
        outer, data = _data(value, "get-vox answer")
        return cls(
            code=_code(outer),
            vocal_url=_str(data, "vocal_url"),
            instrumental_url=_str(data, "instrumental_url"),
            data=MappingProxyType(dict(data)),
        )
