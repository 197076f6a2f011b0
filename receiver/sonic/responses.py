"""The Sonic API's answers as frozen dataclasses, parsed leniently where the service varies.

Known variants: ``duration`` comes as a number or a decimal string (``"104.88"``); ``mv`` may
name ``chirp-v5`` for ``sonic-v5`` (:attr:`Clip.model` is normalised, :attr:`Clip.mv` raw);
``code`` may be absent; newer clips carry more fields. Every parsed object keeps the raw JSON
it came from (``raw``), so a field the service adds later is not lost.

Anything that breaks the documented shape raises :class:`SonicProtocolError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from receiver.sonic.contract import ClipState, Model, normalise_model
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
    value = data.get("code")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # isdigit() alone accepts "²", which int() refuses
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True, kw_only=True)
class Clip:
    """One clip of a task (get-music's ``data`` items, and the webhooks' ones)."""

    clip_id: str
    state: ClipState
    title: str | None = None
    tags: str | None = None
    negative_tags: str | None = None
    lyrics: str | None = None
    image_url: str | None = None
    audio_url: str | None = None
    video_url: str | None = None
    created_at: str | None = None
    mv: str | None = None  # as the service wrote it (may be chirp-v5)
    gpt_description_prompt: str | None = None
    duration: float | None = None  # seconds
    style_weight: float | None = None
    weirdness_constraint: float | None = None
    raw: Json = field(default_factory=_empty, repr=False, compare=False)

    @property
    def model(self) -> Model | None:
        """The model, normalised (``chirp-v5`` → ``sonic-v5``); ``None`` if unknown."""
        return normalise_model(self.mv)

    @classmethod
    def from_json(cls, value: object) -> Clip:
        data = _object(value, "clip")
        state_text = _required_str(data, "state")
        try:
            state = ClipState(state_text)
        except ValueError:
            raise SonicProtocolError(f"unknown clip state {state_text!r}") from None
        return cls(
            clip_id=_required_str(data, "clip_id"),
            state=state,
            title=_str(data, "title"),
            tags=_str(data, "tags"),
            negative_tags=_str(data, "negative_tags"),
            lyrics=_str(data, "lyrics"),
            image_url=_str(data, "image_url"),
            audio_url=_str(data, "audio_url"),
            video_url=_str(data, "video_url"),
            created_at=_str(data, "created_at"),
            mv=_str(data, "mv"),
            gpt_description_prompt=_str(data, "gpt_description_prompt"),
            duration=_number(data, "duration"),
            style_weight=_number(data, "style_weight"),
            weirdness_constraint=_number(data, "weirdness_constraint"),
            raw=MappingProxyType(dict(data)),
        )


@dataclass(frozen=True, kw_only=True)
class Music:
    """A get-music answer: ``{code, message, data: [clip, ...]}``."""

    code: int | None
    message: str | None
    clips: tuple[Clip, ...]
    raw: Json = field(default_factory=_empty, repr=False, compare=False)

    @property
    def state(self) -> ClipState:
        """The task's state as its clips tell it: failed if any failed, else the least advanced
        (a task with no clips yet is pending)."""
        states = {clip.state for clip in self.clips}
        for state in (ClipState.FAILED, ClipState.PENDING, ClipState.RUNNING):
            if state in states:
                return state
        return ClipState.SUCCEEDED if states else ClipState.PENDING

    @classmethod
    def from_json(cls, value: object) -> Music:
        data = _object(value, "get-music answer")
        items = data.get("data")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise SonicProtocolError("data is not a list of clips")
        return cls(
            code=_code(data),
            message=_str(data, "message"),
            clips=tuple(Clip.from_json(item) for item in items),
            raw=MappingProxyType(dict(data)),
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
