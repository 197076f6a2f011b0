"""Rows to records, by column name: :func:`record` builds a frozen dataclass from a row whose
columns carry its fields' names (other columns are ignored). A field's type says how its
column is read: an enum from its value, a mapping or a tuple from JSON text, bytes from a blob;
a field with a default takes it when its column is NULL or absent. The plan for each class is
made once.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Protocol, TypeVar

import orjson

T = TypeVar("T")
Convert = Callable[[Any], Any]
Plan = tuple[tuple[str, Convert | None, bool], ...]
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


class Row(Protocol):
    """A row read by column name: ``sqlite3.Row``, or a dict from psycopg's ``dict_row``."""

    def __getitem__(self, name: str, /) -> Any: ...


def loads(text: str | bytes) -> Any:
    """JSON text the store wrote (orjson, or ``json`` where orjson would not give it back as
    written: it reads an integer past 64 bits as a float, so text with a run of 19 digits or
    more goes to ``json``)."""
    long = (_LONG_DIGITS.search(text) if isinstance(text, str)
            else _LONG_DIGITS_BYTES.search(text))
    if long:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def record(cls: type[T], row: Row) -> T:
    """``cls`` (a dataclass) from ``row``."""
    values: dict[str, Any] = {}
    for name, convert, optional in _plan(cls):
        try:
            value = row[name]
        except (KeyError, IndexError):  # dict_row, sqlite3.Row
            if optional:
                continue
            raise
        if value is None and optional:
            continue
        values[name] = convert(value) if convert is not None and value is not None else value
    return cls(**values)


_PLANS: dict[type, Plan] = {}


def _plan(cls: type) -> Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = _PLANS[cls] = tuple(
            (f.name, _converter(hints[f.name]),
             f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.init
        )
    return plan


def _converter(hint: Any) -> Convert | None:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [h for h in typing.get_args(hint) if h is not type(None)]
        return _converter(kinds[0]) if len(kinds) == 1 else None
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    if hint is bytes:
        return bytes
    origin = typing.get_origin(hint) or hint
    if origin in (Mapping, dict):
        return loads
    if origin is tuple:
        return _tuple
    return None


def _tuple(text: str) -> tuple[Any, ...]:
    return tuple(loads(text))
