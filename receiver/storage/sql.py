"""The store's SQL, read from files: named statements (``queries.sql``) and numbered migrations
(``migrations/NNNN_name.sql``), each compiled for one dialect.

- A statement stands once, under ``-- name: <name>``; a dialect's variant follows it under
  ``-- name: <name> [<dialect>]``, and other forms of it under other tags (``[postgresql_batch]``:
  :meth:`Dialect.variants`). An empty statement runs nothing (a step a dialect needs nothing
  for).
- ``:Enum.MEMBER`` names a member of one of :data:`CONSTANTS` and is compiled into its value,
  quoted: the values stand in Python only, and the planner still sees constants.
- Migration *n* takes the schema from version *n-1* to *n*: ``NNNN_name.sql`` for every
  dialect, then ``NNNN_name.<dialect>.sql`` where that dialect needs more. ``{id}``, ``{real}``
  and ``{blob}`` are the dialect's types. Append migrations; never edit one that has shipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources

from receiver.jobs import AttemptOutcome, JobState
from receiver.models import ChildState, Outcome, Source
from receiver.states import Entity, State

CONSTANTS: Mapping[str, type[StrEnum]] = {
    e.__name__: e for e in (State, Entity, JobState, AttemptOutcome, Outcome, Source, ChildState)
}
_HEADER = re.compile(r"^-- name: (\w+)(?: \[(\w+)\])?\s*$")
_CONSTANT = re.compile(r"(?<![:\w]):([A-Z]\w*)\.([A-Z_]+)\b")
_MACRO = re.compile(r"\b(JSON_TEXTS|JSON_INTS|FOR_CLAIM)\((:\w+)?\)")
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_MIGRATION = re.compile(r"^(\d{4})_\w+(?:\.(\w+))?\.sql$")


def parse(text: str) -> dict[tuple[str, str | None], str]:
    """``queries.sql`` as ``{(name, dialect or None): SQL}``, comment lines dropped."""
    found: dict[tuple[str, str | None], list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            key = (header.group(1), header.group(2))
            if key in found:
                raise ValueError(f"queries.sql: {key[0]} [{key[1] or 'any'}] is defined twice")
            current = found[key] = []
        elif current is not None and not line.lstrip().startswith("--"):
            current.append(line)
    for name, dialect in found:
        if dialect is not None and (name, None) not in found:
            raise ValueError(f"queries.sql: {name} [{dialect}] varies a statement that is not")
    return {key: " ".join(" ".join(lines).split()) for key, lines in found.items()}


@dataclass(frozen=True)
class Dialect:
    """A database's SQL: its name, its types in migrations, its parameter style (``named``:
    ``:name``; ``pyformat``: ``%(name)s``) and its expansion of each macro (``{}`` standing
    for the macro's parameter)."""

    name: str
    types: Mapping[str, str]
    paramstyle: str = "named"
    macros: Mapping[str, str] = field(default_factory=dict)

    def statements(self) -> dict[str, str]:
        """Every named statement, this dialect's variant where there is one, compiled."""
        parsed = parse(_read("queries.sql"))
        chosen = {name: text for (name, dialect), text in parsed.items() if dialect is None}
        chosen.update({name: text for (name, dialect), text in parsed.items()
                       if dialect == self.name})
        return {name: self.compile(text) for name, text in chosen.items()}

    def variants(self, tag: str) -> dict[str, str]:
        """The statements that have a ``[tag]`` variant (such as ``postgresql_batch``), as
        that variant, compiled for this dialect."""
        return {name: self.compile(text)
                for (name, variant), text in parse(_read("queries.sql")).items()
                if variant == tag}

    def compile(self, text: str) -> str:
        text = _CONSTANT.sub(_constant, text)
        text = _MACRO.sub(self._macro, text)
        if self.paramstyle == "named":
            return text
        if self.paramstyle == "pyformat":
            return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))
        raise ValueError(f"unknown paramstyle {self.paramstyle!r}")

    def _macro(self, match: re.Match[str]) -> str:
        name, param = match.group(1), match.group(2)
        if name not in self.macros:
            raise ValueError(f"{self.name}: no expansion for {name}()")
        return self.macros[name].format(param)

    def migrations(self) -> tuple[str, ...]:
        """The migrations in order, each as one script for this dialect."""
        steps: dict[int, list[str]] = {}
        files = sorted(f.name for f in resources.files(__package__).joinpath(
            "migrations").iterdir() if f.name.endswith(".sql"))
        for name in files:
            match = _MIGRATION.match(name)
            if match is None:
                raise ValueError(f"migrations/{name}: not NNNN_name[.dialect].sql")
            number, dialect = int(match.group(1)), match.group(2)
            if dialect is None:
                steps.setdefault(number, []).insert(0, _read(f"migrations/{name}"))
            elif dialect == self.name:
                steps.setdefault(number, []).append(_read(f"migrations/{name}"))
        if sorted(steps) != list(range(1, len(steps) + 1)):
            raise ValueError(f"migrations are not numbered 1 to {len(steps)}: {sorted(steps)}")
        return tuple("\n".join(steps[n]).format(**self.types) for n in sorted(steps))


def _constant(match: re.Match[str]) -> str:
    enum = CONSTANTS.get(match.group(1))
    if enum is None or match.group(2) not in enum.__members__:
        raise ValueError(f"queries.sql: :{match.group(1)}.{match.group(2)} names no member")
    return f"'{enum[match.group(2)].value}'"


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
