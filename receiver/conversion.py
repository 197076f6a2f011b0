"""Typed values from a config file's text, and errors that name where a value went wrong.

:class:`Table` is the base of every table of the file and of a handler's options: a frozen
msgspec Struct that refuses unknown keys. Constrained numbers and strings are ``Annotated``
types whose description is also the error's wording and the JSON Schema's; a value that needs
parsing (a duration, a choice in any case, a flag) is a :class:`Domain` type, parsed once on
the way in by its :meth:`Domain.parse`. :func:`convert` is the one way in: a failure is a
:class:`ConfigError` whose message is the value's path and what was wrong with it
(``worker.concurrency: expected a positive integer, got 'x'``), said from msgspec's own
location and the type found there.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
import msgspec.inspect as mi

from receiver.errors import SettingsError

if TYPE_CHECKING:
    from typing import Self


class ConfigError(SettingsError):
    """A value of the configuration does not fit its schema; ``path`` names where."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class FieldError(ValueError):
    """Raised by a ``__post_init__`` to blame one field (``field`` may be a path below the
    Struct: ``routes[1].name``) rather than the whole table."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A table of the config file, or a handler's options: unknown keys refused, values frozen
    once checked. msgspec inherits those two, not ``kw_only``: a subclass says
    ``class MyOptions(Table, kw_only=True, frozen=True)`` (frozen repeated for type checkers)."""


# ---- values with constraints: the description is also the error's and the JSON Schema's ----

_FINITE = sys.float_info.max
PositiveInt = Annotated[int, msgspec.Meta(gt=0, description="a positive integer")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535,
                                   description="a port number from 0 to 65535 (0: any free one)")]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, description="an integer >= 0")]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=_FINITE, description="a positive number")]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=_FINITE,
                                        description="a number of seconds >= 0")]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1, description="a number in [0, 1)")]
Text = Annotated[str, msgspec.Meta(min_length=1, description="a non-empty string")]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]",
                                      description="an http(s) URL")]


class Domain:
    """A value parsed from its text by :meth:`parse` on the way in (msgspec's ``dec_hook``).

    A subclass says what it accepts in ``description`` (error messages) and ``json_schema``;
    :meth:`parse` raises ``ValueError`` with a message that shows the bad value.
    """

    description: ClassVar[str] = "a value"
    json_schema: ClassVar[dict[str, Any]] = {}

    @classmethod
    def parse(cls, value: object) -> Self:
        raise NotImplementedError

    def plain(self) -> object:
        """The value as a plain Python value (``str``, ``bool``, ``float``...)."""
        return self


class Flag(int, Domain):
    """A yes-or-no setting: true or false, or (from the environment) 1/0, yes/no, on/off."""

    description = "1 or 0 (true or false)"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": "true or false", "anyOf": [{"type": "boolean"}, {"enum": [1, 0]}],
    }
    words: ClassVar[dict[str, bool]] = {
        "1": True, "true": True, "yes": True, "on": True,
        "0": False, "false": False, "no": False, "off": False,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        if isinstance(value, bool):
            return cls(value)
        meaning = cls.words.get(str(value).strip().lower()) if isinstance(value, str | int) \
            else None
        if meaning is None:
            raise ValueError(f"must be {cls.description}, got {shown(value)}")
        return cls(meaning)

    def plain(self) -> bool:
        return bool(self)


class Choice(str, Domain):
    """One of a few words, in any case (``H11`` is ``h11``): a subclass lists ``choices``."""

    choices: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        cls.description = "one of " + ", ".join(cls.choices)
        cls.json_schema = {"enum": list(cls.choices)}

    @classmethod
    def parse(cls, value: object) -> Self:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in cls.choices:
            raise ValueError(f"unknown value {shown(value)} (choose from "
                             f"{', '.join(cls.choices)})")
        return cls(text)

    def plain(self) -> str:
        return str(self)


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdSMHD]?)\s*$")


class Duration(float, Domain):
    """Seconds, written ``90d``, ``12h``, ``30m``, ``45s`` or as a number."""

    description = "a duration like 90d, 12h or 30m"
    json_schema: ClassVar[dict[str, Any]] = {
        "description": "a duration: 90d, 12h, 30m, 45s, or a number of seconds",
        "anyOf": [{"type": "number", "exclusiveMinimum": 0},
                  {"type": "string", "pattern": _DURATION.pattern}],
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        match = _DURATION.match(str(value)) if isinstance(value, str | int | float) else None
        if isinstance(value, bool) or match is None:
            raise ValueError(f"expected {cls.description}, got {shown(value)}")
        seconds = float(match[1]) * DURATION_UNITS[match[2].lower()]
        if not seconds > 0:
            raise ValueError(f"expected a positive duration, got {shown(value)}")
        return cls(seconds)


TIME_FORMS = "2h or 2h ago (a duration ago), ISO 8601 (UTC unless it says), or unix seconds"
_AGO = re.compile(r"^(?P<span>.+?)\s+ago$", re.IGNORECASE)


def parse_time(text: str, *, now: float) -> float:
    """A point in time as unix seconds, from any of the ways the CLI and the HTTP API take one
    (:data:`TIME_FORMS`): a duration ago (``2h``, ``90m``, ``1.5d``, ``2h ago``; a bare number
    is a duration only when followed by ``ago``), an ISO 8601 date or time (``2026-12-07``,
    ``2026-12-07T13:00``, ``...Z``, ``...+01:00``; UTC when it names no offset), or unix
    seconds (``1796650000``). Raises ``ValueError`` naming the forms."""
    value = text.strip()
    ago = _AGO.match(value)
    span = ago["span"] if ago else value
    match = _DURATION.match(span)
    if match and (ago or match[2]):
        return now - float(match[1]) * DURATION_UNITS[match[2].lower()]
    if not ago:
        try:
            seconds = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return seconds
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise ValueError(f"not a time: {shown(text)} (give {TIME_FORMS})")


def decode_hook(type_: type, value: object) -> object:
    if isinstance(type_, type) and issubclass(type_, Domain):
        return type_.parse(value)
    raise NotImplementedError(f"{type_} is not a config type")


def schema_hook(type_: type) -> dict[str, Any]:
    if isinstance(type_, type) and issubclass(type_, Domain):
        return dict(type_.json_schema)
    raise NotImplementedError(f"{type_} is not a config type")


def convert(raw: object, type_: Any, *, path: str = "", strict: bool = True,
            names: Mapping[str, str] | None = None) -> Any:
    """``raw`` as ``type_`` (``strict=False``: strings convert to numbers and booleans, for
    the environment); raises :class:`ConfigError` with the path of the first bad value below
    ``path``, or below ``names[key]`` for a top-level key renamed there (an environment
    variable, a flag)."""
    try:
        return msgspec.convert(raw, type_, strict=strict, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        raise _explain(exc, raw, type_, path, names or {}) from None


# ---- errors: msgspec's message and location, said with the path and the value ----------------

_MESSAGE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
Segment = str | int


def _explain(exc: msgspec.ValidationError, raw: object, type_: Any, prefix: str,
             names: Mapping[str, str]) -> ConfigError:
    match = _MESSAGE.match(str(exc))
    what = match["what"] if match else str(exc)
    segments = _segments(match["where"] or "" if match else "")
    info = mi.type_info(type_)
    found, value = _walk(info, raw, segments)
    reason = what
    if unknown := re.match(r"Object contains unknown field `(.*)`$", what):
        in_options = "options" in (*segments, *prefix.split("."))
        at_top = not segments and not prefix
        reason = ("unknown option" if in_options else
                  "unknown table" if at_top and isinstance(value, Mapping)
                  and isinstance(value.get(unknown[1]), Mapping) else "unknown key")
        segments.append(unknown[1])
    elif missing := re.match(r"Object missing required field `(.*)`$", what):
        reason = "is required"
        segments.append(missing[1])
    elif what.startswith("Invalid enum value"):
        reason = _unknown_value(found, value)
    elif what.startswith("Invalid value"):  # a tag naming no member of a tagged union
        parent, _ = _walk(info, raw, segments[:-1])
        reason = _unknown_value(parent, value)
    elif what.startswith("Expected") and found is not None:
        reason = f"expected {describe(found)}, got {shown(value)}"
    elif isinstance(exc.__cause__, FieldError):
        segments += _segments("." + exc.__cause__.field)
    return ConfigError(_path(prefix, segments, names), reason)


def _segments(where: str) -> list[Segment]:
    return [key if key else (int(index) if index.isascii() and index.isdigit()
                                         else "...")
            for key, index in _SEGMENT.findall(where)]


def _path(prefix: str, segments: Sequence[Segment], names: Mapping[str, str]) -> str:
    if segments and isinstance(segments[0], str) and segments[0] in names:
        prefix, segments = names[segments[0]], segments[1:]
    text = prefix
    for segment in segments:
        if isinstance(segment, int) or segment == "...":
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def _walk(info: mi.Type, raw: object, segments: Sequence[Segment]) -> tuple[mi.Type | None,
                                                                             object]:
    """The type and the raw value at ``segments`` below ``info`` and ``raw``."""
    current: mi.Type | None = info
    for segment in segments:
        current = _unwrap(current, raw, segment)
        if isinstance(segment, int):
            raw = raw[segment] if isinstance(raw, list) and segment < len(raw) else None
            if isinstance(current, mi.ListType | mi.VarTupleType | mi.SetType
                          | mi.FrozenSetType):
                current = current.item_type
            elif isinstance(current, mi.TupleType) and segment < len(current.item_types):
                current = current.item_types[segment]
            else:
                current = None
        else:
            raw = raw.get(segment) if isinstance(raw, Mapping) else None
            if isinstance(current, mi.StructType):
                current = next((f.type for f in current.fields if f.encode_name == segment),
                               None)
            elif isinstance(current, mi.DictType):
                current = current.value_type
            else:
                current = None
    return current, raw


def _unwrap(info: mi.Type | None, raw: object, segment: Segment) -> mi.Type | None:
    """``info`` without its constraints, and the member of a union that ``segment`` (and
    ``raw``, for a tagged union) leads into."""
    if isinstance(info, mi.Metadata):
        return _unwrap(info.type, raw, segment)
    if not isinstance(info, mi.UnionType):
        return info
    members = [m.type if isinstance(m, mi.Metadata) else m for m in info.types]
    if isinstance(segment, int):
        return next((m for m in members if isinstance(
            m, mi.ListType | mi.VarTupleType | mi.TupleType | mi.SetType | mi.FrozenSetType)),
            None)
    tables = [m for m in members if isinstance(m, mi.StructType | mi.DictType)]
    for member in tables:
        if (isinstance(member, mi.StructType) and member.tag_field is not None
                and isinstance(raw, Mapping) and raw.get(member.tag_field) == member.tag):
            return member
    untagged = [m for m in tables if not (isinstance(m, mi.StructType) and m.tag_field)]
    return untagged[0] if untagged else None


def _unknown_value(info: mi.Type | None, value: object) -> str:
    """``unknown trigger 'x' (choose from ...)``, from the choices ``info`` allows."""
    if isinstance(info, mi.Metadata):
        info = info.type
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    noun, choices, tagged, others = "value", set[str](), set[str](), list[str]()
    for member in members:
        if isinstance(member, mi.EnumType):
            noun = member.cls.__name__.lower()
            choices |= {str(m.value) for m in member.cls}
        elif isinstance(member, mi.LiteralType):
            choices |= {str(v) for v in member.values}
        elif isinstance(member, mi.StructType) and member.tag is not None:
            noun = getattr(member.cls, "kind", noun)
            tagged.add(str(member.tag))
        elif member is not None and not isinstance(member, mi.NoneType):
            others.append(describe(member))
    if value in tagged - choices:  # a handler whose options have required keys, named alone
        return f'{noun} {value!r} needs its options (write {{ name = "{value}", options = ' \
               "{ ... } })"
    listed = ", ".join([*sorted(choices | tagged), *(f"or {o}" for o in others)]) or "none"
    return f"unknown {noun} {shown(value)} (choose from {listed})"


def describe(info: mi.Type) -> str:
    """What a value of ``info`` must be, in words (``a positive integer``)."""
    if isinstance(info, mi.Metadata):
        described = (info.extra_json_schema or {}).get("description")
        return str(described) if described else describe(info.type)
    if isinstance(info, mi.UnionType):
        return " or ".join(describe(m) for m in info.types if not isinstance(m, mi.NoneType))
    if isinstance(info, mi.IntType | mi.FloatType):
        noun = "integer" if isinstance(info, mi.IntType) else "number"
        if info.gt == 0 or (info.ge == 1 and noun == "integer"):
            return f"a positive {noun}"
        bounds = [f"{op} {bound}" for op, bound in
                  ((">", info.gt), (">=", info.ge), ("<", info.lt), ("<=", info.le))
                  if bound is not None]
        return " ".join([f"{'an' if noun == 'integer' else 'a'} {noun}", " and ".join(bounds)]
                        ).strip()
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.StrType):
        return f"a string matching {info.pattern}" if info.pattern else "a string"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(map(str, info.values))
    if isinstance(info, mi.EnumType):
        return "one of " + ", ".join(sorted(str(m.value) for m in info.cls))
    if isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return f"a list ({describe(info.item_type)} each)"
    if isinstance(info, mi.StructType | mi.DictType):
        return "a table"
    if isinstance(info, mi.CustomType) and issubclass(info.cls, Domain):
        return info.cls.description
    return "something else"


def shown(value: object) -> str:
    """``value`` as an error message shows it: TOML's spelling, never very long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

